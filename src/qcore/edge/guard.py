"""The user guard: is the calibrated device worse for its user than the deployed model?

For each of its last ``reset_window`` labelled batches the device keeps a
:class:`qcore.edge.runtime.GuardRecord`: how many windows it predicted right and how many
the deployed model (the artifact it started from) would have, and on how many each was
right alone. When the device's share over a full window is lower by more than
``reset_margin`` (and, while the backbone has not moved, an exact sign test on the
windows where the two disagree says at level ``reset_alpha`` that the difference is more
than chance), :func:`reset_reason` says why the device must return to the deployed
model. A device that learns only its head from labels is undone on evidence; a damaged
backbone on the margin alone. NumPy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from qcore.config import DeviceConfig
from qcore.core.qmodel import QuantizedModel
from qcore.edge.head import Solved
from qcore.edge.head import logits as head_logits
from qcore.edge.infer import forward_features
from qcore.edge.runtime import GuardRecord


def sign_test(losses: int, wins: int) -> float:
    """One-sided exact sign test: the chance of at least ``losses`` of the
    ``losses + wins`` disagreements going against the device if each went either way
    with probability 1/2 (McNemar's exact test for paired predictions)."""
    n = losses + wins
    return sum(math.comb(n, k) for k in range(losses, n + 1)) / 2**n


def guard_record(right: np.ndarray, theirs: np.ndarray) -> GuardRecord:
    """The record of one batch from bool ``(n,)`` arrays: which windows the device and
    which the deployed model predicted right."""
    return GuardRecord(
        int(right.sum()),
        int(theirs.sum()),
        len(right),
        int((right & ~theirs).sum()),
        int((theirs & ~right).sum()),
    )


def reset_reason(recent: Sequence[GuardRecord], moved: bool, cfg: DeviceConfig) -> str | None:
    """Why the device must return to the deployed model, or None: a full window of
    ``recent`` records on which it was less accurate by more than ``cfg.reset_margin``
    (and, with ``cfg.reset_alpha`` while the backbone has not ``moved``, by more than
    chance)."""
    mine = sum(r.device_right for r in recent)
    theirs = sum(r.deployed_right for r in recent)
    n = sum(r.n for r in recent)
    if len(recent) < cfg.reset_window or n == 0:
        return None
    if mine / n >= theirs / n - cfg.reset_margin:
        return None
    why = ""
    if cfg.reset_alpha is not None and not moved:
        wins = sum(r.device_alone_right for r in recent)
        losses = sum(r.deployed_alone_right for r in recent)
        p = sign_test(losses, wins)
        if p >= cfg.reset_alpha:
            return None
        why = f" (it alone wrong on {losses} windows, alone right on {wins}: p = {p:.3g})"
    return (
        f"accuracy {mine / n:.3f} on the last {len(recent)} labelled batches, the deployed "
        f"model {theirs / n:.3f}{why}: returned to the deployed model"
    )


def deployed_right(
    model: QuantizedModel,
    head: Solved | None,
    Xn: np.ndarray,
    labels: np.ndarray,
    seen: tuple[np.ndarray, np.ndarray | None] | None,
) -> np.ndarray:
    """Which windows the deployed model (``model`` with its streaming ``head``, None: the
    model's own head) predicts right, bool ``(n,)``. ``seen``: the device's own logits
    and pooled features of ``Xn`` (features None without a streaming head) when its
    backbone is the deployed one: then only the deployed head is evaluated; else one
    forward pass of the deployed model."""
    if seen is None or (head is not None and seen[1] is None):
        seen = forward_features(model, Xn)
    model_logits, features = seen
    if head is None:
        return model_logits.argmax(1) == labels
    assert features is not None
    return head_logits(head.weight, head.bias, features).argmax(1) == labels


class UnguardedWarning(UserWarning):
    """A device resumed from a state without its deployed artifact: the user guard,
    which compares with that artifact, is off."""


def unguarded(step: int, window: int) -> UnguardedWarning:
    """The warning for a device resumed at ``step`` without its deployed artifact."""
    return UnguardedWarning(
        f"the device resumes a state at step {step} without its deployed artifact: the "
        f"user guard (reset_window={window}) cannot compare with the deployed model and is "
        "off; pass deployed=<the artifact the state grew from> to run it (qcore device "
        "does), or set reset_window=0 to run unguarded knowingly"
    )
