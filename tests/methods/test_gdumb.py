"""gdumb: the greedy sampler keeps classes balanced; the learner restarts from the deployment."""

from __future__ import annotations

import copy

import numpy as np
import torch

from qcore.cloud.calibrate import backprop_calibrate
from qcore.methods.all import make
from qcore.methods.common import Buffer
from qcore.methods.gdumb import gdumb_add


def test_gdumb_buffer_stays_class_balanced_on_an_imbalanced_stream():
    rng = np.random.default_rng(0)
    y = rng.choice(3, 300, p=[0.8, 0.1, 0.1])  # class 0 dominates the stream
    buf, reservoir, seen = Buffer(9, (1, 1)), Buffer(9, (1, 1)), set()
    x = np.zeros((1, 1), dtype=np.float32)
    for label in y:
        gdumb_add(buf, x, int(label), 1, seen, rng)
    reservoir.add_reservoir(np.zeros((300, 1, 1), np.float32), y, 1, rng)
    assert np.bincount(buf.y, minlength=3).tolist() == [3, 3, 3]
    assert np.bincount(reservoir.y, minlength=3)[0] > 3  # what uniform sampling would keep


def test_gdumb_retrains_from_the_deployed_model_on_the_buffer_only(make_dep, target_batches):
    dep = make_dep(core_size=6)
    cal = make("gdumb", dep)
    assert cal.buffer.size == 0  # starts empty: the deployed model carries the source
    for batch in target_batches(2):
        cal.observe(batch)
    b = cal.buffer
    assert b.size == 6 and (b.origin > 0).all()
    expected = copy.deepcopy(dep.qmodel)
    c = dep.cfg
    backprop_calibrate(
        expected, b.X, b.y, steps=c.calib_steps, lr=c.calib_lr, batch_size=6, seed=c.seed + 2
    )
    for (k, v), w in zip(
        cal.model.state_dict().items(), expected.state_dict().values(), strict=True
    ):
        assert torch.equal(v, w), k
    assert cal.device_bytes() == 2 * cal.model_bytes() + b.nbytes
