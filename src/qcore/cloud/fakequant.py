"""Quantized layers for the cloud simulation, with straight-through gradients.

A layer keeps a float *latent* weight (what back-prop trains) and, once frozen for a
bit-width, fixed per-output-channel ``w_scale``/``w_zero_point``: its integer codes are
``quantize(latent)`` and the forward pass uses ``dequantize(codes)``. Keeping the
quantization parameters fixed after deployment means a calibration step changes the
integers and nothing else, exactly what a device flip does (docs/method.md).

Unlike the released QCore code, rounding is wrapped in a straight-through estimator,
so back-prop calibration really moves the latent weights (docs/method.md).
The rounding is float32 ``round(x / scale) + zero_point`` clamped to the code range,
the same arithmetic as :mod:`qcore.core.quant`, so edge and cloud agree bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qcore.core.quant import check_bits, choose_qparams, qrange


def fake_quant_ste(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int
) -> torch.Tensor:
    """Quantize-dequantize ``x``; gradient passes straight through inside the range."""
    qmin, qmax = qrange(bits)
    lo = (qmin - zero_point) * scale
    hi = (qmax - zero_point) * scale
    clipped = torch.maximum(torch.minimum(x, hi), lo)  # gradient 0 outside the range
    q = torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)
    return clipped + ((q - zero_point) * scale - clipped).detach()


def codes_of(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int):
    """Integer codes (int64 tensor) of ``x`` without gradient."""
    qmin, qmax = qrange(bits)
    with torch.no_grad():
        return torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax).long()


class QuantMixin:
    """Weight and input-activation quantization state shared by QConv1d and QLinear."""

    weight: nn.Parameter
    bits: int | None
    act_bits: int | None

    def _init_quant(self, n_out: int, ndim: int) -> None:
        self.bits = None  # weight bit-width, None = float
        self.act_bits = None  # input activation bit-width, None = not quantized
        self.record_input = False  # keep the last input (flip features, observers)
        self.last_input: torch.Tensor | None = None
        shape = (n_out,) + (1,) * (ndim - 1)
        self.register_buffer("w_scale", torch.ones(shape))
        self.register_buffer("w_zero_point", torch.zeros(shape))
        self.register_buffer("a_scale", torch.ones(()))
        self.register_buffer("a_zero_point", torch.zeros(()))

    def freeze_weight_qparams(self, bits: int) -> None:
        """Fix per-channel scale/zero point from the current float weight (PTQ)."""
        self.bits = check_bits(bits)
        w = self.weight.detach().cpu().numpy().reshape(self.weight.shape[0], -1)
        scale, zp = choose_qparams(w.min(axis=1), w.max(axis=1), self.bits)
        self.w_scale.copy_(torch.from_numpy(scale).reshape(self.w_scale.shape))
        self.w_zero_point.copy_(torch.from_numpy(zp.astype(np.float32)).reshape(self.w_scale.shape))

    def set_act_range(self, lo: float, hi: float, bits: int) -> None:
        """Fix the input activation range (per tensor), chosen once from real data."""
        self.act_bits = check_bits(bits)
        scale, zp = choose_qparams(lo, hi, self.act_bits)
        self.a_scale.fill_(float(scale))
        self.a_zero_point.fill_(float(zp))

    def quant_weight(self) -> torch.Tensor:
        if self.bits is None:
            return self.weight
        return fake_quant_ste(self.weight, self.w_scale, self.w_zero_point, self.bits)

    def quant_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.record_input:
            self.last_input = x.detach()
        if self.act_bits is None:
            return x
        return fake_quant_ste(x, self.a_scale, self.a_zero_point, self.act_bits)

    def codes(self) -> torch.Tensor:
        """Integer weight codes (int64, weight's shape); requires a frozen bit-width."""
        if self.bits is None:
            raise RuntimeError("layer is float: call freeze_weight_qparams first")
        return codes_of(self.weight, self.w_scale, self.w_zero_point, self.bits)

    def set_codes(self, q: torch.Tensor) -> None:
        """Put the latent weight exactly on the grid point of codes ``q``."""
        with torch.no_grad():
            self.weight.copy_((q.to(self.weight.dtype) - self.w_zero_point) * self.w_scale)


class QConv1d(QuantMixin, nn.Conv1d):
    """Bias-free 1-D convolution with 'same' padding (odd kernels) and optional quantization."""

    def __init__(self, n_in: int, n_out: int, kernel_size: int) -> None:
        if kernel_size % 2 == 0:
            raise ValueError("'same' padding needs an odd kernel size")
        super().__init__(n_in, n_out, kernel_size, padding=kernel_size // 2, bias=False)
        self._init_quant(n_out, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (n, c_in, t)
        return F.conv1d(self.quant_input(x), self.quant_weight(), None, 1, self.padding)


class QLinear(QuantMixin, nn.Linear):
    """Linear layer (with float bias) and optional quantization."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__(n_in, n_out, bias=True)
        self._init_quant(n_out, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (n, features)
        return F.linear(self.quant_input(x), self.quant_weight(), self.bias)


QuantLayer = QConv1d | QLinear
