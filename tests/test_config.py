import pytest

from qcore.config import DEVICE_KEYS, DeviceConfig, RunConfig, load_config
from qcore.errors import QCoreError


def test_defaults_and_overrides(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('dataset = "synthetic"\nbits = [2, 8]\nepochs = 3\n')
    cfg = load_config(cfg_file, ["epochs=4", "flip_guard=off", "method=qcore"])
    assert (cfg.dataset, cfg.bits, cfg.epochs) == ("synthetic", (2, 8), 4)
    assert cfg.device.flip_guard == "off"
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_a_flat_toml_file_and_set_route_device_keys_into_the_device(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text("seed = 4\nhead_shrinkage = 0.2\nflip_steps = 1\n")
    cfg = load_config(cfg_file, ["head_shrinkage=0.1", "policy=drift"])
    assert (cfg.device.head_shrinkage, cfg.device.flip_steps, cfg.device.policy) == (
        0.1,
        1,
        "drift",
    )
    assert cfg.device.seed == cfg.seed == 4  # the run's seed is the device's
    # what the file and --set named is the run's choice, even at a default's value
    assert cfg.device_chosen == {"head_shrinkage", "flip_steps", "policy"}
    assert load_config(None, ["flip_steps=3"]).chosen_device() == {"flip_steps": 3}
    assert RunConfig(device=DeviceConfig(bn_mode="frozen")).chosen_device() == {"bn_mode": "frozen"}


def test_the_flat_dict_has_one_key_per_setting():
    from dataclasses import fields

    flat = RunConfig(seed=3, device=DeviceConfig(head="slda")).to_dict()
    assert flat["head"] == "slda" and flat["seed"] == 3 and "device" not in flat
    run_keys = {f.name for f in fields(RunConfig)} - {"device", "device_chosen"}
    assert set(flat) == run_keys | set(DEVICE_KEYS)
    assert RunConfig.from_dict(flat).device == DeviceConfig(head="slda", seed=3)


def test_replace_routes_device_keys():
    cfg = RunConfig().replace(head="slda", flip_steps=0, epochs=2)
    assert (cfg.device.head, cfg.device.flip_steps, cfg.epochs) == ("slda", 0, 2)
    assert cfg.replace(seed=9).device.seed == 9
    assert cfg.replace(seed=9).replace(seed=4).device.seed == 4


def test_committed_flat_results_still_load_and_match():
    """Old results.json files keep the device keys at the top of their flat ``config``:
    they load (a setting added since at the value that reproduces them), and the grid's
    reuse check still finds its committed cells."""
    import json
    from pathlib import Path

    from qcore.config import ADDED_SETTINGS, ANY, settings_before

    root = Path(__file__).resolve().parents[1]
    files = sorted(root.glob("docs/bench-*/**/results.json"))[::10]
    files += sorted((root / "tests/eval/expected").glob("*.json"))
    matched = 0
    for path in files:
        stored = json.loads(path.read_text())["config"]
        then = {k: v for k, v in settings_before(stored).items() if v is not ANY}
        cfg = RunConfig.from_dict({**then, **stored})
        assert cfg.device.head == stored.get("head", "model"), path
        assert cfg.device.flip_steps == stored["flip_steps"], path
        # a cell that predates a setting not listed as added is stale, as before
        if set(cfg.to_dict()) <= set(stored) | set(ADDED_SETTINGS):
            assert cfg.made_with(stored), path
            matched += 1
    assert matched >= len(files) // 2


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
        (["head_shrinkage=0"], "head_shrinkage"),
        (["lr=0"], "setting lr must be > 0"),
        (["label_fraction=1.5"], r"label_fraction must lie in \[0, 1\]"),
        (["threads=0"], "threads must be >= 1"),
        (["bits=2,9"], "bit-width 9"),
        (["policy=sometimes"], "unknown policy"),
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


def test_the_run_holds_a_device_config():
    dev = DeviceConfig(flip_steps=5, flip_guard="layer", flip_budget=None, guard_margin=0.2)
    cfg = RunConfig(seed=7, device=dev)
    assert cfg.device == dev.replace(seed=7)
    assert RunConfig().device == DeviceConfig()
    with pytest.raises(QCoreError, match="DeviceConfig"):
        RunConfig(device={"head": "slda"})  # type: ignore[arg-type]
    with pytest.raises(QCoreError, match="the device's seed is the run's: set seed=5"):
        RunConfig(seed=7, device=DeviceConfig(seed=5))
    assert RunConfig(seed=5, device=DeviceConfig(seed=5)).device.seed == 5


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
    from qcore.config import settings_help

    for cls in (RunConfig, DeviceConfig):
        text = settings_help(cls)
        for key, value in cls().to_dict().items():
            shown = ",".join(map(str, value)) if isinstance(value, list) else value
            assert f"  {key} = {'none' if shown is None else shown}\n" in text, key
        lines = text.splitlines()
        helps = [lines[i + 1].strip() for i, ln in enumerate(lines) if " = " in ln]
        assert all(helps), f"a {cls.__name__} setting has no help line"
    assert "DeviceConfig's defaults" in settings_help(DeviceConfig)


def test_device_help_shows_given_values():
    from qcore.config import settings_help

    text = settings_help(DeviceConfig, DeviceConfig(head="slda", flip_steps=0), "a.qcore")
    assert "settings of a.qcore" in text and "defaults" not in text
    assert "  head = slda\n" in text and "  flip_steps = 0\n" in text


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
