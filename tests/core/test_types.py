import numpy as np
import pytest

from qcore.core.rng import as_generator
from qcore.core.types import Batch, validate_xy
from qcore.errors import QCoreError


@pytest.mark.parametrize(
    ("X", "y", "msg"),
    [
        (np.zeros((2, 3)), None, "rank 2"),
        (np.zeros((2, 3, 4), dtype=np.int64), None, "floating"),
        (np.full((2, 3, 4), np.nan), None, "NaN"),
        (np.zeros((0, 3, 4)), None, "empty"),
        (np.zeros((2, 3, 4)), np.zeros(3, dtype=int), "3 labels"),
        (np.zeros((2, 3, 4)), np.zeros(2), "integer"),
    ],
)
def test_validate_xy_names_the_problem(X, y, msg):
    with pytest.raises(QCoreError, match=msg):
        validate_xy(X, y)


def test_batch_and_rng():
    b = Batch(np.zeros((3, 2, 5), np.float32), np.array([0, 1, 0]))
    assert len(b) == 3
    assert as_generator(3).integers(100) == as_generator(3).integers(100)
    with pytest.raises(ValueError, match="seed"):
        as_generator(None)
