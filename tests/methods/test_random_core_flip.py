"""random-core-flip: the same random core as random-core-bp, a flip network trained for
it, the one device step with a reservoir update."""

from __future__ import annotations

import numpy as np

from qcore.coreset.storage import roundtrip
from qcore.methods.all import make


def test_random_core_flip_uses_the_random_core_and_its_own_flip_net(make_dep, target_batches):
    dep = make_dep(core_size=6, calib_steps=1)
    cal = make("random-core-flip", dep)
    bp_core = make("random-core-bp", dep).core
    # the same samples, as the device stores them (8-bit windows)
    np.testing.assert_array_equal(cal.core.X, roundtrip(bp_core).X)
    np.testing.assert_array_equal(cal.core.y, bp_core.y)
    assert "flipnet" in dep.extras  # trained in the cloud for this deployment
    assert cal.device.update is not None and cal.device.update.n_seen == 60
    offered = 0
    for batch in target_batches(2):
        rep = cal.observe(batch)
        assert {"flips", "passes_rejected", "rolled_back"} <= set(rep.extra)
        offered += 0 if rep.extra["rolled_back"] else len(batch)  # a rollback offers nothing
    assert cal.device.update.n_seen == 60 + offered
    assert len(cal.core) == 6 and set(cal.core.origin) <= {-1, 1, 2}
    for layer in cal.art.model.layers.values():  # flips keep codes in range
        assert layer.weight.q.max() <= 15
    art = cal.art
    expected = art.model.device_bytes()["total"] + art.core.nbytes + art.flipnet.nbytes()
    assert cal.device_bytes() == expected
