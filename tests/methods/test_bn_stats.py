"""bn-stats: BatchNorm statistics follow each batch; weights, codes and BN affine never change."""

from __future__ import annotations

import numpy as np

from qcore.cloud.export import to_qmodel
from qcore.edge.infer import bn_reestimate
from qcore.edge.infer import predict as edge_predict
from qcore.methods.all import make


def test_bn_stats_changes_statistics_only(make_dep, target_batches):
    dep = make_dep()
    before = to_qmodel(dep.qmodel)
    cal = make("bn-stats", dep)
    b1, b2 = target_batches(2)
    rep = cal.observe(b1)
    assert rep.task_acc == np.mean(edge_predict(before, b1.X) == b1.y)  # before calibrating
    cal.observe(b2)
    expected = bn_reestimate(before, b2.X)  # statistics of the latest batch alone
    for name, layer in cal.qm.layers.items():
        np.testing.assert_array_equal(layer.weight.q, before.layers[name].weight.q)
        np.testing.assert_array_equal(layer.weight.scale, before.layers[name].weight.scale)
    for name, bn in cal.qm.norms.items():
        old = before.norms[name]
        np.testing.assert_array_equal(bn.weight, old.weight)
        np.testing.assert_array_equal(bn.bias, old.bias)
        np.testing.assert_array_equal(bn.running_mean, expected.norms[name].running_mean)
        np.testing.assert_array_equal(bn.running_var, expected.norms[name].running_var)
        assert not np.allclose(bn.running_mean, old.running_mean)
    assert cal.device_bytes() == before.device_bytes()["total"]  # no buffer
