"""USC-HAD: a tiny fixture tree in the original layout, and the measured counts of the real set."""

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from qcore.data.uschad import find_uschad_root, load_uschad
from qcore.errors import QCoreError


def _write_trial(root: Path, subject: int, activity: int, trial: int, n: int, **extra) -> None:
    folder = root / f"Subject{subject}"
    folder.mkdir(parents=True, exist_ok=True)
    readings = np.full((n, 6), subject * 100 + activity, dtype=np.float64)
    fields = {"sensor_readings": readings, "activity_number": str(activity), **extra}
    scipy.io.savemat(folder / f"a{activity}t{trial}.mat", fields)


def test_fixture_tree(tmp_path):
    _write_trial(tmp_path, 2, 10, 1, 1250)  # 2 windows (250 samples dropped)
    _write_trial(tmp_path, 2, 2, 1, 500)  # 1 window
    _write_trial(tmp_path, 10, 1, 3, 499)  # too short: no window
    _write_trial(tmp_path, 10, 12, 2, 1000, activity_numbr="12")  # field typo is harmless
    (tmp_path / "Readme.txt").write_text("not a subject")
    ds = load_uschad(tmp_path)
    assert ds.X.shape == (5, 6, 500)
    # numeric order: Subject2 before Subject10, a2 before a10
    assert ds.domain.tolist() == [2, 2, 2, 10, 10]
    assert ds.y.tolist() == [1, 9, 9, 11, 11]
    assert ds.X[:, 0, 0].tolist() == [202, 210, 210, 1012, 1012]
    assert ds.n_classes == 12


def test_errors(tmp_path):
    with pytest.raises(QCoreError, match="folder not found"):
        load_uschad(tmp_path / "missing")
    with pytest.raises(QCoreError, match="no USC-HAD trials"):
        load_uschad(tmp_path)
    folder = tmp_path / "Subject1"
    folder.mkdir()
    scipy.io.savemat(folder / "a1t1.mat", {"readings": np.zeros((600, 6))})
    with pytest.raises(QCoreError, match="no 'sensor_readings'"):
        load_uschad(tmp_path)
    scipy.io.savemat(folder / "a1t1.mat", {"sensor_readings": np.zeros((600, 5))})
    with pytest.raises(QCoreError, match=r"a1t1.mat: sensor_readings shape"):
        load_uschad(tmp_path)
    (folder / "a1t1.mat").write_bytes(b"not a mat file")
    with pytest.raises(QCoreError, match="a1t1.mat"):
        load_uschad(tmp_path)


def _real_root() -> Path:
    try:
        return find_uschad_root()
    except QCoreError:
        pytest.skip("USC-HAD not found (not bundled: a fresh clone has no copy of it)")


@pytest.mark.slow
def test_real_counts():
    ds = load_uschad(_real_root())
    assert ds.X.shape == (5353, 6, 500)
    assert ds.domains == tuple(range(1, 15)) and ds.n_classes == 12
    per_subject = [373, 325, 250, 298, 257, 298, 247, 398, 503, 479, 507, 521, 494, 403]
    assert list(ds.info()["domain_counts"].values()) == per_subject
    assert np.bincount(ds.y).tolist() == [
        737,
        492,
        523,
        396,
        365,
        324,
        187,
        523,
        472,
        750,
        292,
        292,
    ]
