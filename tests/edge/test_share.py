"""What leaves a device of a fleet: shares, their privacy noise, `qcore fleet share`."""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import replace

import edge_kit as B
import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fleet import assert_stats_close, fleet  # noqa: F401  (the fixture)

from qcore.cli import main
from qcore.edge.artifact import load_artifact, save_artifact
from qcore.edge.device import Device
from qcore.edge.fleet import learnt_part, merge_fleet, merge_shares
from qcore.edge.head import batch_stats, update
from qcore.edge.share import (
    SHARE_KEYS,
    Share,
    centres,
    clip_norms,
    load_share,
    make_share,
    noise_multiplier,
    pooled_stats,
    save_share,
)
from qcore.edge.state import save_state
from qcore.errors import QCoreError


def spent(z: float, delta: float) -> float:
    acc = rdp_privacy_accountant.RdpAccountant()
    acc.compose(dp_event.GaussianDpEvent(z))
    return float(acc.get_epsilon(delta))


def test_clipping_scales_long_rows_to_the_bound_and_keeps_short_ones() -> None:
    x = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]], np.float32)
    got = clip_norms(x, 1.0)
    np.testing.assert_allclose(got, [[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]], rtol=1e-6)
    assert got.dtype == np.float32 and clip_norms(x, None) is x
    np.testing.assert_allclose(clip_norms(x[1:2], 0.25), [[0.15, 0.2]], rtol=1e-6)  # below 1


def test_the_noise_multiplier_is_the_accountants_smallest_for_the_budget() -> None:
    z = noise_multiplier(4.0, 1e-5)
    assert spent(z, 1e-5) <= 4.0 < spent(z - 0.002, 1e-5)
    assert noise_multiplier(1.0, 1e-5) > noise_multiplier(8.0, 1e-5)
    for epsilon, delta in ((0.0, 1e-5), (4.0, 0.0), (4.0, 1.0)):
        with pytest.raises(QCoreError, match="epsilon > 0 and 0 < delta < 1"):
            noise_multiplier(epsilon, delta)


def test_noisy_sums_stand_for_valid_statistics() -> None:
    share = make_share(batch_stats(np.eye(4, 2, dtype=np.float32), np.arange(4), 4), tuple("abcd"))
    noisy = Share(np.array([-0.3, 0.4, 0.7, 2.0]), np.ones((4, 2)), np.eye(2) * 5, share.classes)
    stats = pooled_stats([noisy], batch_stats(np.eye(4, 2, dtype=np.float32), np.arange(4), 4),
                         share.classes)  # fmt: skip
    np.testing.assert_allclose(stats.count, [0.0, 0.0, 0.7, 2.0])
    np.testing.assert_allclose(stats.mean, [[0, 0], [0, 0], [1 / 0.7, 1 / 0.7], [0.5, 0.5]])


def test_a_share_without_noise_stands_for_the_part_exactly(fleet) -> None:  # noqa: F811
    art, states, everything, _ = fleet
    shares = []
    for state in states:
        part = learnt_part(art, state)
        shares.append(make_share(part, state.class_names, "abc"))
        assert art.head is not None
        got = pooled_stats([shares[-1]], art.head, state.class_names)
        np.testing.assert_allclose(got.count, part.count, atol=1e-4)
        np.testing.assert_allclose(got.scatter, part.scatter, rtol=1e-4, atol=1e-3)
    merged, direct = merge_shares(art, shares, None, "abc"), merge_fleet(art, states)
    assert merged.class_names == direct.class_names
    assert merged.head is not None and direct.head is not None
    np.testing.assert_allclose(merged.head.count, direct.head.count, rtol=1e-6)
    np.testing.assert_allclose(merged.head.mean, direct.head.mean, rtol=1e-4, atol=1e-4)
    with pytest.raises(QCoreError, match="^share 2 grew from another artifact"):
        merge_shares(art, [shares[0], replace(shares[1], deployed="other")], None, "abc")
    with pytest.raises(QCoreError, match="3 shares need as many names, got 1"):
        merge_shares(art, shares, ["a"])
    with pytest.raises(QCoreError, match="^b does not start from the deployed classes"):
        merge_shares(art, [shares[0], replace(shares[1], classes=("x", "y", "z"))], ["a", "b"])


def test_private_noise_has_the_accountants_scale() -> None:
    rng = np.random.default_rng(0)
    x, y = clip_norms(rng.normal(size=(400, 40)).astype(np.float32), 2.0), rng.integers(0, 3, 400)
    part = batch_stats(x, y, 3)
    exact = make_share(part, ("a", "b", "c"))
    noisy = make_share(part, ("a", "b", "c"), privacy=(4.0, 1e-5, 2.0), seed=1)
    # in units of the clip each part moves by at most 1 per window: L2 sensitivity sqrt(3)
    sigma = noise_multiplier(4.0, 1e-5) * math.sqrt(3)
    assert noisy.privacy == (4.0, 1e-5, 2.0, pytest.approx(sigma))
    upper = np.triu_indices(40)
    diff = (noisy.second - exact.second)[upper] / 2.0**2
    assert abs(diff.std() / sigma - 1) < 0.05 and abs(diff.mean()) < 0.1 * sigma
    np.testing.assert_array_equal(noisy.second, noisy.second.T)
    assert abs((noisy.sums - exact.sums).std() / (sigma * 2.0) - 1) < 0.2
    private = (4.0, 1e-5, 2.0)
    shares = [make_share(part, ("a", "b", "c"), privacy=private, seed=s) for s in range(100)]
    counts = np.concatenate([s.count - exact.count for s in shares])
    assert abs(counts.std() / sigma - 1) < 0.15
    stats = pooled_stats([noisy], part, ("a", "b", "c"))  # valid statistics whatever the noise
    assert (stats.count >= 0).all() and np.linalg.eigvalsh(
        stats.scatter.astype(float)
    ).min() > -1e-3


def test_a_share_file_holds_sums_only_and_a_damaged_one_is_refused(tmp_path) -> None:
    part = batch_stats(np.eye(3, 4, dtype=np.float32), np.array([0, 1, 1]), 2)
    path = tmp_path / "s.npz"
    save_share(path, make_share(part, ("a", "b"), "abc"))
    with np.load(path, allow_pickle=False) as z:
        assert sorted(z.files) == sorted(SHARE_KEYS)
    back = load_share(path)
    assert back.classes == ("a", "b") and back.deployed == "abc" and back.privacy == ()
    with np.load(path, allow_pickle=False) as z:
        older = {k: z[k] for k in z.files if k != "centred"}
    np.savez(tmp_path / "old.npz", **older)  # a share from before centred ones
    assert not load_share(tmp_path / "old.npz").centred
    del older["count"]
    np.savez(tmp_path / "bad.npz", **older)
    with pytest.raises(QCoreError, match="is not a fleet share"):
        load_share(tmp_path / "bad.npz")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(QCoreError, match="is not a fleet share"):
        load_share(path)


def test_a_device_with_share_clip_learns_clipped_windows(fleet) -> None:  # noqa: F811
    art, _, _, X = fleet
    dev = Device(art, art.device.replace(share_clip=0.5))
    dev.step(X[30:38], np.arange(30, 38) % 3, normalized=True)
    from qcore.edge.infer import forward_features

    feats = clip_norms(forward_features(art.model, X[30:38])[1], 0.5)
    assert art.head is not None and dev.art.head is not None
    assert_stats_close(dev.art.head, update(art.head, feats, np.arange(30, 38) % 3))


def test_fleet_share_and_merge_commands(fleet, tmp_path, capsys) -> None:  # noqa: F811
    art, states, _, _ = fleet
    deployed = tmp_path / "model.qcore"
    save_artifact(deployed, art)
    paths = []
    for i, state in enumerate(states):
        save_state(tmp_path / f"s{i}.qcore", state)
        paths.append(tmp_path / f"s{i}.npz")
        assert main(["fleet", "share", str(tmp_path / f"s{i}.qcore"), "--deployed",
                     str(deployed), "--out", str(paths[-1])]) == 0  # fmt: skip
        line = json.loads(capsys.readouterr().out)
        k = len(state.class_names)
        assert line["noise_std"] == 0.0 and line["bytes"] == 4 * (k + k * 16 + 16 * 16)
    out = tmp_path / "fleet.qcore"
    assert (
        main(["fleet", "merge", *map(str, paths), "--deployed", str(deployed), "--out", str(out)])
        == 0
    )
    merged, direct = load_artifact(out), merge_fleet(art, states)
    assert merged.head is not None and direct.head is not None
    np.testing.assert_allclose(merged.head.mean, direct.head.mean, rtol=1e-4, atol=1e-4)
    args = ["fleet", "share", str(tmp_path / "s0.qcore"), "--deployed", str(deployed)]
    assert main([*args, "--out", str(tmp_path / "p.npz"), "--epsilon", "4"]) == 2
    assert "learnt without share_clip" in capsys.readouterr().err
    assert not (tmp_path / "p.npz").exists()
    clipped = replace(states[0], device=states[0].device.replace(share_clip=1.0))
    save_state(tmp_path / "c.qcore", clipped)
    args[2] = str(tmp_path / "c.qcore")
    assert main([*args, "--out", str(tmp_path / "p.npz"), "--epsilon", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["noise_std"] > 0
    mixed = [str(paths[0]), str(tmp_path / "s1.qcore")]
    assert main(["fleet", "merge", *mixed, "--deployed", str(deployed), "--out", str(out)]) == 2
    assert "not both" in capsys.readouterr().err
    assert B.CLASSES[0] in load_artifact(out).class_names


def _release(share: Share, clip: float) -> np.ndarray:
    """A share's release in units of the clip, as one vector."""
    return np.concatenate([share.count, share.sums.ravel() / clip, share.second.ravel() / clip**2])


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 30), st.integers(0, 2), st.booleans(), st.booleans(),
    st.floats(0.1, 10.0), st.integers(0, 10_000),
)  # fmt: skip
def test_one_window_moves_the_scaled_release_by_at_most_its_sensitivity(
    n, label, centred, second, clip, seed
) -> None:
    rng = np.random.default_rng(seed)
    k, d = 3, 6
    centre = rng.normal(size=(k, d)) * 5 if centred else None
    y = rng.integers(0, k, n + 1)
    y[-1] = label
    raw = rng.normal(size=(n + 1, d)) * rng.uniform(0.1, 20.0)
    x = clip_norms(raw, clip, None if centre is None else centre[y])
    with_one = make_share(batch_stats(x, y, k), ("a", "b", "c"), centre=centre, second=second)
    without = make_share(batch_stats(x[:-1], y[:-1], k), ("a", "b", "c"), centre=centre,
                         second=second)  # fmt: skip
    moved = np.linalg.norm(_release(with_one, clip) - _release(without, clip))
    assert moved <= math.sqrt(3 if second else 2) + 1e-4  # the statistics are float32


def test_clipping_around_a_centre_bounds_the_deviation() -> None:
    x = np.array([[13.0, 14.0], [10.3, 10.4]], np.float32)
    got = clip_norms(x, 1.0, np.full((2, 2), 10.0))
    np.testing.assert_allclose(got, [[10.6, 10.8], [10.3, 10.4]], rtol=1e-6)


def test_a_centred_share_without_noise_stands_for_the_part_exactly() -> None:
    rng = np.random.default_rng(3)
    deployed = batch_stats(rng.normal(size=(50, 5)) + 2.0, rng.integers(0, 3, 50), 3)
    x, y = rng.normal(size=(80, 5)) + 1.0, rng.integers(0, 4, 80)  # class 3 is new
    part = batch_stats(x, y, 4)
    share = make_share(part, tuple("abcd"), centre=centres(deployed, 4))
    assert share.centred
    got = pooled_stats([share], deployed, tuple("abcd"))
    np.testing.assert_allclose(got.count, part.count)
    np.testing.assert_allclose(got.mean, part.mean, atol=1e-5)
    np.testing.assert_allclose(got.scatter, part.scatter, atol=1e-4)
    # without the second moment the fleet's windows take the deployed covariance
    means = pooled_stats([make_share(part, tuple("abcd"), second=False)], deployed, tuple("abcd"))
    np.testing.assert_allclose(means.mean, part.mean, atol=1e-5)
    cov = deployed.scatter.astype(float) / float(deployed.count.sum())
    np.testing.assert_allclose(means.scatter, cov * 80, rtol=1e-5)
    with pytest.raises(QCoreError, match="all be centred or not"):
        pooled_stats([share, make_share(part, tuple("abcd"))], deployed, tuple("abcd"))


def test_shares_are_pooled_before_they_become_statistics() -> None:
    rng = np.random.default_rng(4)
    deployed = batch_stats(rng.normal(size=(30, 4)), rng.integers(0, 2, 30), 2)
    a = make_share(batch_stats(rng.normal(size=(20, 4)), rng.integers(0, 2, 20), 2), ("a", "b"))
    noisy = replace(a, count=a.count - np.array([a.count[0] + 0.4, 0.0]))  # class a below 0
    other = make_share(batch_stats(rng.normal(size=(20, 4)), np.zeros(20, int), 2), ("a", "b"))
    got = pooled_stats([noisy, other], deployed, ("a", "b"))
    # the totals, not each share, are clamped: class a keeps 20 - 0.4 windows
    np.testing.assert_allclose(got.count, [19.6, a.count[1]])


def test_the_two_part_share_has_the_accountants_scale_and_round_trips(tmp_path) -> None:
    rng = np.random.default_rng(0)
    x, y = clip_norms(rng.normal(size=(400, 40)), 2.0), rng.integers(0, 3, 400)
    part = batch_stats(x, y, 3)
    exact = make_share(part, ("a", "b", "c"), second=False)
    noisy = make_share(part, ("a", "b", "c"), privacy=(4.0, 1e-5, 2.0), seed=1, second=False)
    sigma = noise_multiplier(4.0, 1e-5) * math.sqrt(2)  # two parts: sensitivity sqrt(2)
    assert noisy.privacy[3] == pytest.approx(sigma) and noisy.second.shape == (0, 0)
    assert abs((noisy.sums - exact.sums).std() / (sigma * 2.0) - 1) < 0.2
    assert noisy.nbytes == 4 * (3 + 3 * 40)
    save_share(tmp_path / "s.npz", replace(noisy, centred=True))
    back = load_share(tmp_path / "s.npz")
    assert back.centred and back.second.shape == (0, 0)
    np.testing.assert_array_equal(back.sums, noisy.sums)


def test_clipping_computes_in_float64_and_returns_the_input_dtype() -> None:
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(300, 7)) * rng.uniform(0.1, 30.0, (300, 1))).astype(np.float32)
    wide = x.astype(np.float64)
    norms = np.linalg.norm(wide, axis=1, keepdims=True)
    want = (wide * np.minimum(1.0, 2.5 / norms)).astype(np.float32)
    np.testing.assert_array_equal(clip_norms(x, 2.5), want)


def test_the_noise_multiplier_below_1_and_without_dp_accounting(monkeypatch) -> None:
    z = noise_multiplier(20.0, 1e-5)  # a large budget needs z under the bisection's start
    assert z < 0.5 and spent(z, 1e-5) <= 20.0 < spent(z - 0.002, 1e-5)
    monkeypatch.setitem(sys.modules, "dp_accounting", None)
    message = "a private share needs dp-accounting: pip install 'qcore[privacy]'"
    with pytest.raises(QCoreError, match=f"^{re.escape(message)}$"):
        noise_multiplier(4.0, 1e-5)


def test_pooling_adds_every_shares_second_moment_even_of_one_feature() -> None:
    rng = np.random.default_rng(6)
    for d in (1, 3):
        deployed = batch_stats(rng.normal(size=(30, d)), rng.integers(0, 2, 30), 2)
        x, y = rng.normal(size=(40, d)) + 1.0, rng.integers(0, 2, 40)
        parts = [batch_stats(x[:25], y[:25], 2), batch_stats(x[25:], y[25:], 2)]
        got = pooled_stats([make_share(p, ("a", "b")) for p in parts], deployed, ("a", "b"))
        whole = batch_stats(x, y, 2)
        np.testing.assert_allclose(got.count, whole.count)
        np.testing.assert_allclose(got.mean, whole.mean, atol=1e-5)
        np.testing.assert_allclose(got.scatter, whole.scatter, rtol=1e-5, atol=1e-4)
    message = "shares to pool must all be centred or not, all with or without a second moment"
    mixed = [make_share(parts[0], ("a", "b")), make_share(parts[1], ("a", "b"), second=False)]
    with pytest.raises(QCoreError, match=f"^{re.escape(message)}$"):
        pooled_stats(mixed, deployed, ("a", "b"))


def test_a_total_count_of_one_half_is_an_empty_class() -> None:
    deployed = batch_stats(np.eye(4, 2, dtype=np.float32), np.arange(4) % 2, 2)
    half = Share(np.array([0.5, 0.51]), np.ones((2, 2)), np.eye(2), ("a", "b"))
    got = pooled_stats([half], deployed, ("a", "b"))
    np.testing.assert_allclose(got.count, [0.0, 0.51])
    np.testing.assert_allclose(got.mean, [[0.0, 0.0], [1 / 0.51, 1 / 0.51]], rtol=1e-6)


def test_load_share_refuses_pickles_and_arrays_that_disagree(tmp_path) -> None:
    part = batch_stats(np.eye(3, 4, dtype=np.float32), np.array([0, 1, 1]), 2)
    good = tmp_path / "good.npz"
    save_share(good, make_share(part, ("a", "b"), "abc"))
    with np.load(good, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    with pytest.raises(QCoreError, match=f"^share {re.escape(str(tmp_path / 'none.npz'))} does"):
        load_share(tmp_path / "none.npz")
    pickled = {**arrays, "classes": np.array(["a", "b"], dtype=object)}
    np.savez(tmp_path / "pickled.npz", **pickled)  # an object array is written as a pickle
    with pytest.raises(QCoreError, match="is not a fleet share"):
        load_share(tmp_path / "pickled.npz")
    bad = {
        "a class name too many": {"classes": np.array(["a", "b", "c"])},
        "a count too many": {"count": np.zeros(3)},
        "a second moment of another size": {"second": np.eye(3)},
        "sums of one class, not 2-D": {"sums": np.zeros(4), "count": np.zeros(1),
                                       "classes": np.array(["a"]), "second": np.zeros((0, 0))},
        "a sum not finite": {"sums": np.full((2, 4), np.nan)},
        "centred not a scalar": {"centred": np.array([True, False])},
    }  # fmt: skip
    for case, changed in bad.items():
        path = tmp_path / f"{case}.npz"
        np.savez(path, **{**arrays, **changed})
        message = f"{path}: a fleet share's arrays disagree or are not finite"
        with pytest.raises(QCoreError, match=f"^{re.escape(message)}$"):
            load_share(path)


def test_a_private_share_is_reproducible_unbiased_and_noisy_per_entry() -> None:
    rng = np.random.default_rng(7)
    k, clip = 40, 3.0
    x, y = clip_norms(rng.normal(size=(400, 6)), clip), rng.integers(0, k, 400)
    part = batch_stats(x, y, k)
    names = tuple(f"c{i}" for i in range(k))
    exact = make_share(part, names)
    assert exact.deployed == "" and exact.privacy == () and not exact.centred
    assert make_share(part, names, second=False).second.shape == (0, 0)
    private = (4.0, 1e-5, clip)
    noisy = make_share(part, names, privacy=private)  # the default seed is 0
    again = make_share(part, names, privacy=private, seed=0)
    np.testing.assert_array_equal(noisy.count, again.count)
    np.testing.assert_array_equal(noisy.second, again.second)
    assert len(np.unique(noisy.count - exact.count)) == k  # one draw per class
    sigma = noisy.privacy[3]
    shares = [make_share(part, names, privacy=private, seed=s) for s in range(100)]
    counts = np.concatenate([s.count - exact.count for s in shares])
    sums = np.concatenate([(s.sums - exact.sums).ravel() for s in shares])
    assert abs(counts.mean()) < 0.1 * sigma and abs(sums.mean()) < 0.1 * sigma * clip
    upper = np.triu_indices(6)
    second = np.concatenate([(s.second - exact.second)[upper] / clip**2 for s in shares])
    assert abs(second.std() / sigma - 1) < 0.1  # C² = 9 (C 2 = 6 would give 0.67)
    centred = make_share(part, names, privacy=private, centre=np.zeros((k, 6)))
    assert centred.centred is True and noisy.centred is False
