"""What leaves a device of a fleet: shares, their privacy noise, `qcore fleet share`."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import edge_kit as B
import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant
from test_fleet import assert_stats_close, fleet  # noqa: F401  (the fixture)

from qcore.cli import main
from qcore.edge.artifact import load_artifact, save_artifact
from qcore.edge.device import Device
from qcore.edge.fleet import learnt_part, merge_fleet, merge_shares
from qcore.edge.head import batch_stats, update
from qcore.edge.share import (
    SHARE_KEYS,
    Share,
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
