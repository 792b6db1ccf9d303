"""Stored expected results: a tiny seeded synthetic run of every method, pinned.

Each method's mean accuracy on the incoming batches over the stream (240 windows) and its
final target and source test accuracy (32 windows each) are compared with
``expected/synthetic.json``. The run uses one thread. Float rounding still matters: the
same run with 2 torch and BLAS threads (another reduction order, as another BLAS kernel
would give) moved the stream means by at most 0.042 and the final accuracies by up to
0.25 (a back-prop method's few-window test sets amplify it), so the stream mean is held to
:data:`TOL` and the final accuracies only to :data:`TOL_FINAL`. Checked by breaking the
code once: removing the device's rollback guard fails it (``random-core-flip`` moves);
drawing the core updates from ``(seed, step + 1)`` instead of ``(seed, step)`` does not, so
small changes of that kind pass within these tolerances. After a deliberate change,
regenerate and review the diff:

    .venv/bin/python tests/eval/test_expected_results.py --write
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from qcore.config import RunConfig
from qcore.eval.runner import run
from qcore.methods.all import available

EXPECTED = Path(__file__).parent / "expected" / "synthetic.json"
TOL = 0.06  # mean accuracy on the incoming batches
TOL_FINAL = 0.3  # final target / source accuracy
CONFIG = RunConfig(
    dataset="synthetic",
    source=0,
    target=1,
    filters=4,
    depth=3,
    epochs=5,
    core_size=10,
    bits=(4,),
    calib_steps=5,
    method=",".join(sorted(available())),
    threads=1,
)


def measure(out: Path) -> dict[str, dict[str, float]]:
    """Per streamed method: final target/source accuracy and mean task accuracy."""
    torch.set_num_threads(1)
    result = run(CONFIG, out)
    return {
        r["method"]: {
            "target_acc": r["target_acc"],
            "source_acc": r["source_acc"],
            "task_acc": float(np.mean([s["task_acc"] for s in r["steps"]])),
        }
        for r in result["results"]
        if "steps" in r
    }


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict[str, dict[str, float]]:
    return measure(tmp_path_factory.mktemp("expected"))


def test_every_method_has_stored_results(measured):
    stored = json.loads(EXPECTED.read_text())
    # settings added since, at the values that reproduce them, leave the results valid
    assert CONFIG.made_with(stored["config"]), "settings changed: regenerate (see docstring)"
    assert set(stored["results"]) == set(measured)


@pytest.mark.parametrize("method", sorted(available()))
def test_results_match_the_stored_ones(measured, method):
    want = json.loads(EXPECTED.read_text())["results"][method]
    got = measured[method]
    for key, value in want.items():
        tol = TOL if key == "task_acc" else TOL_FINAL
        assert abs(got[key] - value) <= tol, f"{method} {key}: {got[key]:.3f}, stored {value:.3f}"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        results = measure(Path(tmp))
    EXPECTED.write_text(json.dumps({"config": CONFIG.to_dict(), "results": results}, indent=1))
    print(f"wrote {EXPECTED}")
