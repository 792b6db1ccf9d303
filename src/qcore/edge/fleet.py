"""A fleet of devices: pool what each device's streaming head learnt, in one round.

Every device of a fleet starts from one deployed artifact and adds its own labelled
windows to the head's statistics (counts, class means, one shared scatter). Those
statistics add up exactly (Chan et al.'s pairwise merge, :func:`qcore.edge.head.combine`),
so a server can pool the fleet without a window leaving any device:

1. from each device state, what the device learnt beyond the deployed statistics,
   :func:`learnt_part` (:func:`qcore.edge.head.subtract`): the deployed statistics then
   count once, whatever the number of devices;
2. the parts, classes aligned by name (a class a device learnt keeps its name; classes
   new to the fleet follow the deployed ones in the order the states first bring them),
   combined with the deployed statistics: the head of one device that saw every device's
   windows, whatever the order of the states or how each device's stream was cut;
3. a new deployable artifact (step 0, fresh runtime) with that head (:func:`merge_fleet`).

Pooled, the fleet's statistics hold thousands of windows, and a new site's few hundred
labels then barely move its head. :func:`weigh_as` scales the merged statistics (counts
and scatter; means and covariance, hence every prediction, unchanged) to weigh as much as
the deployed ones did, so that a new site learns from its own labels as fast as a device
deployed from the source does; ``qcore fleet merge`` writes them so unless told
``--weight pooled``.

A state whose backbone moved (flips, BatchNorm re-estimation) computed its statistics on
features the deployed backbone does not produce, so they cannot be pooled exactly: such a
state is refused, as is a state that grew from another artifact. NumPy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from qcore.edge.artifact import Artifact
from qcore.edge.head import HeadStats, combine, grow, subtract
from qcore.edge.runtime import Runtime
from qcore.edge.share import Share, pooled_stats
from qcore.edge.state import ARTIFACT_KEY
from qcore.errors import QCoreError


def learnt_part(deployed: Artifact, state: Artifact, name: str = "state") -> HeadStats:
    """The statistics ``state`` added to ``deployed``'s, over the state's classes."""
    if deployed.head is None or state.head is None:
        raise QCoreError(f"{name}: only devices with streaming head statistics can be merged")
    _check_classes(deployed, state.class_names, name)
    if Runtime.from_dict(state.runtime, step=state.step).backbone_moved:
        raise QCoreError(
            f"{name}: its backbone moved (flips or BatchNorm), so its statistics are of other "
            "features than the deployed model's and cannot be merged exactly"
        )
    return subtract(state.head, grow(deployed.head, len(state.class_names)))


def merge_fleet(
    deployed: Artifact,
    states: Sequence[Artifact],
    names: Sequence[str] | None = None,
    deployed_sha256: str | None = None,
) -> Artifact:
    """The deployable artifact whose head holds ``deployed``'s statistics and what every
    state learnt (see the module docstring). ``names``: how to call each state in an
    error (default ``state 1``, ...); ``deployed_sha256``: the SHA-256 of the deployed
    artifact's file, which a state bound to its artifact must carry."""
    parts = []
    for state, name in zip(states, _names(names, len(states), "state"), strict=True):
        _check_origin(state.runtime.get(ARTIFACT_KEY), deployed_sha256, name)
        parts.append((learnt_part(deployed, state, name), state.class_names))
    return merge_parts(deployed, parts)


def merge_shares(
    deployed: Artifact,
    shares: Sequence[Share],
    names: Sequence[str] | None = None,
    deployed_sha256: str | None = None,
) -> Artifact:
    """:func:`merge_fleet` of what devices sent (:mod:`qcore.edge.share`) instead of their
    states; a share's classes must start with the deployed ones. The shares' sums are
    added before they become statistics (:func:`qcore.edge.share.pooled_stats`), so their
    noise averages out over the fleet instead of being clamped device by device."""
    if not shares:
        raise QCoreError("a fleet merge needs at least one device share")
    if deployed.head is None:
        raise QCoreError("the deployed artifact has no streaming head statistics to merge into")
    classes = list(deployed.class_names)
    for share, name in zip(shares, _names(names, len(shares), "share"), strict=True):
        _check_origin(share.deployed or None, deployed_sha256, name)
        _check_classes(deployed, share.classes, name)
        classes += [c for c in share.classes if c not in classes]
    stats = pooled_stats(shares, deployed.head, classes)
    k = len(deployed.class_names)
    return merge_parts(deployed, [(grow_learnt(stats, len(classes) - k), tuple(classes))])


def merge_parts(deployed: Artifact, parts: Sequence[tuple[HeadStats, tuple[str, ...]]]) -> Artifact:
    """The deployed artifact with every learnt part (statistics and their class names)
    combined into its head statistics, classes aligned by name."""
    if not parts:
        raise QCoreError("a fleet merge needs at least one device state")
    if deployed.head is None:
        raise QCoreError("the deployed artifact has no streaming head statistics to merge into")
    classes = list(deployed.class_names)
    for _, state_classes in parts:
        classes += [c for c in state_classes if c not in classes]
    total = grow(deployed.head, len(classes))
    for part, state_classes in parts:
        total = combine(total, _placed(part, [classes.index(c) for c in state_classes], total))
    return replace(
        deployed, head=total, class_names=tuple(classes), step=0, runtime={}, core=deployed.core
    )


def weigh_as(art: Artifact, total: float) -> Artifact:
    """``art`` with its head statistics scaled to a total count of ``total`` (counts,
    scatter and each class's own scatter scaled, means kept: the same head)."""
    if art.head is None or not total > 0:
        raise QCoreError("weighing needs head statistics and a total count > 0")
    s = total / float(art.head.count.sum())
    head = art.head
    return replace(
        art, head=HeadStats(head.count * s, head.mean, head.scatter * s, head.learnt * s)
    )


def _names(names: Sequence[str] | None, n: int, what: str) -> list[str]:
    """How to call each of ``n`` states or shares in an error (default ``WHAT 1``, ...)."""
    if names is None:
        return [f"{what} {i + 1}" for i in range(n)]
    if len(names) != n:
        raise QCoreError(f"{n} {what}s need as many names, got {len(names)}")
    return list(names)


def _check_classes(deployed: Artifact, classes: Sequence[str], name: str) -> None:
    k = len(deployed.class_names)
    if tuple(classes[:k]) != deployed.class_names:
        raise QCoreError(
            f"{name} does not start from the deployed classes ({', '.join(deployed.class_names)})"
        )


def _check_origin(grew_from: str | None, deployed_sha256: str | None, name: str) -> None:
    if deployed_sha256 is not None and grew_from not in (None, deployed_sha256):
        raise QCoreError(f"{name} grew from another artifact than the deployed one")


def grow_learnt(stats: HeadStats, n_learnt: int) -> HeadStats:
    """``stats`` whose last ``n_learnt`` classes keep an own scatter (zero: a share sends
    none, so a merged class learnt from shares cannot be dropped exactly)."""
    d = stats.n_features
    return HeadStats(stats.count, stats.mean, stats.scatter, np.zeros((n_learnt, d, d)))


def _placed(part: HeadStats, index: list[int], like: HeadStats) -> HeadStats:
    """``part`` with its classes moved to positions ``index`` of ``like``'s classes (the
    others empty); a learnt class's own scatter follows it."""
    count = np.zeros(like.n_classes)
    mean = np.zeros((like.n_classes, like.n_features))
    learnt = np.zeros(like.learnt.shape)
    count[index], mean[index] = part.count, part.mean
    first, part_first = like.n_classes - like.n_learnt, part.n_classes - part.n_learnt
    for k, at in enumerate(index[part_first:], start=part_first):
        learnt[at - first] = part.learnt[k - part_first]
    return HeadStats(count, mean, part.scatter, learnt)
