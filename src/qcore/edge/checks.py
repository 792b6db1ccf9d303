"""What a device refuses: settings it cannot run, a deployed artifact that is not its
own, a batch it cannot read. Each check raises :class:`QCoreError` naming the problem
and changes nothing. NumPy only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qcore.config import DeviceConfig
from qcore.edge.artifact import Artifact
from qcore.edge.labels import read_labels
from qcore.errors import QCoreError


def check_settings(art: Artifact, config: Any) -> DeviceConfig:
    """``config`` if a device can run ``art`` with it."""
    if not isinstance(config, DeviceConfig):
        raise QCoreError("device settings must be a DeviceConfig")
    if art.model.bits is None:
        raise QCoreError("the device calibrates by flipping integer codes: need a quantized model")
    if art.flipnet is None and config.flip_steps > 0:
        raise QCoreError(
            "the artifact has no flip network: the device cannot flip (set flip_steps=0)"
        )
    if config.head == "slda" and art.head is None:
        raise QCoreError("the artifact has no streaming head statistics: set head=model")
    if config.ask_fraction is not None:
        if config.head != "slda":
            raise QCoreError("ask_fraction needs head=slda: the streaming head learns the answers")
        if config.ask_policy.startswith("novel") and config.novelty_threshold is None:
            raise QCoreError(
                f"ask_policy {config.ask_policy} needs the novelty (set novelty_threshold)"
            )
    return config


def check_deployed(deployed: Artifact, art: Artifact) -> None:
    """The deployed artifact must be the model ``art`` grew from (same shapes, classes)."""
    a, b = deployed.model, art.model
    known = art.class_names[: len(deployed.class_names)]  # a device may add classes
    dims = ("n_channels", "n_classes", "filters", "depth", "bits")
    same = [getattr(a, k) for k in dims] == [getattr(b, k) for k in dims]
    if not same or (deployed.class_names, deployed.window_length) != (known, art.window_length):
        raise QCoreError("the deployed artifact is not the model this state grew from")
    if art.head is not None and deployed.head is None:
        raise QCoreError("the deployed artifact has no streaming head statistics")


def check_batch(
    art: Artifact, X: Any, y: Any, allow_new_classes: bool, streaming_head: bool
) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """``(X float32 (n, c, t), y int64 (n,) or None, new class names)`` of a batch for
    ``art``'s model.

    ``y`` may be class indices or labels in the form training saw (the artifact's class
    names, or raw values whose string form is a class name), with ``-1`` (or ``""``) for
    a window without a label, see :func:`qcore.edge.labels.read_labels`; ``None`` for a
    batch without labels. New class names only with ``allow_new_classes`` and a
    ``streaming_head``.
    """
    c, t = art.model.n_channels, art.window_length
    if not isinstance(X, np.ndarray) or not (y is None or isinstance(y, np.ndarray)):
        raise QCoreError("batch X and y must be NumPy arrays")
    if not np.issubdtype(X.dtype, np.floating):
        raise QCoreError(f"batch X must be floating point, got {X.dtype}")
    if X.ndim != 3:
        raise QCoreError(f"batch X must have shape (n, {c}, {t}), got rank {X.ndim}")
    if X.shape[0] == 0:
        raise QCoreError("batch is empty")
    if X.shape[1] != c:
        raise QCoreError(f"batch has {X.shape[1]} channels, the model expects {c}")
    if X.shape[2] != t:
        raise QCoreError(f"batch windows have {X.shape[2]} time steps, the model expects {t}")
    if not np.isfinite(X).all():
        raise QCoreError("batch X contains NaN or infinite values")
    if y is None:
        return X.astype(np.float32, copy=False), None, ()
    if y.ndim != 1:
        raise QCoreError(f"batch y must be 1-D labels, got rank {y.ndim}")
    if len(y) != len(X):
        raise QCoreError(f"batch has {len(X)} windows but {len(y)} labels")
    labels, new = read_labels(y, art.class_names, allow_new_classes)
    if new and not streaming_head:
        raise QCoreError(
            f"label {new[0]!r} is a new class: only the streaming head (head=slda) can add one"
        )
    return X.astype(np.float32, copy=False), labels, new
