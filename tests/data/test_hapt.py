"""HAPT: the restricted unpickler and the measured window counts of the bundled recordings."""

import gzip
import io
import os
import pickle

import numpy as np
import pytest

from qcore.data.hapt import HAPT_GLOBALS, NUMPY_GLOBALS, load_hapt, restricted_load
from qcore.errors import QCoreError


class _Evil:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_unpickler_refuses_forbidden_global_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Evil(f"echo hi > {marker}"), protocol=2)
    with pytest.raises(QCoreError, match="forbidden global"):
        restricted_load(io.BytesIO(payload), HAPT_GLOBALS)
    assert not marker.exists()


def test_load_hapt_refuses_forbidden_pickle_file(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "HAPT.pkl.gz"
    with gzip.open(bad, "wb") as f:
        pickle.dump({1: [_Evil(f"touch {marker}")]}, f, protocol=2)
    with pytest.raises(QCoreError, match="forbidden global"):
        load_hapt(bad)
    assert not marker.exists()


def test_unpickler_round_trips_numpy_and_rejects_garbage():
    arr = np.arange(12, dtype=np.float64).reshape(3, 4)
    out = restricted_load(io.BytesIO(pickle.dumps({"a": arr}, protocol=2)), NUMPY_GLOBALS)
    np.testing.assert_array_equal(out["a"], arr)
    with pytest.raises(QCoreError, match="cannot unpickle"):
        restricted_load(io.BytesIO(b"\x80\x02garbage"), NUMPY_GLOBALS)


def test_missing_file(tmp_path):
    with pytest.raises(QCoreError, match="not found"):
        load_hapt(tmp_path / "nope.pkl.gz")


def test_unexpected_layout(tmp_path):
    bad = tmp_path / "HAPT.pkl.gz"
    with gzip.open(bad, "wb") as f:
        pickle.dump({1: [{"not": "a frame"}]}, f, protocol=2)
    with pytest.raises(QCoreError, match="unexpected recording layout"):
        load_hapt(bad)


@pytest.mark.slow
def test_hapt_measured_counts():
    ds = load_hapt()
    assert ds.X.shape == (10017, 6, 128)
    assert ds.X.dtype == np.float32
    assert ds.n_classes == 6 and ds.class_names[0] == "WALKING"
    assert ds.domains == tuple(range(1, 31))
    counts = ds.info()["domain_counts"]
    assert counts[1] == 336 and counts[4] == 301
    assert np.bincount(ds.y).tolist() == [1660, 1468, 1317, 1736, 1926, 1910]
    # sanity of channel order: acc in g (gravity ~1 on average), gyro in rad/s (mean ~0)
    acc_norm = np.linalg.norm(ds.X[:, :3].mean(axis=2), axis=1)
    assert 0.9 < np.median(acc_norm) < 1.1
    assert abs(float(ds.X[:, 3:].mean())) < 0.05
