"""What the streaming head can say about its own predictions: confidence, novelty, margin;
and its whitened features.

All three come from the squared Mahalanobis distances ``d2[:, c]`` of a window's pooled
features ``x`` to the class means under the head's shrunk precision ``Λ``
(:func:`qcore.edge.head.precision`). The head's scores already hold them:
``score_c = μ_c Λ x - μ_c Λ μ_c / 2``, so ``d2_c = x Λ x - 2 score_c``, and one quadratic
form per window is all that is added to a prediction.

* **Confidence.** The softmax of the head's scores is the posterior of a Gaussian model
  whose parameters are taken as exact; its logits differ by hundreds, so it says 1.0
  whether the window is right or wrong, most of all on a drifted stream. The confidence
  here is the posterior of the same model with a Student-t in place of the Gaussian
  (``dof`` degrees of freedom, ``D`` features), tempered by a temperature ``t``:
  ``p_c ∝ exp(-(dof + D) / (2 t) · log(1 + d2_c / dof))``. The t's heavy tails make a
  window far from every class mean less sure than one near a mean, which the Gaussian
  cannot. A novel window (below) also gets a higher temperature of its own,
  ``t = temperature · max(1, novelty)^power``: the further it lies from what the device
  knows, the less its scores are trusted. Since ``log(1 + d / dof)`` rises with ``d`` and
  a window's temperature is the same for every class, the class with the highest
  probability is the head's prediction: calibration changes no prediction.
* **Novelty.** The smallest of a window's distances over the cloud's novelty threshold:
  above 1, the window lies further from every class the device knows than 95% of the
  source's held-out windows (:func:`fit_novelty_threshold`). The share of such windows in
  a batch is the drift signal of the ``drift`` policy (:func:`novel_share`).
* **Margin.** The Mahalanobis distance (not squared) to the second-nearest class mean
  minus that to the nearest (:func:`distance_margin`): how much closer the window lies to
  the class it is given than to any other, in the units of the shared covariance. On a
  drifted subject before any label it tells wrong predictions from right ones better than
  the confidence (the rule and the runs: docs/wrong-right.md).
* **Whitened features.** ``z = x L`` with ``Λ = L Lᵀ`` (its Cholesky factor), so that the
  Euclidean distance between two windows' ``z`` is the head's Mahalanobis distance between
  them (:func:`whiten`): the geometry in which the density label policies of
  :mod:`qcore.edge.asking` measure how many batch-mates a window resembles.

NumPy only; float64 throughout, so the scores of a float32 head lose nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcore.config import DeviceConfig
from qcore.edge.head import Solved, batch_stats, logits, precision, solve
from qcore.errors import QCoreError

NOVELTY_QUANTILE = 0.95  # the share of held-out source windows below the novelty threshold
NOVELTY_FOLDS = 5  # folds of the cloud's out-of-fold distances


@dataclass(frozen=True)
class Signals:
    """A batch's calibrated ``probs`` float64 ``(n, K)`` (rows sum to 1), ``novelty``
    float64 ``(n,)`` (None where the device has no novelty threshold), distance ``margin``
    float64 ``(n,)``, the pooled ``features`` ``(n, D)`` and the head's ``precision``
    ``(D, D)`` they were scored under (these three None without the streaming head's
    features); :attr:`whitened` from the last two, computed when asked for."""

    probs: np.ndarray
    novelty: np.ndarray | None
    margin: np.ndarray | None = None
    features: np.ndarray | None = None
    precision: np.ndarray | None = None

    @classmethod
    def join(cls, parts: list[Signals]) -> Signals:
        """The signals of consecutive chunks of windows as one."""
        novelty = [p.novelty for p in parts if p.novelty is not None]
        margin = [p.margin for p in parts if p.margin is not None]
        feats = [p.features for p in parts if p.features is not None]
        whole = len(feats) == len(parts)  # chunks of one head: one precision
        return cls(
            np.concatenate([p.probs for p in parts]),
            np.concatenate(novelty) if len(novelty) == len(parts) else None,
            np.concatenate(margin) if len(margin) == len(parts) else None,
            np.concatenate(feats) if whole else None,
            parts[0].precision if whole else None,
        )

    @property
    def whitened(self) -> np.ndarray | None:
        """The features whitened under the head's precision (:func:`whiten`), float64
        ``(n, D)``; None without them."""
        if self.features is None or self.precision is None:
            return None
        return whiten(self.features, self.precision)

    @property
    def confidence(self) -> np.ndarray:
        """The calibrated probability of the predicted class, per window."""
        return self.probs.max(axis=1)


def sq_distances(scores: np.ndarray, features: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distances float64 ``(n, K)`` of ``features`` ``(n, D)`` to the
    class means, from the head's ``scores`` ``(n, K)`` and its ``precision`` ``(D, D)``;
    clipped at 0 (rounding), huge for a class never seen (its score is far below any)."""
    x = np.asarray(features, dtype=np.float64)
    quad = np.einsum("nd,de,ne->n", x, np.asarray(precision, dtype=np.float64), x)
    return np.maximum(quad[:, None] - 2.0 * np.asarray(scores, dtype=np.float64), 0.0)


def whiten(features: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """``features`` ``(n, D)`` times the Cholesky factor ``L`` of ``precision`` ``(D, D)``
    (``Λ = L Lᵀ``), float64: Euclidean distances between rows are the Mahalanobis ones."""
    lam = np.asarray(precision, dtype=np.float64)
    try:
        chol = np.linalg.cholesky((lam + lam.T) / 2.0)
    except np.linalg.LinAlgError:
        raise QCoreError("the head's precision is not positive definite") from None
    return np.asarray(features, dtype=np.float64) @ chol


def whitened(head: Solved | None, features: np.ndarray | None) -> np.ndarray | None:
    """The whitened ``features`` under the streaming ``head``'s precision (None without
    either)."""
    return None if head is None or features is None else whiten(features, head.precision)


def distance_margin(d2: np.ndarray) -> np.ndarray:
    """Per window, the Mahalanobis distance to the second-nearest class mean minus that
    to the nearest, from squared distances ``d2`` ``(n, K)``; infinite with one class."""
    d2 = np.asarray(d2, dtype=np.float64)
    if d2.shape[1] < 2:
        return np.full(len(d2), np.inf)
    nearest = np.sqrt(np.partition(d2, 1, axis=1)[:, :2])
    return nearest[:, 1] - nearest[:, 0]


def calibrated_probs(
    d2: np.ndarray, n_features: int, dof: float, temperature: float | np.ndarray
) -> np.ndarray:
    """The tempered Student-t posterior ``(n, K)`` of squared distances ``d2`` in a space
    of ``n_features`` dimensions (see the module docstring); ``temperature``: one for all
    windows or one per window ``(n,)``."""
    t = np.asarray(temperature, dtype=np.float64)
    if not (dof > 0 and (t > 0).all()):
        raise QCoreError(f"confidence needs dof > 0 and temperatures > 0, got {dof}, {temperature}")
    t = t[:, None] if t.ndim == 1 else t
    return _softmax(-(dof + n_features) / (2.0 * t) * np.log1p(d2 / dof))


def head_signals(
    scores: np.ndarray,
    features: np.ndarray,
    precision: np.ndarray,
    dof: float,
    temperature: float,
    novelty_threshold: float | None,
    power: float,
) -> Signals:
    """Calibrated probabilities, novelty and margin of one batch (see the module
    docstring), with the features and precision its whitened features come from."""
    d2 = sq_distances(scores, features, precision)
    novelty = None if novelty_threshold is None else d2.min(axis=1) / novelty_threshold
    if novelty is not None and power > 0:
        temperature = temperature * np.maximum(novelty, 1.0) ** power
    probs = calibrated_probs(d2, precision.shape[0], dof, temperature)
    return Signals(probs, novelty, distance_margin(d2), features, precision)


def batch_signals(
    head: Solved | None, cfg: DeviceConfig, scores: np.ndarray, features: np.ndarray | None
) -> Signals:
    """The signals of a batch a device scored: from the streaming ``head`` and the pooled
    ``features`` when it has them, else the softmax of the model's ``scores``."""
    if head is None or features is None:
        return softmax_signals(scores)
    return head_signals(
        scores, features, head.precision, cfg.confidence_dof, cfg.confidence_temperature,
        cfg.novelty_threshold, cfg.confidence_novelty_power,
    )  # fmt: skip


def softmax_signals(logits: np.ndarray) -> Signals:
    """The plain softmax of a model head's logits (no head statistics: no novelty)."""
    return Signals(_softmax(np.asarray(logits, dtype=np.float64)), None)


def novel_share(novelty: np.ndarray | None) -> float | None:
    """The share of windows beyond the novelty threshold (None without novelty)."""
    return None if novelty is None or len(novelty) == 0 else float((novelty > 1.0).mean())


def fit_novelty_threshold(
    features: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    shrinkage: float,
    seed: int,
) -> float:
    """The cloud's novelty threshold: the :data:`NOVELTY_QUANTILE` quantile of each
    source window's smallest squared distance to the class means of a head fitted
    without it (:func:`held_out_sq_distances`), so that the distances are those of
    windows the head has not seen, as on the device."""
    d2 = held_out_sq_distances(features, y, n_classes, shrinkage, seed)
    return float(np.quantile(d2.min(axis=1), NOVELTY_QUANTILE))


def held_out_sq_distances(
    features: np.ndarray, y: np.ndarray, n_classes: int, shrinkage: float, seed: int
) -> np.ndarray:
    """Each window's squared Mahalanobis distances ``(n, K)`` to the class means of a head
    fitted on the other :data:`NOVELTY_FOLDS` - 1 folds (folds drawn from ``seed``)."""
    x = np.asarray(features, dtype=np.float64)
    if len(x) < NOVELTY_FOLDS:
        raise QCoreError(f"novelty threshold needs at least {NOVELTY_FOLDS} windows, got {len(x)}")
    fold = np.random.default_rng([seed, 0x40E1]).permutation(len(x)) % NOVELTY_FOLDS
    out = np.empty((len(x), n_classes))
    for k in range(NOVELTY_FOLDS):
        held = fold == k
        stats = batch_stats(x[~held], y[~held], n_classes)
        weight, bias = solve(stats, shrinkage)
        scores = logits(weight, bias, x[held])
        out[held] = sq_distances(scores, x[held], precision(stats, shrinkage))
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)
