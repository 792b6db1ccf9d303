"""When a device step calibrates, and on which windows without a label.

The policy (:class:`qcore.config.Policy`) says when: ``every`` batch, ``every:N`` (the
N-th, 2N-th, ... batch) or ``drift``. Under ``drift`` a device with a novelty signal
(a streaming head and a novelty threshold, :mod:`qcore.edge.signals`) calibrates on a
batch when at least ``drift_share`` of its windows are novel: a stream from the world the
device knows keeps that share near 5%, a drifted one far above it. A device without
novelty watches its mean confidence with a Page-Hinkley test (:mod:`qcore.edge.drift`).
NumPy only; nothing here is random.
"""

from __future__ import annotations

import numpy as np

from qcore.config import DeviceConfig, Policy
from qcore.edge.drift import PageHinkley
from qcore.edge.signals import novel_share


def is_due(
    policy: Policy,
    cfg: DeviceConfig,
    step: int,
    detector: PageHinkley,
    confidence: np.ndarray,
    novelty: np.ndarray | None,
) -> tuple[bool, bool]:
    """(calibrate?, drift detected?) for the batch numbered ``step`` (1-based), given its
    windows' ``confidence`` and ``novelty``; ``detector`` is updated when it is asked."""
    if policy.kind != "drift":
        return step % policy.every == 0, False
    share = novel_share(novelty)
    if share is None:
        fired = detector.update(float(confidence.mean()))
    else:
        fired = share >= cfg.drift_share
    return fired, fired


def pseudo_labelled(
    threshold: float | None, labels: np.ndarray | None, confidence: np.ndarray
) -> np.ndarray | None:
    """The windows without a label whose confidence reaches ``threshold``
    (``pseudo_threshold``; None: no pseudo-labels), bool ``(n,)``, or None when there are
    none."""
    if threshold is None:
        return None
    chosen = confidence >= threshold
    if labels is not None:
        chosen &= labels < 0
    return chosen if chosen.any() else None
