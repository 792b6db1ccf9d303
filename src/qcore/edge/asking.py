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
  label of yet is asked about first, so no class goes unlearnt for want of a label.

Ties are broken by window index, so the same batch always gets the same request. NumPy
only.
"""

from __future__ import annotations

import numpy as np

from qcore.errors import QCoreError

LABEL_POLICIES = ("random", "margin", "novel", "margin-cover", "novel-cover")


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
) -> np.ndarray:
    """The indices int64 (sorted) of the ``k`` windows to ask labels for.

    ``probs``: the batch's calibrated class probabilities float ``(n, K)``; ``novelty``
    ``(n,)`` (needed by the ``novel`` policies); ``labelled``: target labels received so
    far per class ``(K,)`` (the ``-cover`` policies; None: none yet); ``rng``: the draw
    of ``random``.
    """
    if policy not in LABEL_POLICIES:
        raise QCoreError(f"unknown label_policy {policy!r}: choose {', '.join(LABEL_POLICIES)}")
    n = len(probs)
    if not 0 <= k <= n:
        raise QCoreError(f"cannot ask for {k} labels in a batch of {n} windows")
    if policy == "random":
        if rng is None:
            raise QCoreError("label_policy random needs a random generator")
        return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)
    order = _order(policy.removesuffix("-cover"), probs, novelty)
    if policy.endswith("-cover"):
        order = _cover_first(order, probs.argmax(axis=1), labelled, probs.shape[1])
    return np.sort(order[:k]).astype(np.int64)


def _order(kind: str, probs: np.ndarray, novelty: np.ndarray | None) -> np.ndarray:
    """Window indices, the most worth a label first (stable: ties by index)."""
    if kind == "novel":
        if novelty is None:
            raise QCoreError("label_policy novel needs the device's novelty (a novelty threshold)")
        return np.argsort(-np.asarray(novelty, dtype=np.float64), kind="stable")
    top = np.sort(np.asarray(probs, dtype=np.float64), axis=1)
    margin = top[:, -1] - (top[:, -2] if top.shape[1] > 1 else 0.0)
    return np.argsort(margin, kind="stable")


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
