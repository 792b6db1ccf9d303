"""random-core-flip: the same random core as random-core-bp, a flip network trained for it."""

from __future__ import annotations

import numpy as np

from qcore.eval.methods import make


def test_random_core_flip_uses_the_random_core_and_its_own_flip_net(make_dep, target_batches):
    dep = make_dep(core_size=6, calib_steps=1)
    cal = make("random-core-flip", dep)
    np.testing.assert_array_equal(cal.core.X, make("random-core-bp", dep).core.X)
    assert "flipnet" in dep.extras  # trained in the cloud for this deployment
    codes = {n: layer.weight.q.copy() for n, layer in cal.qm.layers.items()}
    for batch in target_batches(2):
        rep = cal.observe(batch)
        assert set(rep.extra) == {"flips", "rejected"}
    assert cal.buffer.n_seen == 60 + 24
    for n, layer in cal.qm.layers.items():  # flips keep codes in range
        assert layer.weight.q.max() <= 15
        assert layer.weight.q.shape == codes[n].shape
    expected = cal.qm.device_bytes()["total"] + cal.buffer.nbytes + cal.net.nbytes()
    assert cal.device_bytes() == expected
