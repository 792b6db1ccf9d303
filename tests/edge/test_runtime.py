"""The device's typed runtime state: old forms read, new form written, consumed ids bounded."""

from __future__ import annotations

import hashlib
import json

import pytest

from qcore.edge import runtime as rt
from qcore.edge.runtime import CONSUMED_LIMIT, GuardRecord, Runtime, id_key
from qcore.errors import QCoreError


def test_records_of_three_count_the_least_disagreement_they_allow() -> None:
    assert GuardRecord.from_list([10, 13, 20]) == GuardRecord(10, 13, 20, 0, 3)
    assert GuardRecord.from_list([15, 12, 20]) == GuardRecord(15, 12, 20, 3, 0)
    assert GuardRecord.from_list([10, 13, 20, 1, 4]).to_list() == [10, 13, 20, 1, 4]
    for bad in ([1, 2], [1, 2, 3, 4], [1, -2, 3], [1.0, 2, 3], [True, 2, 3], "abc", None):
        with pytest.raises(QCoreError, match="guard record"):
            GuardRecord.from_list(bad)


def test_an_old_runtime_reads_and_is_written_in_the_new_form() -> None:
    old = {
        "recent": [[10, 13, 20], [12, 11, 20, 3, 2]],
        "resets": 2,
        "drift": {"n": 3},
        "consumed": ["a", "b"],
        "artifact_sha256": "abc",  # another module's key: kept as it is
    }
    r = Runtime.from_dict(old, step=7)
    assert r.recent == (GuardRecord(10, 13, 20, 0, 3), GuardRecord(12, 11, 20, 3, 2))
    assert (r.resets, r.drift, r.consumed) == (2, {"n": 3}, ("a", "b"))
    assert r.backbone_moved is True  # not said: a device that took steps may have moved
    assert Runtime.from_dict({}, step=0).backbone_moved is False
    assert Runtime.from_dict({"backbone_moved": False}, step=7).backbone_moved is False
    out = r.to_dict()
    assert out["recent"] == [[10, 13, 20, 0, 3], [12, 11, 20, 3, 2]]
    assert out["artifact_sha256"] == "abc" and out["backbone_moved"] is True
    assert Runtime.from_dict(json.loads(json.dumps(out)), step=0) == r  # round trip
    assert Runtime.from_dict({}, step=0).to_dict() == {"resets": 0, "backbone_moved": False}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("recent", {"a": 1}),
        ("recent", [[1, 2]]),
        ("consumed", "abc"),
        ("consumed", [1, 2]),
        ("resets", -1),
        ("resets", "2"),
        ("backbone_moved", 1),
        ("drift", [1, 2]),
    ],
)
def test_a_malformed_runtime_is_refused(key: str, value: object) -> None:
    with pytest.raises(QCoreError, match="runtime"):
        Runtime.from_dict({key: value}, step=1)


def test_a_return_to_the_deployed_model_restarts_the_record() -> None:
    r = Runtime(recent=(GuardRecord(1, 2, 3, 0, 1),), resets=1, backbone_moved=True)
    back = r.returned()
    assert back.recent == () and back.resets == 2 and back.backbone_moved is False
    assert "recent" not in back.to_dict()
    window = Runtime().record(GuardRecord(1, 1, 1, 0, 0), 2).record(GuardRecord(2, 2, 2, 0, 0), 2)
    assert window.record(GuardRecord(3, 3, 3, 0, 0), 2).recent == (
        GuardRecord(2, 2, 2, 0, 0),
        GuardRecord(3, 3, 3, 0, 0),
    )


def test_a_replay_within_the_limit_is_refused_and_the_record_never_grows_past_it() -> None:
    r = Runtime()
    for i in range(3 * CONSUMED_LIMIT):
        r = r.consume(f"batch-{i}")
        assert len(r.consumed) <= CONSUMED_LIMIT
    last = 3 * CONSUMED_LIMIT - 1
    assert r.has_consumed(f"batch-{last}")  # the newest
    assert r.has_consumed(f"batch-{last - CONSUMED_LIMIT + 1}")  # the oldest remembered
    assert not r.has_consumed(f"batch-{last - CONSUMED_LIMIT}")  # one further back: forgotten
    assert len(r.consumed) == CONSUMED_LIMIT


def test_an_id_consumed_again_moves_to_the_end() -> None:
    r = Runtime().consume("a").consume("b").consume("a")
    assert r.consumed == ("b", "a")


def test_the_state_stays_bounded_whatever_the_ids(monkeypatch) -> None:
    """Long application ids are kept as digests: the header's size has a bound after any
    number of steps, and a long id is still recognised."""
    monkeypatch.setattr(rt, "CONSUMED_LIMIT", 8)
    r = Runtime()
    sizes = []
    for i in range(50):
        r = r.consume(f"{i:04d}" + "x" * 10_000)
        sizes.append(len(json.dumps(r.to_dict())))
    assert max(sizes[8:]) == min(sizes[8:]) < 8 * (rt.ID_MAX_CHARS + 8) + 100
    assert r.has_consumed("0049" + "x" * 10_000) and not r.has_consumed("0041" + "x" * 10_000)
    assert id_key("short") == "short" and len(id_key("y" * 65)) == len("sha256:") + 32


def test_an_old_state_with_every_id_keeps_the_last_ones() -> None:
    ids = [f"{i:016x}" for i in range(CONSUMED_LIMIT + 10)]
    r = Runtime.from_dict({"consumed": ids}, step=len(ids))
    assert r.consumed == tuple(ids[10:])
    assert r.has_consumed(ids[-1]) and not r.has_consumed(ids[9])


def test_ids_up_to_the_limit_are_kept_as_they_are_and_longer_ones_as_digests() -> None:
    at = "y" * rt.ID_MAX_CHARS
    assert id_key(at) == at
    longer = at + "y"
    assert id_key(longer) == "sha256:" + hashlib.sha256(longer.encode()).hexdigest()[:32]


def test_a_state_one_step_old_may_have_moved_its_backbone() -> None:
    assert Runtime.from_dict({}, step=1).backbone_moved is True


def test_the_guards_record_keeps_the_last_window_records_and_none_at_zero() -> None:
    r = Runtime().record(GuardRecord(1, 1, 1, 0, 0), 3)
    assert r.record(GuardRecord(2, 2, 2, 0, 0), 1).recent == (GuardRecord(2, 2, 2, 0, 0),)
    assert r.record(GuardRecord(2, 2, 2, 0, 0), 0).recent == ()
