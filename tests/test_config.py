import pytest

from qcore.config import RunConfig, load_config
from qcore.errors import QCoreError


def test_defaults_and_overrides(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('dataset = "synthetic"\nbits = [2, 8]\nepochs = 3\n')
    cfg = load_config(cfg_file, ["epochs=4", "flip_guard=off", "method=qcore"])
    assert (cfg.dataset, cfg.bits, cfg.epochs, cfg.flip_guard) == ("synthetic", (2, 8), 4, "off")
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("pairs", "msg"),
    [
        (["bits=9"], "bit-width 9"),
        (["epochs=x"], "epochs"),
        (["nonsense=1"], "unknown setting"),
        (["method="], "at least one method"),
        (["source=3", "target=3"], "differ"),
        (["epochs"], "key=value"),
        (["test_fraction=1.5"], "test_fraction"),
        (["core_size=2.5"], "core_size"),
        (["old_quota=2"], "old_quota"),
        (["flip_guard=maybe"], "flip_guard"),
    ],
)
def test_bad_settings_are_named(pairs, msg):
    with pytest.raises(QCoreError, match=msg):
        load_config(None, pairs)


def test_missing_and_bad_config_file(tmp_path):
    with pytest.raises(QCoreError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = = 3")
    with pytest.raises(QCoreError, match="not valid TOML"):
        load_config(bad)


# ------------------------------------------------------------------ device settings


def test_device_config_is_built_from_the_run_config():
    from qcore.config import DEVICE_KEYS, DeviceConfig

    cfg = RunConfig(flip_steps=5, flip_guard="layer", flip_budget=None, guard_margin=0.2, seed=7)
    dev = cfg.device_config()
    assert dev == DeviceConfig(
        flip_steps=5, flip_guard="layer", flip_budget=None, guard_margin=0.2, seed=7
    )
    # the run's defaults are the device's defaults, field by field
    assert RunConfig().device_config() == DeviceConfig()
    assert set(DEVICE_KEYS) <= set(RunConfig().to_dict())


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("flip_guard", "sometimes", "unknown flip_guard"),
        ("bn_mode", "train", "unknown bn_mode"),
        ("core_mode", "random", "unknown core_mode"),
        ("policy", "every:0", "unknown policy"),
        ("flip_budget", "1.5", "flip budget"),
        ("guard_margin", "-0.1", "guard_margin"),
        ("flip_steps", "-1", "flip_steps"),
        ("head", "lda", "unknown head"),
        ("head_shrinkage", "0", "head_shrinkage"),
        ("epochs", "3", "unknown device setting"),
    ],
)
def test_device_overrides_are_checked(key, value, message):
    from qcore.config import DeviceConfig, override_device

    with pytest.raises(QCoreError, match=message):
        override_device(DeviceConfig(), [f"{key}={value}"])


def test_device_overrides_parse_like_the_run():
    from qcore.config import DeviceConfig, override_device

    dev = override_device(
        DeviceConfig(), ["flip_budget=none", "flip_steps=2", "policy=drift", "old_quota=0.5"]
    )
    assert (dev.flip_budget, dev.flip_steps, dev.policy, dev.old_quota) == (None, 2, "drift", 0.5)
    assert DeviceConfig.from_dict(dev.to_dict()) == dev


def test_help_lists_every_setting_with_its_default():
    from dataclasses import fields

    from qcore.config import DeviceConfig, settings_help

    for cls in (RunConfig, DeviceConfig):
        text = settings_help(cls)
        for f in fields(cls):
            assert f"  {f.name} = " in text
        lines = text.splitlines()
        helps = [lines[i + 1].strip() for i, ln in enumerate(lines) if " = " in ln]
        assert all(helps), f"a {cls.__name__} setting has no help line"


def test_results_made_before_a_setting_existed_still_match():
    cfg = RunConfig(bits=(2,), seed=1)
    stored = cfg.to_dict()
    assert cfg.made_with(stored)
    older = {k: v for k, v in stored.items() if k not in ("head", "head_bits", "head_shrinkage")}
    assert cfg.made_with(older)  # head and head_bits at their defaults
    assert not cfg.replace(head="slda").made_with(older)  # a non-default new setting
    assert cfg.replace(head_shrinkage=0.1).made_with(older)  # no head existed: any value
    assert not cfg.made_with({**stored, "seed": 2})
    assert not cfg.made_with({**stored, "retired_setting": 1})
    # a setting not listed as added (its absence means other code) never matches
    assert not cfg.made_with({k: v for k, v in stored.items() if k != "guard_margin"})
