"""Post-training quantization of an InceptionTime: weights per channel, activations per tensor.

* every conv and the linear head get ``bits``-bit weights (codes fixed from the float weight);
* every layer input is quantized at ``bits`` bits except the raw sensor input of the first
  layers (left float) and the head's input (8 bits) (docs/method.md);
* activation ranges come once from real source data (not from random noise as in the
  released code): the clipping range minimising the quantization MSE among a few
  percentile candidates, because raw min/max ruins 2- and 3-bit activations (docs/method.md).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from qcore.cloud.model import InceptionTime, quant_layers, raw_input_layers
from qcore.core.quant import check_bits, choose_qparams, fake_quantize

HEAD_ACT_BITS = 8
_PERCENTILES = (100.0, 99.99, 99.9, 99.5, 99.0, 98.0)
_MAX_OBSERVED = 50_000  # values kept per layer for the range search


def choose_act_range(values: np.ndarray, bits: int) -> tuple[float, float]:
    """Clipping range ``(lo, hi)`` with the lowest quantize-dequantize MSE on ``values``."""
    v = np.sort(values.astype(np.float32))
    best, best_err = (float(v[0]), float(v[-1])), np.inf
    for pct in _PERCENTILES:
        k = int(round((v.size - 1) * (1.0 - pct / 100.0)))
        lo, hi = (float(v[k]) if v[0] < 0 else 0.0), float(v[v.size - 1 - k])
        scale, zp = choose_qparams(lo, hi, bits)
        err = float(np.mean((fake_quantize(values, scale, zp, bits) - values) ** 2))
        if err < best_err:
            best, best_err = (lo, hi), err
    return best


def quantize_model(
    model: InceptionTime, bits: int | None, X_calib: np.ndarray, seed: int = 0
) -> InceptionTime:
    """A quantized copy of ``model`` (``bits=None`` returns a plain float copy).

    ``X_calib`` (normalised source training windows) sets the activation ranges in one
    forward pass: a pre-hook fixes each layer's input range the moment that input
    arrives, so every range sees values from the already-quantized layers before it,
    as the deployed model produces them.
    """
    qmodel = copy.deepcopy(model).eval()
    if bits is None:
        return qmodel
    bits = check_bits(bits)
    raw = raw_input_layers(qmodel)
    hooks = []

    def make_hook(act_bits: int):
        def hook(module, args):
            v = args[0].detach().numpy().reshape(-1)
            if v.size > _MAX_OBSERVED:  # same seed per call: one tensor, one range
                v = np.random.default_rng(seed).choice(v, _MAX_OBSERVED, replace=False)
            module.set_act_range(*choose_act_range(v, act_bits), act_bits)

        return hook

    for name, m in quant_layers(qmodel):
        m.freeze_weight_qparams(bits)
        if name not in raw:
            act_bits = HEAD_ACT_BITS if name == "head" else bits
            hooks.append(m.register_forward_pre_hook(make_hook(act_bits)))
    with torch.no_grad():
        qmodel(torch.from_numpy(np.ascontiguousarray(X_calib, dtype=np.float32)))
    for h in hooks:
        h.remove()
    return qmodel
