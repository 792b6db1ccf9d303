"""What a device step works on before it commits (:meth:`qcore.edge.device.Device.step`):
the batch as the predict phase saw it (:class:`Seen`), and the device's state as the
later phases change it (:class:`Draft`). The device commits a draft in one assignment,
so a step that raises leaves the device as it was. NumPy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcore.config import DeviceConfig
from qcore.core.qmodel import QuantizedModel
from qcore.coreset.core import Core
from qcore.edge.backbone import solve_head
from qcore.edge.head import HeadStats, Solved, grow, update
from qcore.edge.infer import forward_features
from qcore.edge.pending import Pending
from qcore.edge.runtime import Runtime
from qcore.edge.share import clip_norms


@dataclass(frozen=True)
class Seen:
    """What the predict phase saw of a batch: the normalised windows float32 ``(n, c, t)``, labels
    int64 ``(n,)`` (-1: none) or None, the class names they add, the labelled windows
    (bool ``(n,)``, None when there are none), the predicted class indices int64 ``(n,)``,
    the confidences float64 ``(n,)`` and the novelty float64 ``(n,)`` (None without head
    statistics and a novelty threshold, :mod:`qcore.edge.signals`), the inference time per
    window, the model head's logits and the pooled features (None without a streaming
    head), the calibrated class probabilities float64 ``(n, K)`` and the distance margin
    float64 ``(n,)`` (None without a streaming head)."""

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
    class_probs: np.ndarray
    margin: np.ndarray | None


@dataclass
class Draft:
    """What a step will commit: model, core, head statistics and solved head (None: the
    model's own head), class names, runtime state and the windows waiting for an answer
    (:mod:`qcore.edge.pending`); and, while the backbone is the one that predicted the
    batch, its logits and pooled features of the batch (else None)."""

    model: QuantizedModel
    core: Core | None
    stats: HeadStats | None
    head: Solved | None
    names: tuple[str, ...]
    runtime: Runtime
    pending: Pending | None = None
    model_logits: np.ndarray | None = None
    features: np.ndarray | None = None

    def new_backbone(self, model: QuantizedModel) -> None:
        """``model`` replaces the backbone: what was computed with the old one is gone."""
        self.model, self.model_logits, self.features = model, None, None

    def return_to(
        self,
        model: QuantizedModel,
        core: Core | None,
        stats: HeadStats | None,
        cfg: DeviceConfig,
        streaming: bool,
    ) -> None:
        """The deployed ``model`` and ``core``, its head ``stats`` grown to the draft's
        classes (classes the device learnt stay known, without samples) and, for a device
        with a ``streaming`` head, the head solved from them; the guard's record
        restarted, the return counted."""
        self.new_backbone(model)
        self.core, self.stats = core, None if stats is None else grow(stats, len(self.names))
        self.head = solve_head(self.stats, cfg) if streaming and self.stats is not None else None
        self.runtime = self.runtime.returned()

    def add_classes(self, new: tuple[str, ...]) -> None:
        """Classes ``new`` join the names and the head statistics (without samples)."""
        if new:  # labels of a new class are validated to need head statistics
            assert self.stats is not None
            self.names = self.names + new
            self.stats = grow(self.stats, len(self.names))

    def learn(
        self, X: np.ndarray, chosen: np.ndarray, as_class: np.ndarray, cfg: DeviceConfig
    ) -> None:
        """The windows ``chosen`` (bool) of the normalised ``X`` join the head statistics
        as classes ``as_class`` and the head is solved again; their features are the
        current backbone's (the batch's, when the predict phase computed them)."""
        assert self.stats is not None
        if self.features is None:
            self.features = forward_features(self.model, X)[1]
        added = clip_norms(self.features[chosen], cfg.share_clip)
        self.stats = update(self.stats, added, as_class[chosen])
        self.head = solve_head(self.stats, cfg)
