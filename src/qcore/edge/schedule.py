"""When a device step calibrates, and on which windows without a label.

The policy (:class:`qcore.config.Policy`) says when: ``every`` batch, ``every:N`` (the
N-th, 2N-th, ... batch) or ``drift``. Under ``drift`` a device with a novelty signal
(a streaming head and a novelty threshold, :mod:`qcore.edge.signals`) enters drift when
at least ``drift_share`` of a batch's windows are novel, and calibrates on every batch
until the share falls to ``drift_release`` (:class:`qcore.edge.drift.NoveltyTrigger`): a
stream from the world the device knows keeps that share near 5%, a drifted one far above
it. A device without novelty watches its mean confidence with a Page-Hinkley test
(:class:`qcore.edge.drift.PageHinkley`). NumPy only; nothing here is random.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np

from qcore.config import DeviceConfig, Policy
from qcore.edge.drift import Detector, NoveltyTrigger, PageHinkley
from qcore.edge.signals import novel_share


def make_detector(
    cfg: DeviceConfig,
    has_head: bool,
    saved: Mapping[str, Any] | None,
    given: PageHinkley | None = None,
) -> Detector:
    """The detector of a device with settings ``cfg``: the novelty trigger when the device
    has a streaming head (``has_head``) and a novelty threshold, else ``given`` or a
    Page-Hinkley test; either resumes from the ``saved`` state (its runtime's ``drift``)
    when that state is its own."""
    if has_head and cfg.novelty_threshold is not None:
        active = bool(saved.get("active", False)) if saved is not None else False
        return NoveltyTrigger(cfg.drift_share, cfg.drift_release, active)
    if given is not None:
        return copy.deepcopy(given)
    if saved is not None and "active" not in saved:
        return PageHinkley.from_dict(dict(saved))
    return PageHinkley()


def is_due(
    policy: Policy,
    cfg: DeviceConfig,
    step: int,
    detector: Detector,
    confidence: np.ndarray,
    novelty: np.ndarray | None,
) -> tuple[bool, bool]:
    """(calibrate?, in drift?) for the batch numbered ``step`` (1-based), given its
    windows' ``confidence`` and ``novelty``; ``detector`` is updated when it is asked."""
    if policy.kind != "drift":
        return step % policy.every == 0, False
    if isinstance(detector, NoveltyTrigger):
        fired = detector.update(novel_share(novelty) or 0.0)
    else:
        fired = detector.update(float(confidence.mean()))
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
