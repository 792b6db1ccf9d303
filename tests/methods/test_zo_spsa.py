"""zo-spsa: codes move by forward passes only, stay in range, and PyTorch is never used."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

import qcore.methods.zo_spsa as zo
from qcore.cloud.export import to_qmodel
from qcore.core.quant import qrange
from qcore.methods.all import make


def test_spsa_moves_codes_within_range_and_keeps_qparams(deployed, tiny_xy):
    qm = to_qmodel(deployed)
    X, y = tiny_xy
    rng = np.random.default_rng(0)
    res = zo.spsa_calibrate(qm, X[:20], y[:20], iters=4, rng=rng, density=0.1, z=0.5, guard=False)
    assert res.flips_applied > 0
    qmin, qmax = qrange(4)
    moved = 0
    for name, layer in res.model.layers.items():
        old = qm.layers[name].weight
        q = layer.weight.q
        assert q.min() >= qmin and q.max() <= qmax
        assert np.abs(q.astype(int) - old.q.astype(int)).max() <= 4  # at most 1 per iteration
        np.testing.assert_array_equal(layer.weight.scale, old.scale)
        np.testing.assert_array_equal(layer.weight.zero_point, old.zero_point)
        moved += int(np.count_nonzero(q != old.q))
    assert moved > 0
    assert res.correct.shape == (1 + 4 - res.moves_rejected, 20)


def test_guard_never_raises_the_loss(deployed, tiny_xy):
    from qcore.edge.flip_passes import cross_entropy
    from qcore.edge.infer import forward

    qm = to_qmodel(deployed)
    X, y = tiny_xy[0][:20] + 0.5, tiny_xy[1][:20]
    res = zo.spsa_calibrate(qm, X, y, iters=3, rng=np.random.default_rng(1), z=0.5)
    assert cross_entropy(forward(res.model, X), y) <= cross_entropy(forward(qm, X), y)


def test_zo_step_needs_no_autograd(make_dep, target_batches, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("autograd used")

    cal = make("zo-spsa", make_dep())
    monkeypatch.setattr(torch.Tensor, "backward", forbidden)
    monkeypatch.setattr(torch.autograd, "backward", forbidden)
    monkeypatch.setattr(torch.autograd, "grad", forbidden)
    for batch in target_batches(2):
        rep = cal.observe(batch)
    assert set(rep.extra) == {"flips", "passes_rejected"} and len(cal.core) == 6
    assert cal.device_bytes() == cal.qm.device_bytes()["total"] + cal.core.nbytes


CHILD = """
import importlib.util, sys
import numpy as np
spec = importlib.util.spec_from_file_location("zo_probe", sys.argv[1])
zo = importlib.util.module_from_spec(spec)
sys.modules["zo_probe"] = zo  # dataclasses look their module up
spec.loader.exec_module(zo)
from qcore.core.types import Batch
from qcore.coreset.core import Core
d = np.load(sys.argv[2], allow_pickle=True)
qm, X, y = d["qm"].item(), d["X"], d["y"]
core = Core(X[:6], y[:6], np.ones(6, np.int64), np.full(6, -1, np.int64))
cal = zo.ZOSPSA(qm, core, iters=2, guard="pass", bn_mode="reestimate", seed=0)
cal.observe(Batch(X[6:18], y[6:18]))
assert "torch" not in sys.modules, "torch was imported"
print("ok")
"""


def test_zo_module_and_step_run_without_torch(deployed, tiny_xy, tmp_path):
    """Load the module by file (not through the package, whose other baselines use torch)
    in a fresh interpreter, step it on a model exported here, and check torch never loaded."""
    X, y = tiny_xy
    np.savez(tmp_path / "in.npz", qm=np.array(to_qmodel(deployed), dtype=object), X=X, y=y)
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD), zo.__file__, str(tmp_path / "in.npz")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(zo.__file__).parent,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
