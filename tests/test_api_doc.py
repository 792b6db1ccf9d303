"""The script in docs/api.md runs as written and its device learns the target."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import numpy as np
import torch

from qcore.edge.device import Device

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_the_api_example_runs(tmp_path):
    torch.set_num_threads(1)
    (code,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    scope: dict = {"__name__": "api_doc"}
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(DOC), "exec"), scope)
    finally:
        os.chdir(cwd)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("1 ") and lines[-1].startswith("target test accuracy")
    assert (tmp_path / "model.qcore").exists() and (tmp_path / "state.qcore").exists()
    # the device learned the target: better than the artifact it started from
    deployed = Device(scope["art"]).predict(scope["test_raw"])
    before = float(np.mean(deployed == scope["sc"].target_test.y))
    assert float(lines[-1].split()[-1]) > before
