"""What a device step works on before it commits (:meth:`qcore.edge.device.Device.step`):
the batch as the predict phase saw it (:class:`Seen`), and the device's state as the
later phases change it (:class:`Draft`). The device commits a draft in one assignment,
so a step that raises leaves the device as it was. NumPy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcore.core.qmodel import QuantizedModel
from qcore.coreset.core import Core
from qcore.edge.head import HeadStats, Solved
from qcore.edge.runtime import Runtime


@dataclass(frozen=True)
class Seen:
    """What the predict phase saw of a batch: the normalised windows float32 ``(n, c, t)``, labels
    int64 ``(n,)`` (-1: none) or None, the class names they add, the labelled windows
    (bool ``(n,)``, None when there are none), the predicted class indices int64 ``(n,)``,
    the confidences float64 ``(n,)`` and the novelty float64 ``(n,)`` (None without head
    statistics and a novelty threshold, :mod:`qcore.edge.signals`), the inference time per
    window, and the model head's logits and the pooled features (None without a streaming
    head)."""

    Xn: np.ndarray
    labels: np.ndarray | None
    new: tuple[str, ...]
    mask: np.ndarray | None
    pred: np.ndarray
    probs: np.ndarray
    novelty: np.ndarray | None
    latency_ms: float
    model_logits: np.ndarray
    features: np.ndarray | None


@dataclass
class Draft:
    """What a step will commit: model, core, head statistics and solved head (None: the
    model's own head), class names and runtime state; and, while the backbone is the one
    that predicted the batch, its logits and pooled features of the batch (else None)."""

    model: QuantizedModel
    core: Core | None
    stats: HeadStats | None
    head: Solved | None
    names: tuple[str, ...]
    runtime: Runtime
    model_logits: np.ndarray | None = None
    features: np.ndarray | None = None

    def new_backbone(self, model: QuantizedModel) -> None:
        """``model`` replaces the backbone: what was computed with the old one is gone."""
        self.model, self.model_logits, self.features = model, None, None
