"""random-core-bp: a seeded uniform source core, back-prop on core + batch, reservoir update."""

from __future__ import annotations

import numpy as np

from qcore.methods.all import make


def test_random_core_is_a_seeded_uniform_subset_updated_by_reservoir(make_dep, target_batches):
    dep = make_dep(core_size=6)
    a, b = make("random-core-bp", dep), make("random-core-bp", dep)
    other = make("random-core-bp", make_dep(core_size=6, seed=1))
    np.testing.assert_array_equal(a.core.X, b.core.X)  # seeded
    assert not np.array_equal(a.core.X, other.core.X)
    rows = {x.tobytes() for x in dep.source_X}
    assert all(x.tobytes() in rows for x in a.core.X) and len(a.core) == 6
    assert not np.array_equal(np.sort(a.core.X, axis=0), np.sort(dep.core.X, axis=0))
    before = {k: v.clone() for k, v in a.model.state_dict().items()}
    for batch in target_batches(3):
        a.observe(batch)
    assert a.buffer.n_seen == 60 + 36 and len(a.core) == 6
    assert any(not (v == before[k]).all() for k, v in a.model.state_dict().items())
