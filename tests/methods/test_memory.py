"""Memory accounting: every buffer method pays the same per-sample budget as the QCore."""

from __future__ import annotations

from qcore.cloud.export import to_qmodel
from qcore.methods.all import available, make

BASELINES = (
    "bn-stats finetune joint random-core-bp random-core-flip er derpp gdumb camel zo-spsa"
).split()


def test_every_baseline_is_registered():
    assert set(BASELINES) <= set(available())


def test_buffers_cost_the_same_bytes_as_the_core(make_dep, target_batches):
    dep = make_dep(core_size=6)
    model = to_qmodel(dep.qmodel).device_bytes()["total"]
    core = dep.core.nbytes  # 6 samples: float32 windows + int64 labels
    assert core == 6 * (3 * 32 * 4 + 8)
    (batch,) = target_batches(1)
    expected = {
        "backprop": model + core,
        "random-core-bp": model + core,
        "er": model + core,
        "camel": model + core,
        "zo-spsa": model + core,
        "derpp": model + core + 6 * 3 * 4,  # plus stored float32 logits
        "gdumb": 2 * model + core,  # plus the deployed model it restarts from
        "finetune": model,
        "bn-stats": model,
    }
    for name, nbytes in expected.items():
        cal = make(name, dep)
        assert cal.device_bytes() == nbytes, name
        cal.observe(batch)
        assert cal.device_bytes() == nbytes, name  # fixed size: nothing grows
