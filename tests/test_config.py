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
