"""Watch: measured window counts, domains by side or subject, bad inputs."""

import numpy as np
import pytest

from qcore.data.watch import load_watch
from qcore.errors import QCoreError


def test_watch_by_side():
    ds = load_watch()
    assert ds.X.shape == (3605, 6, 128)
    assert ds.domain_kind == "side" and ds.domains == (0, 1)
    assert ds.info()["domain_counts"] == {0: 1877, 1: 1728}
    assert ds.class_names == ("PEN", "ABD", "FEL", "IR", "ER", "TRAP", "ROW")
    assert np.bincount(ds.y).tolist() == [388, 592, 602, 555, 556, 449, 463]


def test_watch_by_subject():
    ds = load_watch(by="subject")
    assert ds.domain_kind == "subject" and ds.domains == tuple(range(1, 11))
    assert ds.info()["domain_counts"][1] == 433
    assert len(ds) == 3605


def test_watch_errors(tmp_path):
    with pytest.raises(QCoreError, match="'side' or 'subject'"):
        load_watch(by="arm")
    with pytest.raises(QCoreError, match="not found"):
        load_watch(tmp_path / "missing.npy")
    plain = tmp_path / "plain.npy"
    np.save(plain, np.zeros(3))
    with pytest.raises(QCoreError, match="0-d object array"):
        load_watch(plain)
