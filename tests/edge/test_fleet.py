"""Pooling a fleet's streaming heads: the statistics algebra and `qcore fleet merge`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import edge_kit as B
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcore.cli import main
from qcore.edge.artifact import encode_artifact, load_artifact, save_artifact
from qcore.edge.device import Device
from qcore.edge.fleet import merge_fleet, weigh_as
from qcore.edge.head import HeadStats, batch_stats, combine, grow, subtract, update
from qcore.edge.infer import forward_features
from qcore.edge.state import ARTIFACT_KEY, save_state
from qcore.errors import QCoreError


def features(n: int, seed: int, d: int = 5, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    return (rng.normal(size=(n, d)) + 3.0 * np.eye(k, d)[y]).astype(np.float32), y


def assert_stats_close(got: HeadStats, want: HeadStats) -> None:
    for part in ("count", "mean", "scatter", "learnt"):
        a, b = getattr(got, part).astype(np.float64), getattr(want, part).astype(np.float64)
        scale = max(1.0, float(np.abs(b).max(initial=0.0)))
        assert np.abs(a - b).max(initial=0.0) <= 1e-5 * scale, part


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=5), st.randoms(use_true_random=False))
def test_combined_parts_equal_one_computation_whatever_the_split_and_order(sizes, rnd) -> None:
    x, y = features(sum(sizes), rnd.randrange(1000))
    cuts = np.cumsum(sizes)[:-1]
    parts = [
        batch_stats(a, b, 3) for a, b in zip(np.split(x, cuts), np.split(y, cuts), strict=True)
    ]
    rnd.shuffle(parts)
    total = parts[0]
    for part in parts[1:]:
        total = combine(total, part)
    assert_stats_close(total, batch_stats(x, y, 3))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 60), st.integers(1, 60), st.integers(0, 10_000))
def test_subtracting_a_part_gives_back_the_rest(n_a, n_b, seed) -> None:
    x, y = features(n_a + n_b, seed)
    a, b = batch_stats(x[:n_a], y[:n_a], 3), batch_stats(x[n_a:], y[n_a:], 3)
    rest = subtract(batch_stats(x, y, 3), a)
    seen = b.count > 0  # a class the rest lacks has no mean to compare
    np.testing.assert_allclose(rest.count, b.count, atol=1e-4)
    np.testing.assert_allclose(rest.mean[seen], b.mean[seen], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rest.scatter, b.scatter, rtol=1e-4, atol=1e-3)


def test_learnt_classes_keep_their_own_scatter_through_the_algebra() -> None:
    x, y = features(90, 3, k=4)
    base = grow(batch_stats(x[y < 3], y[y < 3], 3), 4)  # class 3: learnt
    one = update(base, x[:40], y[:40])
    two = update(base, x[40:], y[40:])
    both = update(base, x, y)
    assert_stats_close(combine(one, subtract(two, base)), both)
    with pytest.raises(QCoreError, match="different classes"):
        combine(base, batch_stats(x, y, 4))
    with pytest.raises(QCoreError, match="do not contain the part"):
        subtract(base, both)


@pytest.fixture(scope="module")
def fleet(tiny_model, tiny_xy):
    """A deployed streaming-head artifact and three devices, each streamed its own part
    of the data (device 2 also learns a class by name); and one device that saw it all."""
    X, y = tiny_xy
    art = B.small_artifact(tiny_model, X[:30], y[:30])
    stats = batch_stats(forward_features(art.model, X[:30])[1], y[:30], 3)
    device = art.device.replace(head="slda", flip_steps=0, bn_mode="frozen", reset_window=0)
    art = replace(art, head=stats, device=device)
    names = np.array(B.CLASSES)[y].astype(object)
    names[54:] = "extra"  # a class the fleet learns
    parts = [np.arange(30, 38), np.arange(38, 46), np.r_[46:54, 54:60]]
    devices, everything = [], Device(art, allow_new_classes=True)
    for idx in parts:
        dev = Device(art, allow_new_classes=True)
        for half in np.array_split(idx, 2):
            dev.step(X[half], names[half].astype(str), normalized=True)
        devices.append(dev)
    for idx in parts[::-1]:  # another order, other batches
        everything.step(X[idx], names[idx].astype(str), normalized=True)
    return art, [d.art for d in devices], everything.art, X


def test_the_merged_head_is_that_of_one_device_that_saw_every_window(fleet) -> None:
    art, states, everything, X = fleet
    for order in ([0, 1, 2], [2, 0, 1]):
        merged = merge_fleet(art, [states[i] for i in order])
        assert merged.class_names == (*B.CLASSES, "extra") and merged.step == 0
        assert merged.runtime == {}
        assert merged.head is not None and everything.head is not None
        assert_stats_close(merged.head, everything.head)
        np.testing.assert_array_equal(
            Device(merged).predict(X, normalized=True),
            Device(everything).predict(X, normalized=True),
        )


def test_the_deployed_statistics_count_once(fleet) -> None:
    art, states, _, _ = fleet
    assert art.head is not None
    alone = merge_fleet(art, [art, art])  # devices that learnt nothing add nothing
    assert alone.head is not None
    assert_stats_close(alone.head, art.head)
    merged = merge_fleet(art, states)
    assert merged.head is not None
    added = sum(float(s.head.count.sum() - art.head.count.sum()) for s in states if s.head)
    assert merged.head.count.sum() == pytest.approx(art.head.count.sum() + added, rel=1e-6)


def test_states_that_cannot_be_merged_exactly_are_refused_by_name(fleet) -> None:
    art, states, _, _ = fleet
    moved = replace(states[0], runtime={**states[0].runtime, "backbone_moved": True})
    with pytest.raises(QCoreError, match="^dev-a: its backbone moved"):
        merge_fleet(art, [moved], ["dev-a"])
    other = replace(states[1], runtime={**states[1].runtime, ARTIFACT_KEY: "0" * 64})
    with pytest.raises(QCoreError, match="^dev-b grew from another artifact"):
        merge_fleet(art, [states[0], other], ["dev-a", "dev-b"], "f" * 64)
    with pytest.raises(QCoreError, match="streaming head statistics"):
        merge_fleet(art, [replace(states[0], head=None, class_names=B.CLASSES)], ["dev-c"])
    with pytest.raises(QCoreError, match="at least one device state"):
        merge_fleet(art, [])


def test_fleet_merge_command_writes_a_deployable_artifact(fleet, tmp_path, capsys) -> None:
    art, states, everything, X = fleet
    deployed = tmp_path / "model.qcore"
    save_artifact(deployed, art)
    sha = hashlib.sha256(deployed.read_bytes()).hexdigest()
    paths = []
    for i, state in enumerate(states):
        paths.append(tmp_path / f"s{i}.qcore")
        save_state(paths[-1], replace(state, runtime={**state.runtime, ARTIFACT_KEY: sha}))
    out = tmp_path / "fleet.qcore"
    merge = ["fleet", "merge", *map(str, paths), "--deployed", str(deployed), "--out", str(out)]
    assert main([*merge, "--weight", "pooled"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["merged"] == 3 and line["classes"][-1] == "extra"
    merged = load_artifact(out)
    assert merged.head is not None and everything.head is not None
    assert_stats_close(merged.head, everything.head)
    assert main(merge) == 0  # by default the merge weighs as the deployed statistics
    capsys.readouterr()
    light = load_artifact(out)
    assert light.head is not None and art.head is not None
    assert light.head.count.sum() == pytest.approx(float(art.head.count.sum()), rel=1e-5)
    assert main([*merge, "--weight", "pooled"]) == 0
    capsys.readouterr()
    # a refused merge writes nothing, and leaves an earlier output as it was
    before = out.read_bytes()
    bad = tmp_path / "bad.qcore"
    save_state(bad, replace(states[0], runtime={**states[0].runtime, ARTIFACT_KEY: "0" * 64}))
    args = ["fleet", "merge", str(paths[0]), str(bad), "--deployed", str(deployed)]
    assert main([*args, "--out", str(out)]) == 2
    assert f"{bad} grew from another artifact" in capsys.readouterr().err
    assert out.read_bytes() == before and encode_artifact(merged) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_classes_learnt_on_devices_are_aligned_by_name(fleet) -> None:
    art, _, _, X = fleet
    labels = np.array(B.CLASSES)[np.arange(60) % 3].astype(object)
    zz = labels.copy()
    zz[30:35] = "zz"
    both = labels.copy()
    both[54:60], both[30:35] = "extra", "zz"
    batches_p = [(np.arange(30, 38), zz)]
    batches_q = [(np.arange(54, 60), both), (np.arange(30, 38), both)]  # "extra", then "zz"
    p, q = Device(art, allow_new_classes=True), Device(art, allow_new_classes=True)
    ref = Device(art, allow_new_classes=True)
    for dev, stream in ((p, batches_p), (q, batches_q)):
        for idx, names in stream:
            dev.step(X[idx], names[idx].astype(str), normalized=True)
            ref.step(X[idx], names[idx].astype(str), normalized=True)
    assert q.art.class_names[-2:] == ("extra", "zz")
    merged = merge_fleet(art, [p.art, q.art])
    assert merged.class_names == ref.art.class_names == (*B.CLASSES, "zz", "extra")
    assert merged.head is not None and ref.art.head is not None
    assert_stats_close(merged.head, ref.art.head)


def test_weighing_keeps_every_prediction_and_sets_the_total(fleet) -> None:
    art, states, _, X = fleet
    merged = merge_fleet(art, states)
    assert art.head is not None and merged.head is not None
    light = weigh_as(merged, float(art.head.count.sum()))
    assert light.head is not None
    assert light.head.count.sum() == pytest.approx(float(art.head.count.sum()), rel=1e-6)
    np.testing.assert_allclose(light.head.mean, merged.head.mean)
    ratio = light.head.scatter / np.where(merged.head.scatter == 0, 1, merged.head.scatter)
    np.testing.assert_allclose(
        ratio[merged.head.scatter != 0], light.head.count[0] / merged.head.count[0], rtol=1e-4
    )
    np.testing.assert_array_equal(
        Device(light).predict(X, normalized=True), Device(merged).predict(X, normalized=True)
    )
    with pytest.raises(QCoreError, match="total count > 0"):
        weigh_as(merged, 0.0)
    assert merged.head.n_learnt == 1  # "extra": its own scatter is scaled alike
    half = weigh_as(merged, 0.5 * float(merged.head.count.sum()))
    assert half.head is not None
    np.testing.assert_allclose(half.head.learnt, 0.5 * merged.head.learnt, rtol=1e-5, atol=1e-6)
    assert weigh_as(merged, 0.5).head is not None  # a total under one window is a total


def test_subtracting_takes_out_a_learnt_classs_own_scatter_and_refuses_a_larger_part() -> None:
    x, y = features(120, 4, k=4)
    base = grow(batch_stats(x[y < 3], y[y < 3], 3), 4)
    one = update(base, x[:50], y[:50])
    both = update(one, x[50:], y[50:])
    rest = subtract(both, one)  # both parts hold learnt class 3
    assert rest.learnt.any()
    assert_stats_close(combine(one, rest), both)
    np.testing.assert_array_equal(subtract(one, one).mean, 0.0)  # nothing left: no mean
    with pytest.raises(QCoreError, match="^these statistics do not contain the part to take out$"):
        subtract(one, both)
    with pytest.raises(QCoreError, match="do not contain the part"):
        subtract(one, replace(one, count=one.count * 1.5))
    # a count a little above (float32 rounding of weighted counts) is no error
    over = replace(one, count=one.count + 0.01)
    assert subtract(one, over).count.max() == 0.0


def test_a_merge_starts_the_new_artifact_afresh_and_keeps_the_deployed_core(fleet) -> None:
    art, states, _, _ = fleet
    used = replace(art, step=7, runtime={"resets": 2})
    merged = merge_fleet(used, states)
    assert merged.step == 0 and merged.runtime == {} and merged.core is art.core
    moved = replace(states[0], runtime={**states[0].runtime, "backbone_moved": True})
    with pytest.raises(QCoreError, match="^state 2: its backbone moved .* merged exactly$"):
        merge_fleet(art, [states[1], moved])
    with pytest.raises(QCoreError, match="2 states need as many names, got 1"):
        merge_fleet(art, states[:2], ["a"])
    other = replace(states[0], class_names=("x", "y", "z"))
    with pytest.raises(
        QCoreError, match=r"does not start from the deployed classes \(low, mid, high\)"
    ):
        merge_fleet(art, [other], ["dev"])


def test_a_merge_interrupted_while_writing_leaves_no_partial_artifact(
    fleet, tmp_path, monkeypatch, capsys
) -> None:
    import qcore.core.fileio as fileio

    art, states, _, _ = fleet
    deployed, paths = tmp_path / "model.qcore", []
    save_artifact(deployed, art)
    for i, state in enumerate(states):
        paths.append(tmp_path / f"s{i}.qcore")
        save_state(paths[-1], state)
    out = tmp_path / "fleet.qcore"
    out.write_bytes(b"an earlier merge")

    def cut(fd: int) -> None:  # Ctrl-C after the bytes are written, before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(fileio.os, "fsync", cut)
    args = ["fleet", "merge", *map(str, paths), "--deployed", str(deployed), "--out", str(out)]
    assert main(args) == 130
    assert "interrupted" in capsys.readouterr().err
    assert out.read_bytes() == b"an earlier merge"  # the old file, whole
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
