"""joint: stores every batch it sees, trains on all of them, and pays for it in bytes."""

from __future__ import annotations

import numpy as np

from qcore.methods.all import make


def test_joint_accumulates_all_target_data(make_dep, target_batches):
    cal = make("joint", make_dep())
    batches = target_batches(3)
    model_bytes = cal.model_bytes()
    sizes = []
    for k, b in enumerate(batches, start=1):
        rep = cal.observe(b)
        assert rep.extra["stored"] == k * len(b)
        sizes.append(cal.device_bytes())
    np.testing.assert_array_equal(cal.X, np.concatenate([b.X for b in batches]))
    np.testing.assert_array_equal(cal.y, np.concatenate([b.y for b in batches]))
    per_batch = batches[0].X.nbytes + batches[0].y.nbytes
    assert sizes == [model_bytes + k * per_batch for k in (1, 2, 3)]
