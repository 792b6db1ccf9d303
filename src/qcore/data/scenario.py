"""A cross-domain scenario: train on a source domain, calibrate on a stream from a target one.

Each domain is split 80/20 into train/test on its own (a generator seeded from
``(seed, domain)``), so the split of a domain never depends on which others exist. The
target's train part becomes the calibration stream. Everything is normalised with
per-channel statistics of the source train split alone: the deployed model never sees
target statistics up front.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from qcore.core.rng import as_generator
from qcore.core.types import Batch, validate_xy
from qcore.data.dataset import Dataset
from qcore.errors import QCoreError


@dataclass(frozen=True)
class Split:
    """Windows ``X`` float32 ``(n, C, T)`` with labels ``y`` int64 ``(n,)``."""

    X: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        validate_xy(self.X, self.y, what="split")

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class Normalizer:
    """Per-channel standardisation; ``mean`` and ``std`` float32 ``(n_channels,)``."""

    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        if mean.ndim != 1 or mean.shape != std.shape:
            raise QCoreError(f"normalizer: mean {mean.shape} and std {std.shape} must be (C,)")
        if not (np.isfinite(mean).all() and np.isfinite(std).all()) or (std <= 0).any():
            raise QCoreError("normalizer: mean must be finite and std finite and positive")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @classmethod
    def fit(cls, X: np.ndarray) -> Normalizer:
        """Statistics over cases and time of ``X`` ``(n, C, T)``; a constant channel gets std 1."""
        validate_xy(X, what="normalizer fit")
        mean = X.mean(axis=(0, 2), dtype=np.float64)
        std = X.std(axis=(0, 2), dtype=np.float64)
        std = np.where(std < 1e-8, 1.0, std)  # avoid dividing by ~0 on a flat channel
        return cls(mean=mean, std=std)

    def apply(self, X: np.ndarray) -> np.ndarray:
        """``(X - mean) / std`` per channel, as a new float32 array of X's shape ``(n, C, T)``."""
        if not isinstance(X, np.ndarray) or X.ndim != 3:
            raise QCoreError("normalizer: X must be an array of shape (n, C, T)")
        if X.shape[1] != self.mean.shape[0]:
            raise QCoreError(
                f"normalizer: X has {X.shape[1]} channels, fitted on {self.mean.shape[0]}"
            )
        out = (X - self.mean[None, :, None]) / self.std[None, :, None]
        return out.astype(np.float32, copy=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalizer:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(d, dict) or "mean" not in d or "std" not in d:
            raise QCoreError("normalizer: dict needs 'mean' and 'std'")
        return cls(mean=np.asarray(d["mean"]), std=np.asarray(d["std"]))


@dataclass(frozen=True)
class Scenario:
    """Source/target splits and the target stream, all normalised with ``normalizer``."""

    dataset: str
    source: int
    target: int
    source_train: Split
    source_test: Split
    target_train: Split
    target_test: Split
    stream: tuple[Batch, ...]
    normalizer: Normalizer
    n_classes: int
    class_names: tuple[str, ...]


def _domain_split(
    ds: Dataset, domain: int, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) case indices of one domain, in a random order fixed by (seed, domain)."""
    idx = np.flatnonzero(ds.domain == domain)
    # SeedSequence entropy must be non-negative: fold both ints into 64-bit words.
    entropy = [int(seed) & 0xFFFFFFFFFFFFFFFF, int(domain) & 0xFFFFFFFFFFFFFFFF]
    rng = as_generator(np.random.default_rng(np.random.SeedSequence(entropy)))
    idx = rng.permutation(idx)
    n_test = int(round(test_fraction * len(idx)))
    if n_test < 1 or n_test >= len(idx):
        raise QCoreError(
            f"domain {domain} has {len(idx)} cases: too few for a train/test split "
            f"with test_fraction={test_fraction}"
        )
    return idx[n_test:], idx[:n_test]


def _check_domain(ds: Dataset, domain: int, role: str) -> int:
    """``domain`` as an int if ``ds`` has it, else a QCoreError listing the ones it has."""
    try:
        ok = int(domain) == domain and int(domain) in ds.domains
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise QCoreError(
            f"{role} {ds.domain_kind} {domain!r} is not in dataset {ds.name!r}; "
            f"available: {list(ds.domains)}"
        )
    return int(domain)


def make_scenario(
    ds: Dataset,
    source: int,
    target: int,
    n_batches: int = 10,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Scenario:
    """Split ``source`` and ``target`` domains, fit the normaliser, cut the target stream.

    The stream is the target train split shuffled with ``seed`` and cut into ``n_batches``
    batches of ``len(target_train) // n_batches`` cases (the remainder is dropped, so all
    batches are equally sized).
    """
    source = _check_domain(ds, source, "source")
    target = _check_domain(ds, target, "target")
    if source == target:
        raise QCoreError(f"source and target must differ, both are {source}")
    if int(n_batches) != n_batches or n_batches < 1:
        raise QCoreError(f"n_batches must be a positive integer, got {n_batches!r}")
    if not 0.0 < test_fraction < 1.0:
        raise QCoreError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    s_train, s_test = _domain_split(ds, source, test_fraction, seed)
    t_train, t_test = _domain_split(ds, target, test_fraction, seed)
    batch = len(t_train) // int(n_batches)
    if batch < 2:
        raise QCoreError(
            f"target {target} has {len(t_train)} train cases: too few for {n_batches} "
            f"batches of at least 2"
        )
    norm = Normalizer.fit(ds.X[s_train])

    def split(idx: np.ndarray) -> Split:
        return Split(X=norm.apply(ds.X[idx]), y=ds.y[idx])

    order = as_generator(seed).permutation(t_train)
    stream = tuple(
        Batch(X=norm.apply(ds.X[b]), y=ds.y[b])
        for b in order[: batch * int(n_batches)].reshape(int(n_batches), batch)
    )
    return Scenario(
        dataset=ds.name,
        source=source,
        target=target,
        source_train=split(s_train),
        source_test=split(s_test),
        target_train=split(t_train),
        target_test=split(t_test),
        stream=stream,
        normalizer=norm,
        n_classes=ds.n_classes,
        class_names=ds.class_names,
    )


LABEL_STREAM = 0x1ABE1  # third seed word of the label masks, apart from the device's draws


def label_mask(n: int, fraction: float, seed: int, step: int) -> np.ndarray:
    """Which of a stream batch's ``n`` windows reach the device with their label: bool
    ``(n,)`` with ``round(fraction * n)`` True, drawn by a generator seeded by
    ``(seed, step, LABEL_STREAM)`` (``step`` 1-based), so every method of a run sees the
    same labels."""
    k = int(round(fraction * n))
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng([seed, step, LABEL_STREAM]).permutation(n)[:k]] = True
    return mask


@dataclass(frozen=True)
class HeldOut:
    """Classes held out of the cloud (its training, core and head statistics): the stream
    brings them to the device as new classes. ``known``: the data's indices of the
    classes the cloud sees, in order (the model's class ``k`` is the data's
    ``known[k]``); ``held``: those it never sees."""

    known: np.ndarray
    held: np.ndarray

    def cloud_split(self, split: Split) -> Split:
        """The windows of ``split`` whose class the cloud sees, labelled as the model."""
        keep = np.isin(split.y, self.known)
        model_index = np.full(int(max(self.known.max(), self.held.max())) + 1, -1)
        model_index[self.known] = np.arange(len(self.known))
        return Split(split.X[keep], model_index[split.y[keep]].astype(np.int64))

    def to_data(self, predicted: np.ndarray) -> np.ndarray:
        """The model's class indices as the data's."""
        return self.known[predicted]


def held_out(spec: str, class_names: tuple[str, ...] | list[str]) -> HeldOut | None:
    """The classes named (or indexed) in the comma-separated ``spec``, or None if empty."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        return None
    index = {n: k for k, n in enumerate(class_names)}
    held = []
    for n in names:
        if n in index:
            held.append(index[n])
        elif n.isdigit() and int(n) < len(class_names):
            held.append(int(n))
        else:
            raise QCoreError(
                f"setting new_classes: {n!r} is neither a class name ({', '.join(class_names)}) "
                f"nor an index 0..{len(class_names) - 1}"
            )
    held_arr = np.array(sorted(set(held)), dtype=np.int64)
    known = np.array([k for k in range(len(class_names)) if k not in held], dtype=np.int64)
    if len(known) < 2:
        raise QCoreError("setting new_classes must leave the cloud at least two classes")
    return HeldOut(known, held_arr)
