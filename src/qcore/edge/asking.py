"""Which windows of a batch a device asks labels for, within a budget.

A person in the field labels a few windows; which ones is the device's to choose, from
what its prediction already computed (:mod:`qcore.edge.signals`). A ``label_policy``:

* ``random``: windows drawn uniformly (seeded): what a person labelling whatever comes
  gives;
* ``margin``: the windows whose two most probable classes are closest (the smallest
  top-1 minus top-2 calibrated probability): those the head is least sure between;
* ``novel``: the windows furthest from every class the device knows (largest novelty);
* ``margin-cover`` and ``novel-cover``: first one window per predicted class, the classes
  taken from those with the fewest target labels so far, each class's best window by the
  policy's order; then the rest by that order. A class the device has not been given a
  label of yet is asked about first, so no class goes unlearnt for want of a label;
* ``margin-pairs`` and ``margin-top``: the ``margin`` order, but a window whose two most
  probable classes (an unordered pair; ``-top``: whose predicted class) are already asked
  about in this batch waits until every pair (class) of the batch has one window asked, so
  a few labels are not all spent on one confusion;
* ``margin-random``: the first ``ceil(k / 2)`` windows by ``margin``, the others drawn
  uniformly (seeded) from the rest of the batch;
* ``dmargin``: the windows with the smallest distance margin (the Mahalanobis distance to
  the second-nearest class mean minus that to the nearest, ``Signals.margin``): those
  most likely wrong. Unlike ``margin`` it carries no novelty temperature, which lowers
  the calibrated probabilities of right windows too.
* ``margin-dense`` and ``margin-dense2``: ``margin``'s uncertainty weighted by how
  representative a window is of its batch, so that the labels go to windows many
  batch-mates resemble rather than to outliers. In the head's whitened features ``z``
  (``Signals.whitened``: Euclidean distance there is the head's Mahalanobis distance), a
  window's density is the mean over the other windows of ``exp(-|z_i - z_j|² / h2)``, with
  ``h2`` the median squared distance between two windows of the batch (every density 1
  when that is 0); the score ``(1 - margin) · density^β``, ``β`` 1 (``-dense``) or 2
  (``-dense2``), largest first. A batch of one window asks by ``margin``.

Ties are broken by window index, so the same batch always gets the same request. NumPy
only.
"""

from __future__ import annotations

import numpy as np

from qcore.errors import QCoreError

LABEL_POLICIES = (
    "random",
    "margin",
    "novel",
    "margin-cover",
    "novel-cover",
    "margin-pairs",
    "margin-top",
    "margin-random",
    "dmargin",
    "margin-dense",
    "margin-dense2",
)
# the power of the density in each density policy's score
DENSITY_POWER = {"margin-dense": 1.0, "margin-dense2": 2.0}


def budget(n: int, fraction: float) -> int:
    """How many of ``n`` windows a share ``fraction`` of labels is: the nearest count
    (Python's rounding, as :func:`qcore.data.scenario.label_mask` counts)."""
    if not 0.0 <= fraction <= 1.0:
        raise QCoreError(f"a label budget is a share in [0, 1], got {fraction}")
    return int(round(n * fraction))


def ask(
    policy: str,
    k: int,
    probs: np.ndarray,
    novelty: np.ndarray | None,
    labelled: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    *,
    margin: np.ndarray | None = None,
    whitened: np.ndarray | None = None,
) -> np.ndarray:
    """The indices int64 (sorted) of the ``k`` windows to ask labels for.

    ``probs``: the batch's calibrated class probabilities float ``(n, K)``; ``novelty``
    ``(n,)`` (needed by the ``novel`` policies); ``labelled``: target labels received so
    far per class ``(K,)`` (the ``-cover`` policies; None: none yet); ``rng``: the draw
    of ``random`` and ``margin-random``; ``margin``: the distance margin ``(n,)`` (needed
    by ``dmargin``); ``whitened``: the head's whitened features ``(n, D)`` (needed by the
    density policies).
    """
    if policy not in LABEL_POLICIES:
        raise QCoreError(f"unknown label_policy {policy!r}: choose {', '.join(LABEL_POLICIES)}")
    n = len(probs)
    if not 0 <= k <= n:
        raise QCoreError(f"cannot ask for {k} labels in a batch of {n} windows")
    if policy in ("random", "margin-random") and rng is None:
        raise QCoreError(f"label_policy {policy} needs a random generator")
    if policy == "random":
        assert rng is not None
        return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)
    if policy == "dmargin":
        order = _by_distance_margin(margin, n)
    elif policy in DENSITY_POWER:
        if whitened is None:
            raise QCoreError(
                f"label_policy {policy} needs the head's whitened features (a streaming head)"
            )
        order = dense_order(probs, whitened, DENSITY_POWER[policy])
    else:
        order = _order(policy.split("-")[0], probs, novelty)
    if policy.endswith("-cover"):
        order = _cover_first(order, probs.argmax(axis=1), labelled, probs.shape[1])
    elif policy in ("margin-pairs", "margin-top"):
        order = _spread(order, _confusion(probs, pairs=policy == "margin-pairs"))
    elif policy == "margin-random":
        assert rng is not None
        first = (k + 1) // 2
        rest = order[first:]
        order = np.concatenate([order[:first], rest[rng.permutation(len(rest))]])
    return np.sort(order[:k]).astype(np.int64)


def _confusion(probs: np.ndarray, *, pairs: bool) -> list[tuple[int, ...]]:
    """Per window, its predicted class, or (``pairs``) its two most probable classes in
    increasing order; ties by class index."""
    ranked = np.argsort(-np.asarray(probs, dtype=np.float64), axis=1, kind="stable")
    if not pairs or ranked.shape[1] < 2:
        return [(int(r[0]),) for r in ranked]
    return [tuple(sorted((int(r[0]), int(r[1])))) for r in ranked]


def _spread(order: np.ndarray, group: list[tuple[int, ...]]) -> np.ndarray:
    """``order`` with, first, the first window of each group in that order; then the
    rest in that order."""
    seen: set[tuple[int, ...]] = set()
    head: list[int] = []
    tail: list[int] = []
    for i in order:
        (tail if group[i] in seen else head).append(int(i))
        seen.add(group[i])
    return np.array(head + tail, dtype=np.int64)


def _order(kind: str, probs: np.ndarray, novelty: np.ndarray | None) -> np.ndarray:
    """Window indices, the most worth a label first (stable: ties by index)."""
    if kind == "novel":
        if novelty is None:
            raise QCoreError("label_policy novel needs the device's novelty (a novelty threshold)")
        return np.argsort(-np.asarray(novelty, dtype=np.float64), kind="stable")
    return np.argsort(_margins(probs), kind="stable")


def _margins(probs: np.ndarray) -> np.ndarray:
    """Per window, the top-1 minus the top-2 probability (the top-1 with one class)."""
    top = np.sort(np.asarray(probs, dtype=np.float64), axis=1)
    return top[:, -1] - (top[:, -2] if top.shape[1] > 1 else 0.0)


def dense_order(probs: np.ndarray, whitened: np.ndarray, power: float) -> np.ndarray:
    """Window indices by ``(1 - margin) · density^power``, largest first (stable: ties by
    index); by ``margin`` for a batch of fewer than two windows."""
    n = len(probs)
    if n < 2:
        return _order("margin", probs, None)
    score = (1.0 - _margins(probs)) * density(whitened, n) ** power
    return np.argsort(-score, kind="stable")


def density(whitened: np.ndarray, n: int) -> np.ndarray:
    """Per window of ``n`` >= 2, the mean over the others of ``exp(-d2 / h2)``: ``d2`` the
    squared distance between the ``whitened`` features ``(n, D)``, ``h2`` its median over
    the pairs of distinct windows (every density 1 when that is 0)."""
    z = np.asarray(whitened, dtype=np.float64)
    if z.ndim != 2 or len(z) != n:
        raise QCoreError(f"whitened features must be one row per window ({n}), got {z.shape}")
    if not np.isfinite(z).all():
        raise QCoreError("whitened features must be finite")
    sq = (z * z).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (z @ z.T), 0.0)
    np.fill_diagonal(d2, 0.0)
    h2 = float(np.median(d2[~np.eye(n, dtype=bool)]))
    if h2 <= 0.0:
        return np.ones(n)
    return (np.exp(-d2 / h2).sum(axis=1) - 1.0) / (n - 1)


def _by_distance_margin(margin: np.ndarray | None, n: int) -> np.ndarray:
    """Window indices in increasing distance margin (stable: ties by index)."""
    if margin is None:
        raise QCoreError(
            "label_policy dmargin needs the device's distance margin (a streaming head)"
        )
    m = np.asarray(margin, dtype=np.float64)
    if m.shape != (n,):
        raise QCoreError(f"the distance margin must be one per window ({n}), got {m.shape}")
    return np.argsort(m, kind="stable")


def _cover_first(
    order: np.ndarray, predicted: np.ndarray, labelled: np.ndarray | None, n_classes: int
) -> np.ndarray:
    """``order`` with, first, the best window of each predicted class, the classes with
    the fewest labels so far first (ties by class index)."""
    counts = np.zeros(n_classes) if labelled is None else np.asarray(labelled, dtype=np.float64)
    if counts.shape != (n_classes,):
        raise QCoreError(
            f"labels so far must be one count per class ({n_classes}), got {counts.shape}"
        )
    first: dict[int, int] = {}
    for i in order:
        first.setdefault(int(predicted[i]), int(i))
    classes = sorted(first, key=lambda c: (counts[c], c))
    head = [first[c] for c in classes]
    taken = set(head)
    return np.array(head + [int(i) for i in order if int(i) not in taken], dtype=np.int64)
