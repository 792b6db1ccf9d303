"""Dataset validation, dtype coercion and summary."""

import numpy as np
import pytest

from qcore.data.dataset import Dataset
from qcore.errors import QCoreError


def _ds(**kw):
    args = {
        "name": "t",
        "X": np.zeros((6, 2, 5)),
        "y": np.array([0, 1, 2, 0, 1, 2], dtype=np.int32),
        "domain": np.array([3, 3, 3, 7, 7, 7]),
        "class_names": ["a", "b", "c", "d"],
    }
    args.update(kw)
    return Dataset(**args)


def test_coercion_and_properties():
    ds = _ds()
    assert ds.X.dtype == np.float32 and ds.y.dtype == np.int64 and ds.domain.dtype == np.int64
    assert ds.class_names == ("a", "b", "c", "d")
    assert ds.n_classes == 4  # class "d" is absent but still exists
    assert ds.domains == (3, 7) and ds.n_domains == 2
    info = ds.info()
    assert info["n_cases"] == 6 and info["n_channels"] == 2 and info["n_timepoints"] == 5
    assert info["class_counts"] == {"a": 2, "b": 2, "c": 2, "d": 0}
    assert info["domain_counts"] == {3: 3, 7: 3}


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"X": np.zeros((6, 10))}, "rank"),
        ({"X": np.full((6, 2, 5), np.nan)}, "NaN"),
        ({"y": np.array([0, 1, 2, 0, 1, 4])}, "labels must lie"),
        ({"y": np.array([0, 1, 2, 0, 1, -1])}, "labels must lie"),
        ({"y": np.zeros(5, dtype=np.int64)}, "6 cases but y has 5"),
        ({"domain": np.zeros(5, dtype=np.int64)}, "domain has 5"),
        ({"domain": np.zeros(6)}, "domain must be a 1-D integer"),
        ({"class_names": []}, "class_names is empty"),
    ],
)
def test_bad_inputs(kw, match):
    with pytest.raises(QCoreError, match=match):
        _ds(**kw)
