"""What leaves a device of a fleet: its learnt head statistics, optionally private.

A share is what one device learnt beyond the deployed statistics
(:func:`qcore.edge.fleet.learnt_part`), as sums: per class the window count ``n_c`` and the
feature sum ``s_c``, and over all windows the second moment ``Q = Σ x xᵀ`` (optional: a
share may send counts and sums alone). A *centred* share sums each window's deviation
``x - μ_y`` from the deployed mean of its class instead (:func:`centres`; the server holds
the deployed artifact, so it adds the centres back). Nothing else is written: no window,
no feature vector, no prediction. An observer of a share learns those sums (a class's
count and mean, the pooled second moment) and, from them, nothing that singles out one
window beyond what the sums reveal; with one window per class the mean is that window's
features, which is why a share can be made private.

**Differential privacy.** Every window's features (or, for a centred share, their
deviation from the window's centre) must have L2 norm at most ``C`` before they join the
statistics (:func:`clip_norms`; a device with ``share_clip = C`` clips around the origin).
Measured in units of ``C`` (sums over ``C``, ``Q`` over ``C²``), adding or removing one
window then moves each part of the release by at most 1 in L2 norm (1 in one count,
``|x| / C <= 1`` in one class sum, ``|x xᵀ|_F / C² <= 1`` in ``Q``): the release's L2
sensitivity is ``Δ = sqrt(p)``, ``p`` the number of parts sent (3, or 2 without ``Q``).
A private share adds Gaussian noise of standard deviation ``z Δ`` to every count and to
every scaled sum and entry of ``Q`` (the upper triangle, mirrored): the Gaussian
mechanism, with the noise multiplier ``z`` that the privacy accountant of the
``dp-accounting`` library gives for one release at ``(epsilon, delta)``
(:func:`noise_multiplier`). Back in the features' units the noise is ``z Δ`` on a count,
``z Δ C`` on a sum and ``z Δ C²`` on ``Q``. The unit protected is one window: a share is
``(epsilon, delta)``-private with respect to adding or removing any single labelled window
of the device; a device's whole share is not hidden (its size and classes are visible),
and a device that sends several shares spends its budget on each. The centres are public
(in the deployed artifact), so centring costs no privacy. The server adds the fleet's
noisy sums first and turns the totals into statistics once (:func:`pooled_stats`: counts
at least 0, the scatter made positive semi-definite; post-processing, no privacy cost).
NumPy only, but for :func:`noise_multiplier`.
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qcore.core.fileio import read_regular_file, write_atomic
from qcore.edge.head import HeadStats
from qcore.errors import QCoreError

SHARE_KEYS = ("count", "sums", "second", "classes", "deployed", "privacy", "centred")


def clip_norms(
    features: np.ndarray, clip: float | None, centre: np.ndarray | None = None
) -> np.ndarray:
    """``features`` ``(n, D)`` with each row's deviation from its ``centre`` row (``(n,
    D)``; None: the origin) scaled to L2 norm at most ``clip`` (None: as they are)."""
    if clip is None:
        return features
    x = np.asarray(features, dtype=np.float64)
    at = np.zeros_like(x) if centre is None else np.asarray(centre, dtype=np.float64)
    norms = np.linalg.norm(x - at, axis=1, keepdims=True)
    scale = np.minimum(1.0, clip / np.maximum(norms, 1e-30))
    return (at + (x - at) * scale).astype(features.dtype)


def noise_multiplier(epsilon: float, delta: float) -> float:
    """The smallest Gaussian noise multiplier ``z`` (to 1e-3) whose single release is
    ``(epsilon, delta)``-private by the RDP accountant of ``dp-accounting``."""
    if not (epsilon > 0 and 0 < delta < 1):
        raise QCoreError(f"privacy needs epsilon > 0 and 0 < delta < 1, got {epsilon}, {delta}")
    try:
        from dp_accounting import dp_event
        from dp_accounting.rdp import rdp_privacy_accountant
    except ImportError:
        raise QCoreError(
            "a private share needs dp-accounting: pip install 'qcore[privacy]'"
        ) from None

    def spent(z: float) -> float:
        acc = rdp_privacy_accountant.RdpAccountant()
        acc.compose(dp_event.GaussianDpEvent(z))
        return float(acc.get_epsilon(delta))

    lo, hi = 1e-3, 1.0
    while spent(hi) > epsilon:
        lo, hi = hi, 2 * hi
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if spent(mid) > epsilon else (lo, mid)
    return hi


@dataclass(frozen=True)
class Share:
    """One device's share: ``count`` ``(K,)``, class ``sums`` ``(K, D)``, the ``second``
    moment ``(D, D)`` (``(0, 0)`` when not sent), all float64, its ``classes`` (names), the
    SHA-256 of the ``deployed`` artifact it grew from ("" unknown), its ``privacy`` (empty,
    or ``epsilon``, ``delta``, ``clip``, ``sigma``: the noise's standard deviation on a
    count, ``sigma C`` on a sum, ``sigma C²`` on the second moment) and whether the sums
    and second moment are ``centred``: of each window's deviation from the deployed mean
    of its class (a class the deployed artifact lacks: from the origin)."""

    count: np.ndarray
    sums: np.ndarray
    second: np.ndarray
    classes: tuple[str, ...]
    deployed: str = ""
    privacy: tuple[float, ...] = ()
    centred: bool = False

    @property
    def nbytes(self) -> int:
        """Bytes of the statistics as float32 (what a device sends)."""
        return 4 * (self.count.size + self.sums.size + self.second.size)


def centres(deployed: HeadStats, n_classes: int) -> np.ndarray:
    """The public centres of ``n_classes`` classes ``(K, D)`` float64: the deployed class
    means, zero for the classes the deployed statistics lack."""
    out = np.zeros((n_classes, deployed.n_features))
    out[: deployed.n_classes] = deployed.mean.astype(np.float64)
    return out


def make_share(
    part: HeadStats,
    classes: tuple[str, ...],
    deployed: str = "",
    privacy: tuple[float, float, float] | None = None,
    seed: int = 0,
    centre: np.ndarray | None = None,
    second: bool = True,
) -> Share:
    """The share of a learnt ``part`` (its classes named ``classes``): counts, class sums
    and, with ``second``, the second moment; with ``centre`` (``(K, D)``, see
    :func:`centres`) of the windows' deviations from their class's centre. With
    ``privacy`` ``(epsilon, delta, clip)``, made private (the module docstring) with noise
    drawn from ``seed``; the part must then come from windows clipped to ``clip`` (around
    the same centres)."""
    n = part.count.astype(np.float64)
    dev = part.mean.astype(np.float64) - (0.0 if centre is None else centre)
    sums = dev * n[:, None]
    moment = part.scatter.astype(np.float64) + sums.T @ dev if second else np.zeros((0, 0))
    centred = centre is not None
    if privacy is None:
        return Share(n, sums, moment, tuple(classes), deployed, (), centred)
    epsilon, delta, clip = privacy
    sigma = noise_multiplier(epsilon, delta) * math.sqrt(3.0 if second else 2.0)
    rng = np.random.default_rng([seed, 0x5A4E])
    upper = np.triu(rng.normal(0.0, sigma * clip**2, moment.shape))
    moment = moment + upper + np.triu(upper, 1).T
    n = n + rng.normal(0.0, sigma, n.shape)
    sums = sums + rng.normal(0.0, sigma * clip, sums.shape)
    return Share(n, sums, moment, tuple(classes), deployed, (epsilon, delta, clip, sigma), centred)


def pooled_stats(shares: Sequence[Share], deployed: HeadStats, classes: Sequence[str]) -> HeadStats:
    """The statistics of the windows behind ``shares``, over ``classes`` (every share's
    classes among them; the first ones the ``deployed`` statistics'): the shares' sums
    added first (noise and all: post-processing), then turned into statistics once. Noisy
    sums are made valid statistics: a class with a total count below 0.5 is empty, the
    scatter is made positive semi-definite. Shares without a second moment take the
    deployed within-class covariance for their windows; centred ones get the centres
    added back."""
    forms = {(s.centred, s.second.size > 0) for s in shares}
    if len(forms) != 1:
        raise QCoreError("shares to pool must all be centred or not, all with or without a "
                         "second moment")  # fmt: skip
    centred, with_second = forms.pop()
    k, d = len(classes), deployed.n_features
    count, sums, moment = np.zeros(k), np.zeros((k, d)), np.zeros((d, d))
    for share in shares:
        at = [list(classes).index(c) for c in share.classes]
        count[at] += share.count
        sums[at] += share.sums
        if with_second:
            moment += share.second
    count = np.maximum(count, 0.0)
    seen = count > 0.5
    dev = np.where(seen[:, None], sums / np.where(seen, count, 1.0)[:, None], 0.0)
    mean = np.where(seen[:, None], dev + (centres(deployed, k) if centred else 0.0), 0.0)
    count = np.where(seen, count, 0.0)
    if with_second:
        scatter = moment - (dev * count[:, None]).T @ dev
        values, vectors = np.linalg.eigh((scatter + scatter.T) / 2)
        scatter = (vectors * np.maximum(values, 0.0)) @ vectors.T
    else:
        scatter = deployed.scatter.astype(np.float64) * (count.sum() / float(deployed.count.sum()))
    return HeadStats(count, mean, scatter)


def save_share(path: str | Path, share: Share) -> None:
    """Write ``share`` to ``path`` atomically (a NumPy ``.npz`` of plain arrays)."""
    buf = io.BytesIO()
    np.savez(
        buf, count=share.count, sums=share.sums, second=share.second,
        classes=np.array(share.classes, dtype=str), deployed=np.array(share.deployed),
        privacy=np.array(share.privacy, dtype=np.float64), centred=np.array(share.centred),
    )  # fmt: skip
    write_atomic(path, buf.getvalue())


def load_share(path: str | Path) -> Share:
    """The share at ``path``, checked (no pickled object is ever read)."""
    data = read_regular_file(path, "share")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            # shares written before centred ones existed lack the flag: not centred
            arrays = {"centred": np.array(False)} | {k: z[k] for k in SHARE_KEYS if k in z}
            arrays = {k: arrays[k] for k in SHARE_KEYS}
    except (ValueError, OSError, KeyError, zipfile.BadZipFile) as exc:
        raise QCoreError(f"{path} is not a fleet share: {exc}") from None
    count, sums, second = (arrays[k].astype(np.float64) for k in ("count", "sums", "second"))
    k, d = sums.shape if sums.ndim == 2 else (-1, -1)
    arrays_ok = second.shape in ((d, d), (0, 0)) and arrays["classes"].shape == (k,)
    arrays_ok = arrays_ok and count.shape == (k,) and arrays["centred"].shape == ()
    if not arrays_ok or not all(np.isfinite(a).all() for a in (count, sums, second)):
        raise QCoreError(f"{path}: a fleet share's arrays disagree or are not finite")
    classes = tuple(str(c) for c in arrays["classes"])
    privacy = tuple(float(v) for v in arrays["privacy"])
    centred = bool(arrays["centred"])
    return Share(count, sums, second, classes, str(arrays["deployed"]), privacy, centred)
