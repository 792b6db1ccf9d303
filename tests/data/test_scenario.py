"""Scenarios: disjoint splits, source-only normalisation, equal stream batches, determinism."""

import numpy as np
import pytest

from qcore.data.dataset import Dataset
from qcore.data.scenario import Normalizer, label_mask, make_scenario
from qcore.data.synthetic import make_synthetic
from qcore.errors import QCoreError


@pytest.fixture(scope="module")
def ds() -> Dataset:
    # a per-case id in channel 0, time 0 lets the tests trace rows back after normalisation
    base = make_synthetic(n_domains=3, n_per_class=25, n_classes=4, n_timepoints=32, seed=1)
    X = base.X.copy()
    X[:, 0, 0] = np.arange(len(X))
    return Dataset("traced", X, base.y, base.domain + 5, base.class_names)


def _ids(split_X, norm):
    return np.rint(split_X[:, 0, 0] * norm.std[0] + norm.mean[0]).astype(int)


def test_splits_disjoint_and_cover_each_domain(ds):
    sc = make_scenario(ds, source=5, target=7, n_batches=8, seed=0)
    n = sc.normalizer
    for dom, tr, te in ((5, sc.source_train, sc.source_test), (7, sc.target_train, sc.target_test)):
        ids_tr, ids_te = _ids(tr.X, n), _ids(te.X, n)
        assert not set(ids_tr) & set(ids_te)
        assert sorted([*ids_tr, *ids_te]) == np.flatnonzero(ds.domain == dom).tolist()
        assert len(te) == 20 and len(tr) == 80  # 20 % of 100
        np.testing.assert_array_equal(ds.y[ids_tr], tr.y)
    assert sc.n_classes == 4 and sc.class_names == ds.class_names
    assert (sc.dataset, sc.source, sc.target) == ("traced", 5, 7)


def test_normalizer_fitted_on_source_train_only(ds):
    sc = make_scenario(ds, source=5, target=6, seed=2)
    X = sc.source_train.X
    assert X.dtype == np.float32
    np.testing.assert_allclose(X.mean(axis=(0, 2))[1:], 0.0, atol=1e-4)
    np.testing.assert_allclose(X.std(axis=(0, 2)), 1.0, atol=1e-4)
    raw = ds.X[ds.domain == 6]
    assert not np.allclose(sc.normalizer.mean, raw.mean(axis=(0, 2)), atol=1e-2)
    assert sc.normalizer.mean.shape == (3,) and sc.normalizer.mean.dtype == np.float32


def test_stream_batches(ds):
    sc = make_scenario(ds, source=5, target=7, n_batches=7, seed=0)
    assert len(sc.stream) == 7
    assert {len(b) for b in sc.stream} == {80 // 7}
    stream_ids = np.concatenate([_ids(b.X, sc.normalizer) for b in sc.stream])
    assert len(set(stream_ids)) == len(stream_ids) == 7 * (80 // 7)
    assert set(stream_ids) <= set(_ids(sc.target_train.X, sc.normalizer))
    assert all(b.X.dtype == np.float32 for b in sc.stream)


def test_deterministic_and_split_independent_of_other_domains(ds):
    a = make_scenario(ds, source=5, target=7, seed=4)
    b = make_scenario(ds, source=5, target=7, seed=4)
    c = make_scenario(ds, source=6, target=7, seed=4)
    d = make_scenario(ds, source=5, target=7, seed=5)
    for sa, sb in zip(a.stream, b.stream, strict=True):
        np.testing.assert_array_equal(sa.X, sb.X)
    np.testing.assert_array_equal(a.source_test.X, b.source_test.X)
    # the target split only depends on (seed, target), not on the source
    assert (
        _ids(a.target_test.X, a.normalizer).tolist() == _ids(c.target_test.X, c.normalizer).tolist()
    )
    assert set(_ids(a.target_test.X, a.normalizer)) != set(_ids(d.target_test.X, d.normalizer))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"source": 4, "target": 7}, r"source subject 4 is not in .* available: \[5, 6, 7\]"),
        ({"source": 5, "target": 99}, r"target subject 99 .* available"),
        ({"source": "x", "target": 7}, "available"),
        ({"source": 5, "target": 5}, "must differ"),
        ({"source": 5, "target": 7, "n_batches": 41}, "too few for 41 batches"),
        ({"source": 5, "target": 7, "n_batches": 0}, "positive integer"),
        ({"source": 5, "target": 7, "test_fraction": 1.0}, "test_fraction"),
        ({"source": 5, "target": 7, "test_fraction": 0.001}, "too few for a train/test split"),
    ],
)
def test_errors(ds, kw, match):
    with pytest.raises(QCoreError, match=match):
        make_scenario(ds, **kw)


def test_normalizer_round_trip_and_errors():
    X = np.random.default_rng(0).normal(3.0, 2.0, size=(10, 2, 8)).astype(np.float32)
    X[:, 1] = 4.0  # a constant channel must not divide by zero
    n = Normalizer.fit(X)
    assert n.std[1] == 1.0
    m = Normalizer.from_dict(n.to_dict())
    np.testing.assert_array_equal(m.apply(X), n.apply(X))
    with pytest.raises(QCoreError, match="channels"):
        n.apply(np.zeros((1, 3, 8), dtype=np.float32))
    with pytest.raises(QCoreError, match="'mean' and 'std'"):
        Normalizer.from_dict({"mean": [0.0]})
    with pytest.raises(QCoreError, match="positive"):
        Normalizer(mean=np.zeros(2), std=np.array([1.0, 0.0]))


@pytest.mark.parametrize(
    ("fraction", "n", "labelled"),
    [
        (0.0, 10, 0),
        (0.04, 10, 0),
        (0.06, 10, 1),
        (0.14, 10, 1),
        (0.16, 10, 2),
        (0.29, 10, 3),  # 2.9 windows: to the nearest, not down
        (0.5, 10, 5),
        (0.71, 10, 7),
        (0.96, 10, 10),
        (1.0, 10, 10),
        (0.3, 1, 0),
        (0.7, 1, 1),
        (0.99, 44, 44),  # 43.56
        (0.01, 44, 0),
    ],
)
def test_label_mask_labels_the_nearest_whole_number_of_windows(fraction, n, labelled):
    mask = label_mask(n, fraction, seed=3, step=1)
    assert mask.dtype == np.bool_ and mask.shape == (n,)
    assert int(mask.sum()) == labelled


def test_label_mask_is_drawn_from_seed_step_and_its_own_stream():
    # the documented seeding: (seed, step, LABEL_STREAM = 0x1ABE1), the first
    # round(fraction * n) positions of a permutation; and one mask stored as it is
    for seed, step, n, fraction in [(0, 1, 8, 0.5), (7, 3, 20, 0.25), (2, 12, 5, 0.8)]:
        order = np.random.default_rng([seed, step, 0x1ABE1]).permutation(n)
        expected = np.zeros(n, dtype=bool)
        expected[order[: round(fraction * n)]] = True
        np.testing.assert_array_equal(label_mask(n, fraction, seed, step), expected)
    assert label_mask(8, 0.5, 0, 1).astype(int).tolist() == [1, 0, 0, 1, 0, 1, 0, 1]
    # another step or another seed draws other windows; the same ones, the same windows
    masks = {label_mask(40, 0.5, s, t).tobytes() for s in (0, 1) for t in (1, 2)}
    assert len(masks) == 4
    np.testing.assert_array_equal(label_mask(40, 0.5, 1, 2), label_mask(40, 0.5, 1, 2))
