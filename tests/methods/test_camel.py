"""camel: selection is greedy facility location (checked against brute force)."""

from __future__ import annotations

import itertools
import math

import numpy as np

from qcore.methods.all import make
from qcore.methods.camel import facility_location_greedy, similarity


def objective(sim: np.ndarray, chosen) -> float:
    return float(sim[:, list(chosen)].max(axis=1).sum())


def brute_force_greedy(sim: np.ndarray, k: int) -> list[int]:
    """Greedy by evaluating ``F(S + j)`` from scratch for every candidate."""
    chosen: list[int] = []
    for _ in range(k):
        rest = [j for j in range(len(sim)) if j not in chosen]
        chosen.append(max(rest, key=lambda j: (objective(sim, chosen + [j]), -j)))
    return chosen


def test_greedy_matches_brute_force_and_the_submodular_bound():
    for seed in range(5):
        feats = np.random.default_rng(seed).normal(size=(8, 3))
        sim = similarity(feats)
        assert (sim >= 0).all() and np.allclose(sim, sim.T)
        greedy = facility_location_greedy(sim, 3)
        assert greedy.tolist() == brute_force_greedy(sim, 3)
        best = max(objective(sim, s) for s in itertools.combinations(range(8), 3))
        assert objective(sim, greedy) >= (1 - 1 / math.e) * best - 1e-9


def test_camel_trains_on_buffer_plus_half_the_batch(make_dep, target_batches):
    cal = make("camel", make_dep(core_size=6))
    assert cal.buffer.size == 6 and (cal.buffer.origin == -1).all()
    for k, batch in enumerate(target_batches(2), start=1):
        rep = cal.observe(batch)
        assert rep.extra["trained_on"] == 6 + 6  # buffer + ceil(0.5 * 12) picked
        assert cal.buffer.size == 6 and cal.buffer.n_seen == 60 + 12 * k
