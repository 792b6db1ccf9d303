"""The decision of docs/fleet-privacy.md's rules (qcore.eval.fleet_validate.pick) and the
table it is printed with, on made-up rows."""

from __future__ import annotations

import pytest

from qcore.eval.fleet_validate import THIRD, gaps, parts, pick, summary_lines


def rows(acc: dict[str, tuple[float, float]], clean: dict[str, float] | None = None) -> list[dict]:
    """Two datasets, two sites each, the merge without noise at 0.9: ``acc`` gives each
    form's epsilon-4 accuracy per dataset (both sites alike)."""
    out = []
    for i, d in enumerate(("hapt", "usc-had")):
        for site in (2, 4):
            row: dict = {"dataset": d, "site": site, "fleet_before": 0.9}
            for name, pair in acc.items():
                row[f"{name}_eps4"], row[f"{name}_clean"] = pair[i], 0.9
            for name, value in (clean or {}).items():
                row[f"{name}_clean"] = value
            out.append(row)
    return out


def test_the_rule_picks_the_largest_minimum_gap_over_the_datasets() -> None:
    got = rows({"a-3": (0.89, 0.70), "means-b": (0.80, 0.80), "centred": (0.85, 0.80)})
    assert round(min(gaps(got, "a-3").values()), 6) == -0.2
    assert pick(got, ("a-3", "means-b")) == ("means-b", False)  # -0.1, not above centred's -0.1


def test_ties_go_to_fewer_parts_then_the_earlier_and_adoption_beats_centred() -> None:
    acc = {"x-3": (0.86, 0.86), "means-y": (0.857, 0.857), "means-z": (0.856, 0.856)}
    got = rows({**acc, "centred": (0.8, 0.8)})
    assert parts("x-3") == 3 and parts("means-y") == 2
    assert pick(got, ("x-3", "means-y", "means-z")) == ("means-y", True)
    assert pick(got, ("x-3", "means-z", "means-y")) == ("means-z", True)
    far = rows({"x-3": (0.87, 0.87), "means-y": (0.86, 0.86), "centred": (0.8, 0.8)})
    assert pick(far, ("means-y", "x-3")) == ("x-3", True)  # a point ahead: no tie


def test_the_table_shows_parts_the_references_without_noise_and_the_pick() -> None:
    acc = {name: (0.85, 0.8) for name in THIRD} | {"centred": (0.8, 0.8), "pooled": (0.8, 0.8)}
    lines = summary_lines(rows(acc, {"means-only": 0.88, "means-only-projected": 0.87}))
    assert lines[0].startswith("| form | parts | gap hapt | gap usc-had | min |")
    assert "| `means-whitened-1` | 2 | -0.050 | -0.100 | -0.100 |" in lines[2]
    assert any(line.startswith("| `centred` | 3 |") for line in lines)
    assert "| `means-only` | 2 | -0.020 | -0.020 | -0.020 | 0.880 / - |" in lines[-3]
    assert lines[-1] == "pick: means-whitened-1, not adopted"


def test_the_central_share_is_the_fleets_sums_with_the_noise_added_once() -> None:
    """Without noise it is the sum of the devices' shares; with it, the noise is that of
    one share of the whole fleet (the same draw however many devices it pools)."""
    import numpy as np

    from qcore.edge.head import batch_stats
    from qcore.edge.share import centres, make_share, noise_multiplier
    from qcore.eval.fleet_validate import central_share

    rng = np.random.default_rng(0)
    k, d, names = 4, 30, ("a", "b", "c", "d")
    x0, y0 = rng.normal(0, 1, (60, d)), np.arange(60) % k
    head = batch_stats(x0, y0, k)
    x, y = rng.normal(0.5, 1, (200, d)), rng.integers(0, k, 200)
    for centred in (False, True):
        centre = centres(head, k) if centred else None
        parts = [batch_stats(x[i::10], y[i::10], k) for i in range(10)]
        devices = [make_share(p, names, "s", None, 0, centre) for p in parts]
        whole = [make_share(batch_stats(x, y, k), names, "s", None, 0, centre)]
        clean = central_share(devices, head, names, "s", None, centred)
        assert clean.centred is centred and clean.privacy == ()
        assert np.allclose(clean.count, sum(s.count for s in devices))
        assert np.allclose(clean.sums, sum(s.sums for s in devices), atol=1e-9)
        assert np.allclose(clean.second, sum(s.second for s in devices), atol=1e-8)
        private = (4.0, 1e-5, 2.0)
        noisy = central_share(devices, head, names, "s", private, centred)
        once = central_share(whole, head, names, "s", private, centred)
        assert np.allclose(noisy.sums - clean.sums, once.sums - whole[0].sums, atol=1e-8)
        sigma = noise_multiplier(4.0, 1e-5) * np.sqrt(3.0)
        assert np.std((noisy.sums - clean.sums) / 2.0) == pytest.approx(sigma, rel=0.15)
