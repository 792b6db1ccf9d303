"""InceptionTime (Ismail Fawaz et al., 2020), written for quantization.

Matches the reference implementation's structure and parameter counts (docs/method.md):
bias-free 'same' convolutions with kernels 39/19/9 after a 1x1 bottleneck (only when the
module input has more than one channel), a max-pool + 1x1 branch, concatenation ->
BatchNorm -> ReLU, a residual shortcut every third module (1x1 conv + BatchNorm when
widths differ, BatchNorm alone otherwise), global average pooling and a linear head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qcore.cloud.fakequant import QConv1d, QLinear

KERNEL_SIZES = (39, 19, 9)


class InceptionModule(nn.Module):
    def __init__(self, n_in: int, filters: int) -> None:
        super().__init__()
        self.bottleneck = QConv1d(n_in, filters, 1) if n_in > 1 else None
        width = filters if self.bottleneck is not None else n_in
        self.convs = nn.ModuleList(QConv1d(width, filters, k) for k in KERNEL_SIZES)
        self.pool = nn.MaxPool1d(3, stride=1, padding=1)
        self.pool_conv = QConv1d(n_in, filters, 1)
        self.bn = nn.BatchNorm1d(4 * filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (n, c_in, t) -> (n, 4f, t)
        b = self.bottleneck(x) if self.bottleneck is not None else x
        branches = [conv(b) for conv in self.convs] + [self.pool_conv(self.pool(x))]
        return F.relu(self.bn(torch.cat(branches, dim=1)))


class Shortcut(nn.Module):
    """Residual path: 1x1 conv + BN when widths differ, BN alone otherwise."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.conv = QConv1d(n_in, n_out, 1) if n_in != n_out else None
        self.bn = nn.BatchNorm1d(n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x) if self.conv is not None else x)


class InceptionTime(nn.Module):
    """``(n_cases, n_channels, n_timepoints)`` -> logits ``(n_cases, n_classes)``."""

    def __init__(self, n_channels: int, n_classes: int, filters: int = 32, depth: int = 6):
        super().__init__()
        if n_channels < 1 or n_classes < 2 or filters < 1 or depth < 1:
            raise ValueError("need n_channels >= 1, n_classes >= 2, filters >= 1, depth >= 1")
        self.n_channels, self.n_classes = n_channels, n_classes
        self.filters, self.depth = filters, depth
        width = 4 * filters
        self.blocks = nn.ModuleList(
            InceptionModule(n_channels if d == 0 else width, filters) for d in range(depth)
        )
        self.shortcuts = nn.ModuleDict()
        res_in = n_channels
        for d in range(depth):
            if d % 3 == 2:
                self.shortcuts[str(d)] = Shortcut(res_in, width)
                res_in = width
        self.head = QLinear(width, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:  # -> (n, 4f) pooled features
        res = x
        for d, block in enumerate(self.blocks):
            x = block(x)
            if str(d) in self.shortcuts:
                x = F.relu(x + self.shortcuts[str(d)](res))
                res = x
        return x.mean(dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def count_params(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def quant_layers(model: nn.Module) -> list[tuple[str, QConv1d | QLinear]]:
    """Every quantizable layer with its qualified name, in forward order of definition."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QConv1d | QLinear)]


def raw_input_layers(model: InceptionTime) -> set[str]:
    """Names of layers that read the raw sensor input (their input stays float)."""
    names = {"blocks.0.pool_conv"}
    first = model.blocks[0]
    if first.bottleneck is not None:
        names.add("blocks.0.bottleneck")
    else:
        names.update(f"blocks.0.convs.{i}" for i in range(len(KERNEL_SIZES)))
    if "2" in model.shortcuts and model.shortcuts["2"].conv is not None:
        names.add("shortcuts.2.conv")
    return names


def add_head_rows(model: InceptionTime, n_new: int) -> None:
    """Give ``model``'s head ``n_new`` more outputs, for classes it was never trained on,
    in place: zero weights, each new bias the lowest existing one, each new row's weight
    quantization parameters the median of the existing rows' (so that 0 is a code). What
    back-prop on the device then trains like the rest of the head."""
    old = model.head
    k = old.out_features
    new = QLinear(old.in_features, k + n_new)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:k] = old.weight
        new.bias[:k] = old.bias
        new.bias[k:] = old.bias.min()
        new.w_scale[:k] = old.w_scale
        new.w_scale[k:] = old.w_scale.median()
        new.w_zero_point[:k] = old.w_zero_point
        new.w_zero_point[k:] = torch.round(old.w_zero_point.median())
        new.a_scale.copy_(old.a_scale)
        new.a_zero_point.copy_(old.a_zero_point)
    new.bits, new.act_bits = old.bits, old.act_bits
    model.head = new.to(old.weight.device)
    model.n_classes = k + n_new
