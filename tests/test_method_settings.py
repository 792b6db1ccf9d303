"""A method's fixed device settings: defaults give way, a contradicting choice fails.

``slda`` is the streaming head without flips on a frozen backbone whatever the run says;
a run that asks otherwise (in its TOML file, with ``--set``, or a DeviceConfig value that
is not the default) gets an error naming both settings, before anything trains.
"""

from __future__ import annotations

import pytest

from qcore.cli import main
from qcore.config import DEVICE_KEYS, DeviceConfig, RunConfig, load_config
from qcore.errors import QCoreError
from qcore.methods.all import available, check_methods
from qcore.methods.registry import FIXES, READS, method_device, register

TINY = [
    "dataset=synthetic",
    "source=0",
    "target=1",
    "filters=4",
    "depth=3",
    "epochs=1",
    "n_batches=2",
    "core_size=8",
    "threads=1",
]


def test_the_device_methods_declare_what_they_fix():
    assert FIXES["slda"] == {"head": "slda", "flip_steps": 0, "bn_mode": "frozen"}
    assert FIXES["qcore"] == FIXES["random-core-flip"] == {"head": "model"}
    assert FIXES["slda-bn"] == {"head": "slda", "flip_steps": 0, "bn_mode": "reestimate"}
    assert READS["qcore"] == READS["slda"] == DEVICE_KEYS
    assert READS["none"] == READS["er"] == ()
    assert set(FIXES) == set(READS) == set(available())


def test_defaults_give_way_to_a_fixed_setting():
    cfg = RunConfig(seed=2, device=DeviceConfig(reset_window=2, flip_guard="layer"))
    device = method_device("slda", cfg)
    assert (device.head, device.flip_steps, device.bn_mode) == ("slda", 0, "frozen")
    assert (device.reset_window, device.flip_guard, device.seed) == (2, "layer", 2)
    assert method_device("qcore", cfg) == cfg.device  # head=model is the default
    assert method_device("backprop", cfg) == cfg.device  # fixes nothing


@pytest.mark.parametrize(
    ("method", "pairs", "message"),
    [
        # set explicitly, even at the default's value
        ("slda", ["head=model"], "method slda fixes head=slda; the run sets head=model"),
        ("slda", ["flip_steps=3"], "method slda fixes flip_steps=0; the run sets flip_steps=3"),
        ("qcore", ["head=slda"], "method qcore fixes head=model; the run sets head=slda"),
        ("slda-bn", ["bn_mode=frozen"], "fixes bn_mode=reestimate; the run sets bn_mode=frozen"),
    ],
)
def test_a_contradicting_choice_names_both_settings(method, pairs, message):
    cfg = load_config(None, [f"method={method}", *pairs])
    with pytest.raises(QCoreError) as err:
        check_methods(cfg)
    assert str(err.value).endswith(message)


def test_a_python_config_chooses_its_non_default_values():
    cfg = RunConfig(method="none,slda", device=DeviceConfig(bn_mode="reestimate", flip_steps=1))
    with pytest.raises(QCoreError, match="fixes flip_steps=0; the run sets flip_steps=1"):
        check_methods(cfg)


def test_an_agreeing_choice_and_unrelated_settings_pass():
    check_methods(load_config(None, ["method=slda", "head=slda", "flip_steps=0"]))
    check_methods(load_config(None, ["method=slda,backprop", "head_shrinkage=0.1"]))
    check_methods(load_config(None, ["method=backprop,er", "flip_steps=1", "head=slda"]))
    with pytest.raises(QCoreError, match="unknown method 'nope'"):
        check_methods(load_config(None, ["method=nope"]))


def test_a_method_cannot_fix_what_it_does_not_read_or_an_invalid_value():
    with pytest.raises(QCoreError, match="unknown head"):
        register("bad-head", fixes={"head": "lda"}, reads=DEVICE_KEYS)
    with pytest.raises(ValueError, match="does not read"):
        register("bad-reads", fixes={"head": "slda"}, reads=("bn_mode",))
    with pytest.raises(ValueError, match="unknown device setting"):
        register("bad-key", fixes={"seed": 1}, reads=DEVICE_KEYS)
    assert not {"bad-head", "bad-reads", "bad-key"} & set(available())


def test_qcore_run_refuses_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--out", str(out), "--set", "head=model", *_sets(TINY)])
    assert code == 2
    assert "qcore: error: method slda fixes head=slda; the run sets head=model" in (
        capsys.readouterr().err
    )
    assert not out.exists()  # nothing trained, nothing written


def _sets(pairs: list[str]) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]
