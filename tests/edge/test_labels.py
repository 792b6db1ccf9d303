"""Labels as a device receives them (qcore.edge.labels.read_labels)."""

import numpy as np
import pytest

from qcore.edge.labels import UNLABELLED, read_labels
from qcore.errors import QCoreError

NAMES = ("walk", "sit", "run")


def test_text_labels_are_class_names_and_empty_text_is_unlabelled():
    idx, new = read_labels(np.array(["run", "", "walk", "sit", ""]), NAMES)
    assert idx.dtype == np.int64 and new == ()
    assert idx.tolist() == [2, UNLABELLED, 0, 1, UNLABELLED]
    assert UNLABELLED == -1


def test_integer_labels_are_class_indices_when_they_are_not_names():
    idx, new = read_labels(np.array([2, -1, 0, 1, 2]), NAMES)
    assert idx.dtype == np.int64 and new == ()
    assert idx.tolist() == [2, UNLABELLED, 0, 1, 2]


def test_an_integer_whose_text_is_a_class_name_is_read_as_that_name():
    # raw labels -1/1 as training saw them: -1 is a class here, not "unlabelled"
    idx, _ = read_labels(np.array([1, -1, -1, 1]), ("-1", "1"))
    assert idx.tolist() == [1, 0, 0, 1]
    # names win over indices: the value 0 is the class named "0", at index 1
    idx, _ = read_labels(np.array([0, 2, 1]), ("2", "0", "1"))
    assert idx.tolist() == [1, 0, 2]
    # -1 stays "unlabelled" when it is no class name, also next to named integers
    idx, _ = read_labels(np.array([5, -1, 7]), ("7", "5"))
    assert idx.tolist() == [1, UNLABELLED, 0]


def test_new_names_become_new_classes_in_order_of_first_appearance():
    y = np.array(["jump", "walk", "", "swim", "jump", "run"])
    idx, new = read_labels(y, NAMES, allow_new=True)
    assert new == ("jump", "swim")
    assert idx.tolist() == [3, 0, UNLABELLED, 4, 3, 2]
    idx, new = read_labels(np.array([9, -1, 0]), ("0",), allow_new=True)
    assert new == ("9",) and idx.tolist() == [1, UNLABELLED, 0]


def test_with_new_classes_allowed_integers_are_names_not_indices():
    """An integer that is no class name is a new class only when it cannot be read as the
    index of a known one (the flag must not change what a batch means)."""
    with pytest.raises(QCoreError, match="label 0 is no class name but reads as the index"):
        read_labels(np.array([1, 0]), NAMES, allow_new=True)
    idx, new = read_labels(np.array([5, 3]), NAMES, allow_new=True)
    assert new == ("5", "3") and idx.tolist() == [3, 4]


def test_known_labels_alone_add_no_class():
    idx, new = read_labels(np.array(["sit", "sit"]), NAMES, allow_new=True)
    assert new == () and idx.tolist() == [1, 1]


@pytest.mark.parametrize(
    "y",
    [np.array([0, 3, 1]), np.array([-2, 0]), np.array(["walk", "fly"])],
    ids=["index-past-the-end", "negative-index", "unknown-name"],
)
def test_an_unknown_label_is_an_error_naming_what_was_expected(y):
    with pytest.raises(QCoreError) as err:
        read_labels(y, NAMES)
    assert str(err.value).endswith(
        "are neither class names (walk, sit, run) nor class indices 0..2 "
        "(a new class needs allow_new_classes)"
    )


def test_the_error_names_at_most_three_unknown_labels_sorted():
    y = np.array(["e", "d", "walk", "c", "b", "a", ""])
    with pytest.raises(QCoreError, match=r"batch labels a, b, c are neither"):
        read_labels(y, NAMES)


def test_float_labels_are_rejected():
    with pytest.raises(QCoreError, match="integer or text labels, got float64"):
        read_labels(np.array([0.0, 1.0]), NAMES)


def test_bytes_labels_are_read_as_text():
    idx, new = read_labels(np.array([b"sit", b"", b"walk"]), NAMES)
    assert new == () and idx.tolist() == [1, -1, 0]
