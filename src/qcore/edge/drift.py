"""The drift detectors of the ``drift`` policy (NumPy-free, deterministic).

The device sees labels only when it calibrates, but it always sees its own predictions.
With a streaming head and a novelty threshold it watches the share of novel windows in
each batch (:mod:`qcore.edge.signals`) with :class:`NoveltyTrigger`: a world it knows
keeps that share near 5%, a drifted one far above. Without them it watches the batch's
mean confidence with a Page-Hinkley test, :class:`PageHinkley`.

:class:`NoveltyTrigger` has two levels. It enters drift when a batch's novel share
reaches ``enter`` and stays in drift, calibrating on every batch, while the share stays
above ``leave``: a head that has learnt one batch of a new world finds the next ones far
less novel, long before it has learnt all it can from them.

Page-Hinkley (Page 1954; Hinkley 1971), one-sided for a *decrease* of the mean:

    mean_t = running mean of x_1..x_t
    m_t    = alpha * m_{t-1} + (mean_t - x_t - delta)     (rises while x sits below its mean)
    M_t    = min(m_1..m_t)
    fire   when t >= min_samples and m_t - M_t > threshold

``delta`` is the magnitude of change tolerated (noise allowance per sample), ``threshold``
(lambda) the evidence needed to fire, ``alpha`` a forgetting factor for the cumulative sum
(1.0 = none). After firing the detector resets, so the post-drift level becomes the new
reference. Nothing is random: the same stream gives the same decisions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from qcore.errors import QCoreError


@dataclass
class NoveltyTrigger:
    """Calibrate while the world is new: enter drift at a novel share of ``enter`` or
    more, leave it at ``leave`` or less. ``active``: in drift (persisted with the state)."""

    enter: float
    leave: float
    active: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.leave < self.enter <= 1.0:
            raise QCoreError(
                f"drift_release ({self.leave}) must lie below drift_share ({self.enter}), "
                "both in [0, 1]"
            )
        if not isinstance(self.active, bool):
            raise QCoreError(f"novelty trigger's active must be true or false, got {self.active!r}")

    def update(self, share: float) -> bool:
        """Add one batch's novel share; True when the device should calibrate on it."""
        if not 0.0 <= share <= 1.0:
            raise QCoreError(f"a novel share lies in [0, 1], got {share}")
        self.active = share > self.leave if self.active else share >= self.enter
        return self.active

    def to_dict(self) -> dict[str, Any]:
        """The running state (the levels are settings): ``{"active": bool}``."""
        return {"active": self.active}


@dataclass
class PageHinkley:
    """One-sided Page-Hinkley detector for a drop in the mean of a scalar stream.

    Defaults suit batch-mean confidences in ``[0, 1]``: a sustained drop of 0.1 fires
    within about 3 batches, one of 0.2 or more at once (after ``min_samples``), and a
    stationary stream with a batch-to-batch standard deviation of 0.02 (``delta`` is about
    one such deviation) essentially never fires.
    """

    delta: float = 0.02
    threshold: float = 0.15
    alpha: float = 1.0
    min_samples: int = 5
    # running state (persisted with the device state, so a resumed device continues exactly)
    n: int = field(default=0)
    mean: float = field(default=0.0)
    cum: float = field(default=0.0)
    cum_min: float = field(default=0.0)

    def __post_init__(self) -> None:
        for name in ("delta", "threshold", "alpha", "mean", "cum", "cum_min"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise QCoreError(f"Page-Hinkley {name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise QCoreError(f"Page-Hinkley {name} must be finite, got {value}")
        if self.delta < 0 or self.threshold <= 0:
            raise QCoreError("Page-Hinkley needs delta >= 0 and threshold > 0")
        if not 0.0 < self.alpha <= 1.0:
            raise QCoreError(f"Page-Hinkley alpha must lie in (0, 1], got {self.alpha}")
        for name in ("min_samples", "n"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise QCoreError(f"Page-Hinkley {name} must be an integer >= 0, got {value!r}")

    def update(self, x: float) -> bool:
        """Add one value; True when a drop is detected (the detector then resets)."""
        x = float(x)
        if not math.isfinite(x):
            raise QCoreError(f"Page-Hinkley input must be finite, got {x}")
        self.n += 1
        self.mean += (x - self.mean) / self.n
        self.cum = self.alpha * self.cum + (self.mean - x - self.delta)
        self.cum_min = min(self.cum_min, self.cum)
        fired = self.n >= self.min_samples and self.cum - self.cum_min > self.threshold
        if fired:
            self.reset()
        return fired

    def reset(self) -> None:
        """Forget the reference level (parameters are kept)."""
        self.n, self.mean, self.cum, self.cum_min = 0, 0.0, 0.0, 0.0

    def to_dict(self) -> dict[str, Any]:
        """Parameters and running state as a JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> PageHinkley:
        """Inverse of :meth:`to_dict`; rejects unknown keys and bad values."""
        if not isinstance(d, dict):
            raise QCoreError("Page-Hinkley state must be a mapping")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise QCoreError(f"unknown Page-Hinkley fields: {', '.join(sorted(unknown))}")
        return cls(**d)


Detector = NoveltyTrigger | PageHinkley
