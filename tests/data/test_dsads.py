"""DSADS: a tiny fixture tree in the original aNN/pN/sNN.txt layout, and malformed files."""

from pathlib import Path

import numpy as np
import pytest

from qcore.data.dsads import load_dsads
from qcore.errors import QCoreError


def _write_segment(root: Path, a: int, p: int, s: int, value: float, cols: int = 45) -> Path:
    folder = root / f"a{a:02d}" / f"p{p}"
    folder.mkdir(parents=True, exist_ok=True)
    rows = value + np.arange(125)[:, None] + np.zeros((1, cols))
    path = folder / f"s{s:02d}.txt"
    np.savetxt(path, rows, delimiter=",", fmt="%.4f")
    return path


def _tree(root: Path) -> None:
    for a in (1, 2, 19):
        for p in (1, 8):
            for s in (1, 2):
                _write_segment(root, a, p, s, value=1000 * a + 100 * p + s)


def test_fixture_tree(tmp_path):
    _tree(tmp_path)
    ds = load_dsads(tmp_path)
    assert ds.X.shape == (12, 45, 125)
    assert ds.n_classes == 19 and ds.domains == (1, 8)
    assert ds.y.tolist() == [0] * 4 + [1] * 4 + [18] * 4
    assert ds.domain.tolist() == [1, 1, 8, 8] * 3
    # transposed: channel-major, time along the last axis
    np.testing.assert_allclose(ds.X[0, :, 0], 1101.0)
    np.testing.assert_allclose(ds.X[0, 0], 1101.0 + np.arange(125))


def test_wrong_column_count_names_the_file(tmp_path):
    _tree(tmp_path)
    _write_segment(tmp_path, 2, 8, 1, value=0.0, cols=44)
    with pytest.raises(QCoreError, match=r"a02/p8/s01\.txt has shape \(125, 44\)"):
        load_dsads(tmp_path)


def test_ragged_and_non_numeric_files(tmp_path):
    _tree(tmp_path)
    bad = tmp_path / "a01" / "p1" / "s02.txt"
    bad.write_text("1,2,3\n4,5\n")
    with pytest.raises(QCoreError, match=r"s02\.txt is malformed"):
        load_dsads(tmp_path)
    bad.write_text("a,b,c\n")
    with pytest.raises(QCoreError, match=r"s02\.txt is malformed"):
        load_dsads(tmp_path)


def test_missing_and_empty(tmp_path):
    with pytest.raises(QCoreError, match="folder not found"):
        load_dsads(tmp_path / "nope")
    with pytest.raises(QCoreError, match="no DSADS segments"):
        load_dsads(tmp_path)
    _write_segment(tmp_path, 20, 1, 1, value=0.0)
    with pytest.raises(QCoreError, match="activity 20"):
        load_dsads(tmp_path)
