"""The by-name entry point."""

import numpy as np
import pytest

from qcore.data.registry import DATASETS, load_dataset
from qcore.errors import QCoreError


def test_names():
    assert DATASETS == ("hapt", "watch", "usc-had", "dsads", "npz", "synthetic")


def test_unknown_name_lists_valid_ones():
    with pytest.raises(QCoreError, match="valid names: hapt, watch, usc-had, dsads, npz"):
        load_dataset("mnist")


@pytest.mark.parametrize("name", ["dsads", "npz"])
def test_path_required(name):
    with pytest.raises(QCoreError, match="needs a path"):
        load_dataset(name)


def test_synthetic_and_npz(tmp_path):
    a = load_dataset("synthetic", seed=1)
    np.testing.assert_array_equal(a.X, load_dataset("synthetic", seed=1).X)
    with pytest.raises(QCoreError, match="takes no path"):
        load_dataset("synthetic", path=tmp_path)
    np.savez(tmp_path / "d.npz", X=np.zeros((2, 1, 3)), y=np.array([0, 1]))
    assert load_dataset("npz", tmp_path / "d.npz").name == "npz"


def test_watch_default():
    ds = load_dataset("watch")
    assert ds.domain_kind == "side" and len(ds) == 3605


def test_missing_uschad_path(tmp_path):
    with pytest.raises(QCoreError, match="USC-HAD folder not found"):
        load_dataset("usc-had", tmp_path / "nope")
