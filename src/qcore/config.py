"""Every setting, in frozen dataclasses: the one home of defaults, help and constraints.

:class:`DeviceConfig` (:mod:`qcore.device_config`, imported here) is what a device's
calibration step reads; it travels in the artifact. :class:`RunConfig` is a whole run
(data, model, training, bit-widths, methods) and holds the device settings its methods
start from in its field ``device``; a method may fix some of them
(:mod:`qcore.methods.registry`). Library code takes these objects; only the CLI parses
TOML files and ``key=value`` overrides into them, with errors that name the
offending key. A run's settings are written flat: one key per setting, the device's
among the run's (``seed`` once: the run's seed is also the device's), so a flat TOML file,
``--set head_shrinkage=0.1`` and every stored ``results.json`` read alike.

Each field declares, in :func:`setting`, its default, one line of help (listed by ``qcore
run --help`` and ``qcore device --help``) and its bounds; its type hint declares the rest
(integer, number, a ``Literal``'s choices, ``None`` allowed), so one check reads every
field. This module imports nothing beyond ``qcore.core``, ``qcore.device_config`` and
``qcore.errors``.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from qcore.core.quant import check_bits
from qcore.core.settings import (
    Settings,
    check_choice,  # noqa: F401  (edge checks arguments with it)
    from_dict,
    listing,
    parse_overrides,
    setting,
    settings_of,
)
from qcore.device_config import (  # noqa: F401  (re-exported: the settings are found here)
    ASK_POLICY,
    BN_MODES,
    CORE_MODES,
    DEFAULT_FLIP_BUDGET,
    DEVICE_KEYS,
    FLIP_GUARDS,
    HEADS,
    LABEL_POLICIES,
    RUN_DEVICE_KEYS,
    BnMode,
    CoreMode,
    DeviceConfig,
    FlipGuard,
    HeadKind,
    LabelPolicy,
    Policy,
    check_flip_budget,
    parse_policy,
)
from qcore.errors import QCoreError

_DEVICE = DeviceConfig()

# Settings added after results were first recorded, with the value that reproduces what
# qcore did before each existed: results stored without the key are valid at that value
# (ANY: at every value, as the shrinkage of a head that did not exist).
ANY = object()
_NO_VALUE = object()  # no value reproduces what was done before


def _unless_drift(stored: dict[str, object]) -> object:
    return _NO_VALUE if stored.get("policy") == "drift" else ANY


ADDED_SETTINGS: dict[str, object] = {
    "head": "model",
    "head_shrinkage": ANY,
    "head_bits": None,
    "reset_window": 0,
    "reset_margin": ANY,
    "label_fraction": 1.0,
    # the windows given labels were drawn at random; at label fraction 0 or 1 there is
    # nothing to choose, and every policy gives the same masks
    "label_policy": lambda stored: ANY if stored.get("label_fraction", 1.0) in (0, 1) else "random",
    "pseudo_threshold": None,
    "new_classes": "",
    "head_source_weight": 1.0,
    "reset_alpha": None,
    # the device's signals change no prediction; they decide when policy=drift calibrates,
    # which watched the mean confidence before they existed
    "confidence_dof": _unless_drift,
    "confidence_temperature": _unless_drift,
    "novelty_threshold": _unless_drift,
    "confidence_novelty_power": _unless_drift,
    "drift_share": _unless_drift,
    "drift_release": _unless_drift,
    # a device that asks for labels (qcore.edge.asking) did not exist before them
    "ask_fraction": None,
    "ask_policy": ANY,
    "ask_keep": ANY,
    "share_clip": None,
    # a new class was predicted from its first window: 1 where the run had new classes
    "new_class_min": lambda stored: 1 if stored.get("new_classes") else ANY,
}


def settings_before(stored: dict[str, object]) -> dict[str, object]:
    """Each added setting's value in results stored with the flat settings ``stored``
    (:data:`ADDED_SETTINGS`, with the values that depend on ``stored`` resolved)."""
    return {k: v(stored) if callable(v) else v for k, v in ADDED_SETTINGS.items()}


def _check_bits(key: str, bits: int) -> None:
    check_bits(bits)


def _check_core_size(key: str, size: float) -> None:
    if not (0 < size < 1 or (size >= 1 and size == int(size))):
        raise QCoreError(f"setting {key} must be a count >= 1 or a fraction in (0, 1), got {size}")


@dataclass(frozen=True)
class RunConfig(Settings):
    """A whole run; the device's settings are the :class:`DeviceConfig` in ``device``.

    ``device.seed`` is always the run's ``seed`` (a DeviceConfig with another seed than
    the default is refused). ``device_chosen`` names the device
    settings the user set (in a TOML file or ``--set``: :func:`load_config` records them);
    with those that differ from DeviceConfig's defaults they are :meth:`chosen_device`,
    which a method's fixed settings must not contradict. It is not a setting: it is not
    compared, listed or written.
    """

    # data and scenario
    dataset: str = setting("hapt", "dataset name (qcore data info NAME)")
    data_path: str | None = setting(None, "dataset root or file where the loader needs one")
    source: int = setting(1, "source domain (subject, arm side, ...) the cloud trains on")
    target: int = setting(4, "target domain streamed to the device")
    n_batches: int = setting(10, "stream batches cut from the target training part", ">= 1")
    test_fraction: float = setting(0.2, "share of each domain held out for testing", "(0, 1)")
    new_classes: str = setting(
        "",
        "classes held out of the cloud (comma-separated names or indices): the stream brings "
        "them to the device as new classes",
    )
    label_fraction: float = setting(
        1.0,
        "share of each stream batch's windows that reach the device with their label "
        "(seeded); the others arrive without one (accuracy is measured on all)",
        "[0, 1]",
    )
    # margin, as the device's ask_policy: the second rule, on new validation seeds, adopted
    # it (docs/results.md, "Label requests: a second rule for margin")
    label_policy: LabelPolicy = setting(
        ASK_POLICY,
        "which windows of a stream batch get the label_fraction's labels: random (seeded), "
        "or those the streaming-head device asks for (margin, novel, margin-cover, "
        "novel-cover: qcore.edge.asking); every method of the run gets the same",
    )
    # the small reference InceptionTime (57,030 parameters for 6 channels, 6 classes) keeps
    # the default run to minutes on 2 cores; configs/paper.toml has the paper's 32 x 6
    filters: int = setting(16, "InceptionTime filters per branch", ">= 1")
    depth: int = setting(3, "InceptionTime blocks", ">= 1")
    epochs: int = setting(30, "float training epochs", ">= 1")
    lr: float = setting(0.01, "float training learning rate (Adam)", "> 0")
    batch_size: int = setting(64, "training batch size", ">= 1")
    record_every: int = setting(5, "epochs between training-dynamics observations", ">= 1")
    bits: tuple[int, ...] = setting(
        (4,), "bit-widths to deploy (comma-separated, 2..8)", _check_bits
    )
    dynamics_bits: tuple[int, ...] = setting(
        (2, 3, 4, 5, 8), "bit-widths observed in the training dynamics", _check_bits
    )
    # the default device method: the streaming head alone, chosen on validation pairs
    # (docs/results.md); the paper's recipe is method=qcore
    method: str = setting("slda", "method(s) streamed over the target (comma-separated)")
    calib_steps: int = setting(10, "back-prop steps per batch (backprop, flip teacher)")
    calib_lr: float = setting(1e-3, "back-prop calibration learning rate", "> 0")
    source_calib_epochs: int = setting(2, "back-prop calibration epochs on the source")
    core_size: float = setting(
        20, "core samples (>= 1) or a fraction of the source (< 1)", _check_core_size
    )
    # chosen on validation pairs (docs/results.md): with few labels the target moves the
    # class means sooner, with every label the result is the same
    head_source_weight: float = setting(
        0.3,
        "streaming head: weight of each source window in the statistics the cloud ships "
        "(1: as much as a labelled target window; smaller: target labels move it sooner)",
        "(0, 1]",
    )
    flip_teacher_lr: float = setting(
        0.05, "flip teacher's Adam lr in units of each layer's quantization step"
    )
    seed: int = setting(0, "seed of every random choice (cloud and device)")
    threads: int = setting(2, "torch and BLAS threads", ">= 1")
    device: DeviceConfig = field(default_factory=DeviceConfig)
    device_chosen: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.device, DeviceConfig):
            raise QCoreError(f"RunConfig.device must be a DeviceConfig, got {self.device!r}")
        unknown = sorted(set(self.device_chosen) - set(RUN_DEVICE_KEYS))
        if unknown:
            raise QCoreError(f"unknown device setting(s) chosen: {', '.join(unknown)}")
        if self.device.seed not in (self.seed, _DEVICE.seed):
            raise QCoreError(
                f"the device's seed is the run's: set seed={self.device.seed} on the run, "
                "not on its DeviceConfig"
            )
        if self.device.seed != self.seed:  # the default gives way
            object.__setattr__(self, "device", self.device.replace(seed=self.seed))
        if not self.bits:
            raise QCoreError("setting bits needs at least one bit-width")
        if not self.methods:
            raise QCoreError("setting method needs at least one method name")
        if self.source == self.target:
            raise QCoreError("source and target domains must differ")

    def replace(self, **changes: object) -> Self:
        """A copy with ``changes``; a device setting's key (``head=...``) changes ``device``."""
        device = {k: changes.pop(k) for k in RUN_DEVICE_KEYS if k in changes}
        if "seed" in changes:
            device["seed"] = changes["seed"]
        if device:
            base = changes.get("device", self.device)
            changes["device"] = base.replace(**device)  # type: ignore[attr-defined]
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def chosen_device(self) -> dict[str, object]:
        """The device settings this run chose, by name: those in ``device_chosen`` and
        those that differ from :class:`DeviceConfig`'s defaults."""
        return {
            k: getattr(self.device, k)
            for k in RUN_DEVICE_KEYS
            if k in self.device_chosen or getattr(self.device, k) != getattr(_DEVICE, k)
        }

    def to_dict(self) -> dict[str, object]:
        """Flat: the run's settings, then the device's (but its seed, the run's)."""
        device = self.device.to_dict()
        return {**super().to_dict(), **{k: device[k] for k in RUN_DEVICE_KEYS}}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Self:
        """From a flat dict (TOML, JSON, ``--set`` strings): device keys go to ``device``."""
        run = {k: v for k, v in data.items() if k not in RUN_DEVICE_KEYS}
        device = {k: v for k, v in data.items() if k in RUN_DEVICE_KEYS}
        cfg = from_dict(cls, run)
        return cfg.replace(device=from_dict(DeviceConfig, {**device, "seed": cfg.seed}))

    def made_with(self, stored: dict[str, object]) -> bool:
        """Whether results recorded with the flat settings ``stored`` are this run's.

        Every stored key must be a setting with this run's value. A setting the stored
        dict lacks matches only if it is in :data:`ADDED_SETTINGS` (added without changing
        what the other settings do) and this run has it at the value listed there (a
        function of the stored settings where that value depends on them).
        """
        mine = self.to_dict()
        if set(stored) - set(mine):
            return False

        then = settings_before(stored)
        return all(
            stored[k] == v if k in stored else then.get(k, _NO_VALUE) in (v, ANY)
            for k, v in mine.items()
        )

    @property
    def methods(self) -> tuple[str, ...]:
        """``method`` may list several, comma-separated: they share one trained model."""
        return tuple(m.strip() for m in self.method.split(",") if m.strip())


def settings_help(cls: type, values: DeviceConfig | None = None, source: str = "") -> str:
    """Every setting of ``cls``: ``name = default`` and its help (for ``--help``).

    For :class:`DeviceConfig`, ``values`` (read from ``source``, an artifact) replaces
    the defaults; without it the listing says they are DeviceConfig's defaults.
    """
    if cls is RunConfig:
        run = RunConfig()
        return "\n".join(
            [
                "settings (--set KEY=VALUE or --config FILE.toml):",
                *listing(run, [f.name for f in settings_of(RunConfig)]),
                "device settings (DeviceConfig; each method may fix some of them):",
                *listing(run.device, RUN_DEVICE_KEYS),
            ]
        )
    if values is None:
        title = (
            "settings (--set KEY=VALUE), at DeviceConfig's defaults; an artifact runs with "
            "its own (qcore device ARTIFACT --help lists them):"
        )
    else:
        title = f"settings of {source or 'the artifact'} (--set KEY=VALUE overrides):"
    return "\n".join([title, *listing(values or _DEVICE, DEVICE_KEYS)])


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Defaults, then a TOML file (flat keys), then ``key=value`` overrides; the device
    settings either names are recorded as the run's choice (``device_chosen``)."""
    data: dict[str, object] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise QCoreError(f"config file not found: {p}")
        try:
            data.update(tomllib.loads(p.read_text()))
        except tomllib.TOMLDecodeError as exc:
            raise QCoreError(f"config file {p} is not valid TOML: {exc}") from None
    data.update(parse_overrides(list(overrides)))
    cfg = RunConfig.from_dict(data)
    return cfg.replace(device_chosen=frozenset(data) & set(RUN_DEVICE_KEYS))


def override_device(cfg: DeviceConfig, overrides: Sequence[str]) -> DeviceConfig:
    """``cfg`` with ``key=value`` overrides (the device's settings only)."""
    data = {**cfg.to_dict(), **parse_overrides(list(overrides))}
    return from_dict(DeviceConfig, data, "device setting(s)")
