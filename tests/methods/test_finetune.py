"""finetune: back-prop on the batch alone changes the weights; no buffer; deployed model intact."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from qcore.cloud.export import to_qmodel
from qcore.methods.all import make


def batch_loss(model: torch.nn.Module, batch) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(torch.from_numpy(batch.X)), torch.from_numpy(batch.y)))


def test_finetune_changes_weights_on_the_batch(make_dep, target_batches):
    dep = make_dep(calib_steps=5, calib_lr=1e-2)
    deployed_codes = {n: w.weight.q.copy() for n, w in to_qmodel(dep.qmodel).layers.items()}
    cal = make("finetune", dep)
    (batch,) = target_batches(1)
    loss0 = batch_loss(cal.model, batch)
    cal.observe(batch)
    assert batch_loss(cal.model, batch) < loss0  # it learned the batch
    after = to_qmodel(cal.model)
    changed = sum(
        int(np.count_nonzero(after.layers[n].weight.q != q)) for n, q in deployed_codes.items()
    )
    assert changed > 0  # integer codes moved
    for n, q in deployed_codes.items():  # the deployment itself is untouched
        np.testing.assert_array_equal(to_qmodel(dep.qmodel).layers[n].weight.q, q)
    assert cal.device_bytes() == after.device_bytes()["total"]  # model only, no buffer
