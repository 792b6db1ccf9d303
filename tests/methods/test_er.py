"""er: the reservoir keeps a uniform sample of everything offered; replay trains the model."""

from __future__ import annotations

import numpy as np
from scipy.stats import chisquare

from qcore.methods.all import make
from qcore.methods.common import Buffer, reservoir_slots, source_reservoir


def test_reservoir_is_uniform_over_a_long_stream():
    """200 items in batches of 7 into 10 slots, 3000 seeded runs: each item is kept with
    probability 10/200, whether it came first or last (chi-square, and halves compared)."""
    n_items, cap, runs = 200, 10, 3000
    kept = np.zeros(n_items)
    rng = np.random.default_rng(0)
    ids = np.arange(n_items, dtype=np.float32).reshape(-1, 1, 1)
    for _ in range(runs):
        buf = Buffer(cap, (1, 1))
        for start in range(0, n_items, 7):
            chunk = ids[start : start + 7]
            buf.add_reservoir(chunk, np.zeros(len(chunk), dtype=np.int64), 0, rng)
        kept[buf.X[:, 0, 0].astype(int)] += 1
    assert buf.n_seen == n_items and buf.size == cap
    assert chisquare(kept).pvalue > 1e-3
    expected = runs * cap / n_items
    assert abs(kept[:100].mean() - expected) < 0.05 * expected
    assert abs(kept[100:].mean() - expected) < 0.05 * expected


def test_reservoir_slots_fill_then_replace():
    rng = np.random.default_rng(0)
    assert reservoir_slots(0, 4, 4, rng).tolist() == [0, 1, 2, 3]
    later = reservoir_slots(1000, 500, 4, rng)
    assert ((later >= -1) & (later < 4)).all()
    assert (later == -1).mean() > 0.9  # late items rarely enter


def test_er_buffer_starts_as_a_uniform_source_subset_and_replay_trains(make_dep, target_batches):
    dep = make_dep(core_size=6, n_source=10)
    cal = make("er", dep)
    b = cal.buffer
    assert b.size == 6 and b.n_seen == 10 and (b.origin == -1).all()
    rows = {x.tobytes() for x in dep.source_X}
    assert all(x.tobytes() in rows for x in b.X)  # a subset of the source
    assert len({x.tobytes() for x in b.X}) == 6  # without repetition
    assert np.array_equal(b.X, source_reservoir(dep.source_X, dep.source_y, 6, _rng(0)).X)
    before = {k: v.clone() for k, v in cal.model.state_dict().items()}
    for batch in target_batches(2):
        cal.observe(batch)
    assert b.n_seen == 10 + 24 and (b.origin > 0).any()  # stream samples entered
    changed = any(not (v == before[k]).all() for k, v in cal.model.state_dict().items())
    assert changed


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)
