"""A small synthetic multi-domain dataset: fast, deterministic, learnable yet domain-shifted.

Used by tests and smoke runs where no real data is needed. Each class has a template per
channel (a class-specific sinusoid plus a class-placed bump); each domain applies its own
sensor drift (a partial rotation mixing the channels, per-channel gain and offset, and its
own noise level), the kind of shift a new wearer or device placement causes.
"""

from __future__ import annotations

import numpy as np

from qcore.core.rng import as_generator
from qcore.data.dataset import Dataset
from qcore.errors import QCoreError


def _class_templates(
    rng: np.random.Generator, n_classes: int, n_channels: int, t: np.ndarray
) -> np.ndarray:
    """Noise-free class patterns, float64 ``(n_classes, n_channels, n_timepoints)``."""
    k = np.arange(n_classes)[:, None, None]
    freq = 1.0 + 0.3 * k + rng.uniform(0.0, 0.5, size=(n_classes, n_channels, 1))
    phase = rng.uniform(0.0, 2.0 * np.pi, size=(n_classes, n_channels, 1))
    centre = 0.15 + 0.7 * k / max(n_classes - 1, 1)
    sign = rng.choice([-1.0, 1.0], size=(n_classes, n_channels, 1))
    bump = sign * 0.5 * np.exp(-0.5 * ((t - centre) / 0.06) ** 2)
    return np.sin(2.0 * np.pi * freq * t + phase) + bump


def _rotation(rng: np.random.Generator, n_channels: int, angle: float) -> np.ndarray:
    """A rotation ``(C, C)`` by ``angle`` radians about a random plane mix (identity if C=1)."""
    import scipy.linalg  # here, not at import: `import qcore.data` stays NumPy only

    g = rng.normal(size=(n_channels, n_channels))
    skew = g - g.T
    norm = np.linalg.norm(skew, 2)
    if norm == 0.0:
        return np.eye(n_channels)
    return scipy.linalg.expm(angle * skew / norm)


def make_synthetic(
    n_domains: int = 4,
    n_per_class: int = 40,
    n_classes: int = 4,
    n_channels: int = 3,
    n_timepoints: int = 64,
    seed: int = 0,
) -> Dataset:
    """Synthetic windows: X float32 (n_domains*n_classes*n_per_class, C, T), domains 0..D-1.

    Cases are ordered by domain, then class. The same ``seed`` gives identical arrays. With
    the defaults a nearest-centroid classifier on flattened windows scores ~0.8-1.0 within a
    domain and ~0.35-0.9 (median ~0.7) on another one: learnable, yet clearly shifted.
    """
    sizes = {
        "n_domains": (n_domains, 1),
        "n_per_class": (n_per_class, 1),
        "n_classes": (n_classes, 2),
        "n_channels": (n_channels, 1),
        "n_timepoints": (n_timepoints, 8),
    }
    for key, (value, low) in sizes.items():
        if int(value) != value or value < low:
            raise QCoreError(f"make_synthetic: {key} must be an integer >= {low}, got {value}")
    rng = as_generator(seed)
    t = np.arange(n_timepoints) / n_timepoints
    templates = _class_templates(rng, n_classes, n_channels, t)
    y_dom = np.repeat(np.arange(n_classes), n_per_class)
    xs, ys, ds = [], [], []
    for d in range(n_domains):
        rot = _rotation(rng, n_channels, rng.uniform(0.8, 1.2))
        gain = rng.uniform(0.5, 2.0, size=(n_channels, 1))
        offset = rng.normal(0.0, 0.7, size=(n_channels, 1))
        noise = rng.uniform(1.5, 2.5)
        amp = rng.uniform(0.8, 1.2, size=(len(y_dom), 1, 1))
        shift = rng.integers(-3, 4, size=len(y_dom))
        # circular time shift per case (np.roll semantics): out[t] = template[(t - s) % T]
        when = (np.arange(n_timepoints)[None, :] - shift[:, None]) % n_timepoints
        clean = np.take_along_axis(templates[y_dom], when[:, None, :], axis=2)
        x = amp * clean + noise * rng.normal(size=clean.shape)
        x = gain * np.einsum("ij,njt->nit", rot, x) + offset
        xs.append(x)
        ys.append(y_dom)
        ds.append(np.full(len(y_dom), d, dtype=np.int64))
    return Dataset(
        name="synthetic",
        X=np.concatenate(xs).astype(np.float32),
        y=np.concatenate(ys).astype(np.int64),
        domain=np.concatenate(ds),
        class_names=tuple(f"class{k}" for k in range(n_classes)),
        domain_kind="subject",
    )
