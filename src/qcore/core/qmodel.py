"""A deployed InceptionTime as plain NumPy data: what a device stores (NumPy only).

The cloud side exports into this description (``qcore.cloud.export.to_qmodel``) and the
edge side runs it (``qcore.edge.infer``). Nothing here knows about PyTorch: layers and
norms are keyed by the torch module names (``"blocks.0.bottleneck"``,
``"blocks.1.convs.2"``, ``"shortcuts.2.conv"``, ``"head"``, ``"blocks.0.bn"``, ...), so the
two sides can be matched name by name, and the edge forward pass derives the network
structure from which keys are present. :func:`check_structure` is therefore the one place
that decides whether a description forms an InceptionTime; every artifact, built or read
from a file, passes through it before anything indexes its layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcore.core.quant import QuantizedTensor, check_bits
from qcore.errors import QCoreError

ActParams = tuple[float, int, int]  # (scale, zero_point, bits) of a per-tensor activation


@dataclass
class QLayer:
    """One bias-free 'same' convolution or the linear head.

    ``weight``: a :class:`QuantizedTensor` (uint8 codes + per-output-channel scale and zero
    point) for a quantized model, or a float32 array for a float model; shape
    ``(c_out, c_in, kernel_size)`` for a convolution, ``(n_classes, features)`` for the head.
    ``act``: ``(scale, zero_point, bits)`` of the layer's input activation, or ``None`` when
    the input is consumed as float (raw sensor input, float model).
    ``bias``: float32 ``(c_out,)`` (head only; convolutions are bias-free).
    ``kernel_size``: 1 for the head and the 1x1 convolutions.
    """

    weight: QuantizedTensor | np.ndarray
    act: ActParams | None
    bias: np.ndarray | None
    kernel_size: int

    def __post_init__(self) -> None:
        shape = tuple(self.weight.shape)
        if len(shape) not in (2, 3):
            raise QCoreError(f"a layer weight must have rank 2 or 3, got shape {shape}")
        if len(shape) == 3 and shape[2] != self.kernel_size:
            raise QCoreError(f"weight shape {shape} does not match kernel size {self.kernel_size}")
        if isinstance(self.weight, np.ndarray) and self.weight.dtype != np.float32:
            raise QCoreError(f"a float weight must be float32, got {self.weight.dtype}")
        if self.act is not None:
            check_bits(self.act[2])
        if self.bias is not None and self.bias.shape != (shape[0],):
            raise QCoreError(f"bias shape {self.bias.shape} does not match {shape[0]} outputs")

    @property
    def quantized(self) -> bool:
        return isinstance(self.weight, QuantizedTensor)

    def float_weight(self) -> np.ndarray:
        """The float32 weight the layer computes with (dequantized codes when quantized)."""
        if isinstance(self.weight, QuantizedTensor):
            return self.weight.dequantize()
        return self.weight

    def weight_nbytes(self) -> int:
        """Stored weight bytes: packed codes + scales + zero points, or float32 values."""
        if isinstance(self.weight, QuantizedTensor):
            return self.weight.packed_nbytes()
        return 4 * int(self.weight.size)

    def copy(self) -> QLayer:
        w = self.weight
        if isinstance(w, QuantizedTensor):
            w = QuantizedTensor(w.q.copy(), w.scale.copy(), w.zero_point.copy(), w.bits)
        else:
            w = w.copy()
        bias = None if self.bias is None else self.bias.copy()
        return QLayer(w, self.act, bias, self.kernel_size)  # act: an immutable tuple


@dataclass
class BatchNorm:
    """Eval-mode BatchNorm over channels: all arrays float32 ``(C,)``."""

    weight: np.ndarray
    bias: np.ndarray
    running_mean: np.ndarray
    running_var: np.ndarray
    eps: float

    def __post_init__(self) -> None:
        c = self.weight.shape
        for name in ("bias", "running_mean", "running_var"):
            if getattr(self, name).shape != c:
                raise QCoreError(f"BatchNorm {name} has shape {getattr(self, name).shape}, not {c}")

    @property
    def n_channels(self) -> int:
        return int(self.weight.shape[0])

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """Eval-mode BN folded to ``y = x * alpha + beta`` (float32 ``(C,)`` each).

        Torch's CPU eval kernel uses the same folding, so this keeps edge and cloud
        within float32 rounding of each other.
        """
        inv_std = (1.0 / np.sqrt(self.running_var + np.float32(self.eps))).astype(np.float32)
        alpha = (self.weight * inv_std).astype(np.float32)
        beta = (self.bias - self.running_mean * alpha).astype(np.float32)
        return alpha, beta

    def copy(self) -> BatchNorm:
        return BatchNorm(
            self.weight.copy(),
            self.bias.copy(),
            self.running_mean.copy(),
            self.running_var.copy(),
            float(self.eps),
        )


@dataclass
class QuantizedModel:
    """An InceptionTime ready for the edge: quantized (``bits`` 2..8) or float (``None``).

    ``layers`` and ``norms`` are keyed by torch module names, in the torch model's
    definition order. A block ``d`` has a bottleneck iff ``"blocks.d.bottleneck"`` is a
    key; a shortcut ending at block ``d`` exists iff ``"shortcuts.d.bn"`` is a key and has a
    1x1 convolution iff ``"shortcuts.d.conv"`` is.
    """

    n_channels: int
    n_classes: int
    filters: int
    depth: int
    bits: int | None
    layers: dict[str, QLayer]
    norms: dict[str, BatchNorm]

    def __post_init__(self) -> None:
        if self.bits is not None:
            check_bits(self.bits)
        if "head" not in self.layers:
            raise QCoreError("a QuantizedModel needs a 'head' layer")
        for d in range(self.depth):
            if f"blocks.{d}.bn" not in self.norms:
                raise QCoreError(f"missing BatchNorm 'blocks.{d}.bn'")

    def device_bytes(self) -> dict[str, int]:
        """Bytes a device stores to run (and re-normalise) the model, per part and ``"total"``.

        * ``weights``: per layer, codes packed at ``bits`` bits + float32 scales + one byte
          per zero point (float32 values for a float model);
        * ``norms``: 4 float32 per channel (weight, bias, running mean and variance). Plain
          inference could fold these into 2, but on-device calibration rewrites the
          statistics, so the unfolded form is what must be kept;
        * ``act``: per quantized layer input, a float32 scale and a one-byte zero point;
        * ``head_bias``: float32 head bias.
        """
        weights = sum(layer.weight_nbytes() for layer in self.layers.values())
        norms = sum(16 * bn.n_channels for bn in self.norms.values())
        act = sum(5 for layer in self.layers.values() if layer.act is not None)
        head_bias = sum(
            4 * int(layer.bias.size) for layer in self.layers.values() if layer.bias is not None
        )
        parts = {"weights": weights, "norms": norms, "act": act, "head_bias": head_bias}
        parts["total"] = sum(parts.values())
        return parts

    def copy(self) -> QuantizedModel:
        """A deep copy: no array is shared with ``self`` (edge-side changes stay local)."""
        return QuantizedModel(
            self.n_channels,
            self.n_classes,
            self.filters,
            self.depth,
            self.bits,
            {name: layer.copy() for name, layer in self.layers.items()},
            {name: bn.copy() for name, bn in self.norms.items()},
        )


def check_structure(qm: QuantizedModel) -> None:
    """Raise unless every layer and norm has the shape the model's dimensions imply.

    The edge forward pass derives the network from which keys exist, so this is where a
    description that does not form an InceptionTime is rejected: each block reads
    ``n_channels`` (block 0) or ``4 * filters`` channels; an optional 1x1 bottleneck to
    ``filters``; three odd-kernel convolutions ``convs.0..2`` and a 1x1 ``pool_conv`` of
    ``filters`` outputs each (so the BatchNorm sees ``4 * filters``); shortcuts with a
    1x1 conv exactly when their input width differs; a head ``(n_classes, 4 * filters)``.
    """
    f, width = qm.filters, 4 * qm.filters
    want_layers: dict[str, tuple[int, ...]] = {}
    want_norms: dict[str, int] = {}
    res_in = qm.n_channels
    for d in range(qm.depth):
        p = f"blocks.{d}"
        n_in = qm.n_channels if d == 0 else width
        branch_in = n_in
        if f"{p}.bottleneck" in qm.layers:
            want_layers[f"{p}.bottleneck"] = (f, n_in, 1)
            branch_in = f
        for i in range(3):
            name = f"{p}.convs.{i}"
            k = qm.layers[name].kernel_size if name in qm.layers else 0
            if k % 2 == 0:
                raise QCoreError(f"layer {name} is missing or has an even kernel size")
            want_layers[name] = (f, branch_in, k)
        want_layers[f"{p}.pool_conv"] = (f, n_in, 1)
        want_norms[f"{p}.bn"] = width
        s = f"shortcuts.{d}"
        if f"{s}.bn" in qm.norms:
            want_norms[f"{s}.bn"] = width
            if f"{s}.conv" in qm.layers:
                want_layers[f"{s}.conv"] = (width, res_in, 1)
            elif res_in != width:
                raise QCoreError(f"shortcut {s} joins {res_in} to {width} channels without a conv")
            res_in = width
    want_layers["head"] = (qm.n_classes, width)
    extra = sorted(set(qm.layers) - set(want_layers)) + sorted(set(qm.norms) - set(want_norms))
    missing = sorted(set(want_layers) - set(qm.layers)) + sorted(set(want_norms) - set(qm.norms))
    if extra or missing:
        raise QCoreError(
            f"model layers do not form an InceptionTime: extra {extra}, missing {missing}"
        )
    for name, shape in want_layers.items():
        layer = qm.layers[name]
        if tuple(layer.weight.shape) != shape:
            raise QCoreError(
                f"layer {name} has shape {tuple(layer.weight.shape)}, the model's "
                f"channels/filters imply {shape}"
            )
        if name != "head" and layer.bias is not None:
            raise QCoreError(f"layer {name} is a convolution and must be bias-free")
        wbits = layer.weight.bits if isinstance(layer.weight, QuantizedTensor) else None
        if wbits != qm.bits:
            raise QCoreError(f"layer {name} has bit-width {wbits}, the model {qm.bits}")
    for name, channels in want_norms.items():
        if qm.norms[name].n_channels != channels:
            raise QCoreError(
                f"BatchNorm {name} has {qm.norms[name].n_channels} channels, expected {channels}"
            )
