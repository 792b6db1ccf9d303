"""User npz files: label mapping, defaults and every error case."""

import numpy as np
import pytest

from qcore.data.npz import load_npz
from qcore.errors import QCoreError


def _save(tmp_path, **arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def test_labels_mapped_and_domain_default(tmp_path):
    X = np.random.default_rng(0).normal(size=(5, 2, 7))
    ds = load_npz(_save(tmp_path, X=X, y=np.array([10, -3, 10, 7, 7])))
    assert ds.y.tolist() == [2, 0, 2, 1, 1]
    assert ds.class_names == ("-3", "7", "10")
    assert ds.domain.tolist() == [0] * 5
    assert ds.X.dtype == np.float32 and ds.X.shape == (5, 2, 7)


def test_class_names_and_domain(tmp_path):
    X = np.zeros((4, 1, 3))
    names = np.array(["sit", "stand", "walk"])
    ds = load_npz(
        _save(
            tmp_path,
            X=X,
            y=np.array([0, 2, 2, 0]),
            class_names=names,
            domain=np.array([1, 1, 2, 2]),
        )
    )
    assert ds.n_classes == 3 and ds.y.tolist() == [0, 2, 2, 0]  # "stand" absent but kept
    assert ds.domains == (1, 2)
    ds = load_npz(_save(tmp_path, X=X, y=np.array([5, 9, 9, 5]), class_names=names[:2]))
    assert ds.y.tolist() == [0, 1, 1, 0] and ds.class_names == ("sit", "stand")


def test_string_labels(tmp_path):
    ds = load_npz(_save(tmp_path, X=np.zeros((3, 1, 2)), y=np.array(["b", "a", "b"])))
    assert ds.y.tolist() == [1, 0, 1] and ds.class_names == ("a", "b")


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"y": np.zeros(3, dtype=int)}, "missing array 'X'"),
        ({"X": np.zeros((3, 1, 2))}, "missing array 'y'"),
        ({"X": np.zeros((3, 2)), "y": np.zeros(3, dtype=int)}, "rank 2"),
        ({"X": np.full((3, 1, 2), np.nan), "y": np.zeros(3, dtype=int)}, "NaN"),
        ({"X": np.zeros((3, 1, 2)), "y": np.zeros(4, dtype=int)}, "3 cases but y has 4"),
        ({"X": np.zeros((3, 1, 2)), "y": np.zeros(3)}, "integer"),
        ({"X": np.zeros((3, 1, 2)), "y": np.zeros((3, 1), dtype=int)}, "y must be 1-D"),
        ({"X": np.zeros((0, 1, 2)), "y": np.zeros(0, dtype=int)}, "X is empty"),
        (
            {
                "X": np.zeros((3, 1, 2)),
                "y": np.zeros(3, dtype=int),
                "domain": np.zeros(2, dtype=int),
            },
            "domain has 2",
        ),
        (
            {"X": np.zeros((3, 1, 2)), "y": np.zeros(3, dtype=int), "domain": np.zeros(3)},
            "domain must be a 1-D integer",
        ),
        (
            {
                "X": np.zeros((3, 1, 2)),
                "y": np.array([0, 5, 6]),
                "class_names": np.array(["a", "b"]),
            },
            "2 class_names for 3 distinct",
        ),
        ({"X": np.array([["a"]]), "y": np.zeros(1, dtype=int)}, "rank 2"),
        ({"X": np.array([[["a"]]]), "y": np.zeros(1, dtype=int)}, "numeric"),
    ],
)
def test_errors(tmp_path, arrays, match):
    with pytest.raises(QCoreError, match=match):
        load_npz(_save(tmp_path, **arrays))


def test_pickled_and_missing_files(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, X=np.array([{"a": 1}], dtype=object), y=np.zeros(1, dtype=int))
    with pytest.raises(QCoreError, match="cannot read npz"):
        load_npz(path)
    with pytest.raises(QCoreError, match="not found"):
        load_npz(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(QCoreError, match="cannot read npz"):
        load_npz(tmp_path / "junk.npz")
