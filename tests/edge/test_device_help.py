"""``qcore device FILE --help`` lists FILE's own device settings; without FILE, the
DeviceConfig defaults, labelled as such."""

from __future__ import annotations

import numpy as np
import pytest

from qcore.cli import main
from qcore.cloud.export import to_qmodel
from qcore.cloud.quantize import quantize_model
from qcore.config import DeviceConfig
from qcore.edge.artifact import build_artifact, save_artifact


class _Norm:
    mean = np.zeros(3, dtype=np.float32)
    std = np.ones(3, dtype=np.float32)


def _help(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(argv)
    out = capsys.readouterr()
    return int(done.value.code or 0), out.out, out.err


def test_device_help_lists_the_artifact_s_settings(tiny_model, tiny_xy, tmp_path, capsys):
    X, _ = tiny_xy
    qm = to_qmodel(quantize_model(tiny_model, 4, X, 0))
    device = DeviceConfig(flip_steps=0, bn_mode="frozen", reset_window=7, policy="drift")
    path = tmp_path / "a.qcore"
    save_artifact(path, build_artifact(qm, None, None, _Norm(), ("a", "b", "c"), {}, 32, device))

    code, text, _ = _help(["device", str(path), "--help"], capsys)
    assert code == 0
    assert f"settings of {path}" in text and "defaults" not in text.split("settings of")[1]
    for line in ("flip_steps = 0", "bn_mode = frozen", "reset_window = 7", "policy = drift"):
        assert f"\n  {line}\n" in text, line

    code, text, _ = _help(["device", "--help"], capsys)
    assert code == 0 and "DeviceConfig's defaults" in text
    assert "\n  flip_steps = 3\n" in text and "\n  reset_window = 5\n" in text

    code, _, err = _help(["device", str(tmp_path / "missing.qcore"), "--help"], capsys)
    assert code == 2 and "cannot list the settings of" in err
