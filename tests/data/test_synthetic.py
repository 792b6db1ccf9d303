"""Synthetic data: shape, determinism, and a real (learnable but shifted) domain gap."""

import numpy as np
import pytest

from qcore.data.synthetic import make_synthetic
from qcore.errors import QCoreError


def _nearest_centroid_acc(X_tr, y_tr, X_te, y_te) -> float:
    a = X_tr.reshape(len(X_tr), -1)
    b = X_te.reshape(len(X_te), -1)
    centroids = np.stack([a[y_tr == k].mean(axis=0) for k in np.unique(y_tr)])
    pred = ((b[:, None, :] - centroids[None]) ** 2).sum(axis=-1).argmin(axis=1)
    return float((pred == y_te).mean())


def test_shape_and_labels():
    ds = make_synthetic(n_domains=3, n_per_class=5, n_classes=2, n_channels=4, n_timepoints=16)
    assert ds.X.shape == (30, 4, 16) and ds.X.dtype == np.float32
    assert ds.domains == (0, 1, 2) and ds.n_classes == 2
    assert np.bincount(ds.y).tolist() == [15, 15]


def test_deterministic_for_a_seed():
    a, b, c = make_synthetic(seed=3), make_synthetic(seed=3), make_synthetic(seed=4)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.X, c.X)


def test_single_channel_works():
    assert make_synthetic(n_channels=1, n_per_class=2).X.shape[1] == 1


def test_domains_learnable_but_shifted():
    ds = make_synthetic(seed=0)
    idx = np.random.default_rng(0).permutation(np.flatnonzero(ds.domain == 0))
    train, held_out = idx[:128], idx[128:]
    other = ds.domain == 1
    acc_same = _nearest_centroid_acc(ds.X[train], ds.y[train], ds.X[held_out], ds.y[held_out])
    acc_other = _nearest_centroid_acc(ds.X[train], ds.y[train], ds.X[other], ds.y[other])
    assert acc_same >= 0.85  # learnable: chance is 0.25
    assert acc_other <= acc_same - 0.2  # clearly shifted


@pytest.mark.parametrize(
    "kw", [{"n_classes": 1}, {"n_domains": 0}, {"n_timepoints": 4}, {"n_per_class": 2.5}]
)
def test_bad_sizes(kw):
    with pytest.raises(QCoreError, match="make_synthetic"):
        make_synthetic(**kw)
