"""derpp: every buffer entry carries the logits the model gave it at insertion."""

from __future__ import annotations

import numpy as np

from qcore.cloud.train import predict_logits
from qcore.methods.all import make


def test_derpp_stores_logits_at_insertion(make_dep, target_batches):
    dep = make_dep(core_size=6, n_source=8)
    cal = make("derpp", dep)
    b = cal.buffer
    assert b.logits.shape == (6, 3) and (cal.alpha, cal.beta) == (0.1, 0.5)
    np.testing.assert_allclose(b.logits, predict_logits(dep.qmodel, b.X), rtol=1e-5, atol=1e-6)
    src_logits = b.logits.copy()
    (batch,) = target_batches(1)
    cal.observe(batch)
    new = b.origin == 1
    assert new.any()  # some stream samples entered
    # the model has not changed since their insertion: stored == current logits
    np.testing.assert_allclose(
        b.logits[new], predict_logits(cal.model, b.X[new]), rtol=1e-5, atol=1e-6
    )
    old = ~new  # source entries keep the deployed model's logits, not the new model's
    np.testing.assert_array_equal(b.logits[old], src_logits[old])
    assert not np.allclose(b.logits[old], predict_logits(cal.model, b.X[old]))
