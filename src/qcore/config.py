"""Every setting, in frozen dataclasses: the one home of defaults.

:class:`DeviceConfig` is what a device's calibration step reads (flip passes, guard,
budget, BatchNorm mode, core update, rollback margin, policy, seed); it travels in the
artifact. :class:`RunConfig` is a whole run (data, model, training, bit-widths, methods)
and builds the device's configuration with :meth:`RunConfig.device_config`. Library
code takes these objects; only the CLI parses TOML files and ``key=value`` overrides into
them, with errors that name the offending key. Each field carries one line of help in
its metadata, from which ``qcore run --help`` and ``qcore device --help`` list every
setting. This module imports nothing beyond ``qcore.core`` and ``qcore.errors``.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Self

from qcore.core.quant import check_bits
from qcore.errors import QCoreError

FlipGuard = Literal["pass", "backtrack", "layer", "off"]
BnMode = Literal["reestimate", "frozen"]
CoreMode = Literal["proportional", "stratified", "balanced"]
HeadKind = Literal["model", "slda"]
FLIP_GUARDS: tuple[FlipGuard, ...] = typing.get_args(FlipGuard)
BN_MODES: tuple[BnMode, ...] = typing.get_args(BnMode)
CORE_MODES: tuple[CoreMode, ...] = typing.get_args(CoreMode)
HEADS: tuple[HeadKind, ...] = typing.get_args(HeadKind)
DEFAULT_FLIP_BUDGET = 0.01  # chosen on validation pairs (docs/results.md)
# Settings added after results were first recorded, with the value that reproduces what
# qcore did before each existed: results stored without the key are valid at that value
# (ANY: at every value, as the shrinkage of a head that did not exist).
ANY = object()
ADDED_SETTINGS: dict[str, object] = {
    "head": "model",
    "head_shrinkage": ANY,
    "head_bits": None,
    "reset_window": 0,
    "reset_margin": ANY,
    "label_fraction": 1.0,
    "pseudo_threshold": None,
    "new_classes": "",
    "head_source_weight": 1.0,
    "reset_alpha": None,
}
_NO_VALUE = object()


def setting(default: Any, help: str) -> Any:  # noqa: A002  (argparse's word)
    """A dataclass field with one line of help (listed by ``--help``)."""
    return field(default=default, metadata={"help": help})


def check_choice(key: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise QCoreError(f"unknown {key} {value!r}: choose {', '.join(choices)}")


def check_flip_budget(budget: float | None) -> None:
    """A flip budget is None (no cap) or a share of the codes in (0, 1]."""
    if budget is not None and not 0.0 < budget <= 1.0:
        raise QCoreError(f"flip budget must lie in (0, 1], got {budget}")


@dataclass(frozen=True)
class Policy:
    """When a device calibrates: ``kind`` "every" (each ``every``-th batch) or "drift"."""

    kind: Literal["every", "drift"]
    every: int = 1

    def __str__(self) -> str:
        if self.kind == "drift":
            return "drift"
        return "every" if self.every == 1 else f"every:{self.every}"


def parse_policy(spec: object) -> Policy:
    """``"every"``, ``"every:N"`` (N >= 1) or ``"drift"`` -> :class:`Policy`."""
    if spec == "every":
        return Policy("every")
    if spec == "drift":
        return Policy("drift")
    if isinstance(spec, str) and spec.startswith("every:"):
        n = spec.split(":", 1)[1]
        if n.isdigit() and int(n) >= 1:
            return Policy("every", int(n))
    raise QCoreError(f"unknown policy {spec!r}: choose every, every:N (N >= 1) or drift")


class Settings:
    """What every settings dataclass offers: a JSON-ready dict, construction from one
    (with each value coerced to its field's type), and ``replace``."""

    def to_dict(self) -> dict[str, object]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Self:
        return from_dict(cls, data)

    def replace(self, **changes: object) -> Self:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def made_with(self, stored: dict[str, object]) -> bool:
        """Whether results recorded with the settings ``stored`` are this config's.

        Every stored key must be a setting with this config's value. A setting the stored
        dict lacks matches only if it is in :data:`ADDED_SETTINGS` (added without changing
        what the other settings do) and this config has it at the value listed there.
        """
        mine = self.to_dict()
        if set(stored) - set(mine):
            return False
        return all(
            stored[k] == v if k in stored else ADDED_SETTINGS.get(k, _NO_VALUE) in (v, ANY)
            for k, v in mine.items()
        )


@dataclass(frozen=True)
class DeviceConfig(Settings):
    """How a device calibrates; stored in the artifact's ``device`` section."""

    head: HeadKind = setting(
        "model",
        "model: predict with the deployed head; slda: with the streaming closed-form head "
        "(class means and shared covariance of pooled features, updated by every label)",
    )
    head_shrinkage: float = setting(
        1e-3, "slda head: covariance shrinkage towards the identity, in (0, 1]"
    )
    head_bits: int | None = setting(
        None, "slda head: weights rounded to this many bits per class (none: float32)"
    )
    flip_steps: int = setting(
        3, "flip passes per calibration step (each one forward pass; 0: no flips)"
    )
    flip_guard: FlipGuard = setting(
        "pass",
        "pass: keep a pass only if the loss on core+batch does not rise; backtrack: retry a "
        "rejected pass with its most confident half, quarter, ...; layer: accept each "
        "layer's flips on their own; off: apply every pass",
    )
    flip_budget: float | None = setting(
        DEFAULT_FLIP_BUDGET, "most codes one pass may move, as a share of all codes (none: no cap)"
    )
    bn_mode: BnMode = setting(
        "reestimate", "reestimate: BatchNorm statistics from core+batch each step; frozen: keep"
    )
    core_mode: CoreMode = setting(
        "proportional",
        "core draw: proportional to misses, stratified (PMF over miss counts) or balanced "
        "(equal quota per class)",
    )
    old_quota: float | None = setting(
        None, "share of the core reserved for old samples at each update (none: by score)"
    )
    guard_margin: float = setting(
        0.05, "roll a step back when accuracy on the old core or the batch drops by more"
    )
    reset_window: int = setting(
        5,
        "return to the deployed model when, over this many recent labelled batches, the "
        "device predicted worse than the deployed model would have (0: never)",
    )
    reset_margin: float = setting(
        0.02, "reset only when the device's accuracy over that window is lower by more"
    )
    reset_alpha: float | None = setting(
        0.05,
        "while the backbone has not moved (the device learns only its head), reset only when, "
        "in addition, an exact one-sided sign test on the windows where the device and the "
        "deployed model disagree gives p below this (none: the margin alone)",
    )
    pseudo_threshold: float | None = setting(
        None,
        "slda head: a window without a label whose confidence reaches this is added to the "
        "statistics as its predicted class (none: unlabelled windows are only predicted)",
    )
    policy: str = setting("every", "when to calibrate: every, every:N or drift")
    seed: int = setting(0, "seed of the core updates (with the step number)")

    def __post_init__(self) -> None:
        if isinstance(self.flip_steps, bool) or not isinstance(self.flip_steps, int):
            raise QCoreError(f"setting flip_steps must be an integer, got {self.flip_steps!r}")
        if self.flip_steps < 0:
            raise QCoreError(f"setting flip_steps must be >= 0, got {self.flip_steps}")
        check_choice("head", self.head, HEADS)
        if self.head_bits is not None:
            check_bits(self.head_bits)
        if not 0.0 < self.head_shrinkage <= 1.0:
            raise QCoreError(
                f"setting head_shrinkage must lie in (0, 1], got {self.head_shrinkage}"
            )
        check_choice("flip_guard", self.flip_guard, FLIP_GUARDS)
        check_flip_budget(self.flip_budget)
        check_choice("bn_mode", self.bn_mode, BN_MODES)
        check_choice("core_mode", self.core_mode, CORE_MODES)
        if self.old_quota is not None and not 0.0 <= self.old_quota <= 1.0:
            raise QCoreError(f"setting old_quota must be in [0, 1], got {self.old_quota}")
        if not 0.0 <= self.guard_margin <= 1.0:
            raise QCoreError(f"setting guard_margin must lie in [0, 1], got {self.guard_margin}")
        if isinstance(self.reset_window, bool) or not isinstance(self.reset_window, int):
            raise QCoreError(f"setting reset_window must be an integer, got {self.reset_window!r}")
        if self.reset_window < 0:
            raise QCoreError(f"setting reset_window must be >= 0, got {self.reset_window}")
        if not 0.0 <= self.reset_margin <= 1.0:
            raise QCoreError(f"setting reset_margin must lie in [0, 1], got {self.reset_margin}")
        if self.reset_alpha is not None and not 0.0 < self.reset_alpha <= 1.0:
            raise QCoreError(f"setting reset_alpha must lie in (0, 1], got {self.reset_alpha}")
        if self.pseudo_threshold is not None and not 0.0 < self.pseudo_threshold <= 1.0:
            raise QCoreError(
                f"setting pseudo_threshold must lie in (0, 1], got {self.pseudo_threshold}"
            )
        parse_policy(self.policy)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise QCoreError(f"setting seed must be an integer, got {self.seed!r}")

    @property
    def schedule(self) -> Policy:
        return parse_policy(self.policy)


DEVICE_KEYS = tuple(f.name for f in fields(DeviceConfig))
_DEVICE = DeviceConfig()


@dataclass(frozen=True)
class RunConfig(Settings):
    """A whole run; the device settings are the fields of :class:`DeviceConfig`."""

    # data and scenario
    dataset: str = setting("hapt", "dataset name (qcore data info NAME)")
    data_path: str | None = setting(None, "dataset root or file where the loader needs one")
    source: int = setting(1, "source domain (subject, arm side, ...) the cloud trains on")
    target: int = setting(4, "target domain streamed to the device")
    n_batches: int = setting(10, "stream batches cut from the target training part")
    test_fraction: float = setting(0.2, "share of each domain held out for testing")
    new_classes: str = setting(
        "",
        "classes held out of the cloud (comma-separated names or indices): the stream brings "
        "them to the device as new classes",
    )
    label_fraction: float = setting(
        1.0,
        "share of each stream batch's windows that reach the device with their label "
        "(seeded); the others arrive without one (accuracy is measured on all)",
    )
    # the small reference InceptionTime (57,030 parameters for 6 channels, 6 classes) keeps
    # the default run to minutes on 2 cores; configs/paper.toml has the paper's 32 x 6
    filters: int = setting(16, "InceptionTime filters per branch")
    depth: int = setting(3, "InceptionTime blocks")
    epochs: int = setting(30, "float training epochs")
    lr: float = setting(0.01, "float training learning rate (Adam)")
    batch_size: int = setting(64, "training batch size")
    record_every: int = setting(5, "epochs between training-dynamics observations")
    bits: tuple[int, ...] = setting((4,), "bit-widths to deploy (comma-separated, 2..8)")
    dynamics_bits: tuple[int, ...] = setting(
        (2, 3, 4, 5, 8), "bit-widths observed in the training dynamics"
    )
    # the default device method: the streaming head alone, chosen on validation pairs
    # (docs/results.md); the paper's recipe is method=qcore
    method: str = setting("slda", "method(s) streamed over the target (comma-separated)")
    calib_steps: int = setting(10, "back-prop steps per batch (backprop, flip teacher)")
    calib_lr: float = setting(1e-3, "back-prop calibration learning rate")
    source_calib_epochs: int = setting(2, "back-prop calibration epochs on the source")
    core_size: float = setting(20, "core samples (>= 1) or a fraction of the source (< 1)")
    # chosen on validation pairs (docs/results.md): with few labels the target moves the
    # class means sooner, with every label the result is the same
    head_source_weight: float = setting(
        0.3,
        "streaming head: weight of each source window in the statistics the cloud ships "
        "(1: as much as a labelled target window; smaller: target labels move it sooner)",
    )
    flip_teacher_lr: float = setting(
        0.05, "flip teacher's Adam lr in units of each layer's quantization step"
    )
    # the device's settings, with DeviceConfig's defaults and help; seed also seeds the cloud
    head: HeadKind = _DEVICE.head
    head_shrinkage: float = _DEVICE.head_shrinkage
    head_bits: int | None = _DEVICE.head_bits
    flip_steps: int = _DEVICE.flip_steps
    flip_guard: FlipGuard = _DEVICE.flip_guard
    flip_budget: float | None = _DEVICE.flip_budget
    bn_mode: BnMode = _DEVICE.bn_mode
    core_mode: CoreMode = _DEVICE.core_mode
    old_quota: float | None = _DEVICE.old_quota
    guard_margin: float = _DEVICE.guard_margin
    reset_window: int = _DEVICE.reset_window
    reset_margin: float = _DEVICE.reset_margin
    reset_alpha: float | None = _DEVICE.reset_alpha
    pseudo_threshold: float | None = _DEVICE.pseudo_threshold
    policy: str = _DEVICE.policy
    seed: int = setting(0, "seed of every random choice (cloud and device)")
    threads: int = setting(2, "torch and BLAS threads")

    def __post_init__(self) -> None:
        for name in (
            "n_batches",
            "filters",
            "depth",
            "epochs",
            "batch_size",
            "record_every",
            "threads",
        ):
            if getattr(self, name) < 1:
                raise QCoreError(f"setting {name} must be >= 1, got {getattr(self, name)}")
        if not (
            0 < self.core_size < 1
            or (self.core_size >= 1 and self.core_size == int(self.core_size))
        ):
            raise QCoreError(
                f"setting core_size must be a count >= 1 or a fraction in (0, 1), "
                f"got {self.core_size}"
            )
        if not 0.0 < self.head_source_weight <= 1.0:
            raise QCoreError(
                f"setting head_source_weight must lie in (0, 1], got {self.head_source_weight}"
            )
        if not 0.0 <= self.label_fraction <= 1.0:
            raise QCoreError(
                f"setting label_fraction must lie in [0, 1], got {self.label_fraction}"
            )
        if not 0.0 < self.test_fraction < 1.0:
            raise QCoreError(f"setting test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.lr <= 0 or self.calib_lr <= 0:
            raise QCoreError("learning rates must be positive")
        if not self.bits:
            raise QCoreError("setting bits needs at least one bit-width")
        for b in (*self.bits, *self.dynamics_bits):
            check_bits(b)
        if not self.methods:
            raise QCoreError("setting method needs at least one method name")
        self.device_config()  # validates the device settings
        if self.source == self.target:
            raise QCoreError("source and target domains must differ")

    def device_config(self) -> DeviceConfig:
        """The device's settings of this run."""
        return DeviceConfig(**{k: getattr(self, k) for k in DEVICE_KEYS})

    @property
    def methods(self) -> tuple[str, ...]:
        """``method`` may list several, comma-separated: they share one trained model."""
        return tuple(m.strip() for m in self.method.split(",") if m.strip())


def _help(cls: type, name: str) -> str:
    """A field's help; RunConfig's device fields take DeviceConfig's."""
    for owner in (cls, DeviceConfig):
        f = owner.__dataclass_fields__.get(name)  # type: ignore[attr-defined]
        if f is not None and "help" in f.metadata:
            return str(f.metadata["help"])
    return ""


def settings_help(cls: type) -> str:
    """Every setting of ``cls``: ``name = default`` and its help (for ``--help``)."""
    where = "--set KEY=VALUE" if cls is DeviceConfig else "--set KEY=VALUE or --config FILE.toml"
    lines = [f"settings ({where}):"]
    for f in fields(cls):
        default = f.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        shown = "none" if shown is None else shown
        lines.append(f"  {f.name} = {shown}")
        lines.append(f"      {_help(cls, f.name)}")
    return "\n".join(lines)


C = typing.TypeVar("C")


def to_dict(cfg: object) -> dict[str, object]:
    """A config as a JSON-ready dict (tuples become lists)."""
    return {
        f.name: (list(v) if isinstance(v := getattr(cfg, f.name), tuple) else v)
        for f in fields(cfg)  # type: ignore[arg-type]
    }


def from_dict(cls: type[C], data: dict[str, object]) -> C:
    """``cls`` from a dict of (TOML, JSON or ``--set`` string) values; unknown keys fail."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        kind = "device setting(s)" if cls is DeviceConfig else "setting(s)"
        raise QCoreError(f"unknown {kind}: {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _coerce(k, v, hints[k]) for k, v in data.items()})


def _coerce(key: str, value: Any, hint: object) -> object:
    """Turn a TOML value or a ``--set`` string into the field's type, or say why not."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if origin is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(int(str(v).strip()) for v in items if str(v).strip())
        if type(None) in args:  # optional value
            if value in (None, "", "none", "None"):
                return None
            if float in args:
                return float(value)
            return int(value) if int in args else str(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if hint is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise QCoreError(f"setting {key}: cannot read {value!r} as {hint}") from None


def parse_overrides(pairs: Sequence[str]) -> dict[str, str]:
    """``["key=value", ...]`` -> dict, with a clear error for a malformed pair."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise QCoreError(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Defaults, then a TOML file (flat keys), then ``key=value`` overrides."""
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
    return RunConfig.from_dict(data)


def override_device(cfg: DeviceConfig, overrides: Sequence[str]) -> DeviceConfig:
    """``cfg`` with ``key=value`` overrides (the device's settings only)."""
    return DeviceConfig.from_dict({**cfg.to_dict(), **parse_overrides(list(overrides))})
