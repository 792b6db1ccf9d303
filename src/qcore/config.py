"""Every setting of a run, in one frozen dataclass: the one home of defaults.

Library code takes a :class:`RunConfig`; only the CLI parses files and ``key=value``
overrides into one, with errors that name the offending key.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, fields
from pathlib import Path

from qcore.core.quant import check_bits
from qcore.edge.calibrate import DEFAULT_FLIP_BUDGET, check_flip_budget
from qcore.errors import QCoreError

FLIP_GUARDS = ("pass", "backtrack", "layer", "off")


@dataclass(frozen=True)
class RunConfig:
    # data and scenario
    dataset: str = "hapt"
    data_path: str | None = None
    source: int = 1
    target: int = 4
    n_batches: int = 10
    test_fraction: float = 0.2
    # model: the small reference InceptionTime (57,030 parameters for 6 channels, 6 classes)
    # keeps the default run to minutes on 2 cores; configs/paper.toml has the paper's 32 x 6
    filters: int = 16
    depth: int = 3
    # float training in the cloud
    epochs: int = 30
    lr: float = 0.01
    batch_size: int = 64
    record_every: int = 5
    # quantization: bit-widths to deploy; the float model is always reported too
    bits: tuple[int, ...] = (4,)
    dynamics_bits: tuple[int, ...] = (2, 3, 4, 5, 8)
    # the method(s) streamed over the target batches (comma-separated)
    method: str = "qcore"
    # back-prop calibration (reference): steps per stream batch, and on the source data
    calib_steps: int = 10
    calib_lr: float = 1e-3
    source_calib_epochs: int = 2
    # QCore
    core_size: float = 20  # samples (>= 1) or a fraction of the source training set (< 1)
    core_mode: str = "proportional"
    old_quota: float | None = None  # share of the core kept for old samples (None: by score)
    flip_steps: int = 3
    flip_teacher_lr: float = 0.05  # teacher Adam lr in units of each layer's quantization step
    flip_guard: str = "pass"  # pass | backtrack | layer | off
    flip_budget: float | None = DEFAULT_FLIP_BUDGET  # most codes a pass may move (share; None: all)
    bn_mode: str = "reestimate"
    # reproducibility and machine
    seed: int = 0
    threads: int = 2

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
        if self.core_mode not in ("proportional", "stratified", "balanced"):
            raise QCoreError(f"unknown core_mode {self.core_mode!r}")
        if self.old_quota is not None and not 0.0 <= self.old_quota <= 1.0:
            raise QCoreError(f"setting old_quota must be in [0, 1], got {self.old_quota}")
        check_flip_budget(self.flip_budget)
        if self.flip_guard not in FLIP_GUARDS:
            raise QCoreError(
                f"unknown flip_guard {self.flip_guard!r}: choose {', '.join(FLIP_GUARDS)}"
            )
        if self.bn_mode not in ("frozen", "reestimate"):
            raise QCoreError(f"unknown bn_mode {self.bn_mode!r}: choose frozen or reestimate")
        if self.source == self.target:
            raise QCoreError("source and target domains must differ")

    @property
    def methods(self) -> tuple[str, ...]:
        """``method`` may list several, comma-separated: they share one trained model."""
        return tuple(m.strip() for m in self.method.split(",") if m.strip())

    def to_dict(self) -> dict[str, object]:
        return {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
            for f in fields(self)
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> RunConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise QCoreError(f"unknown setting(s): {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        return cls(**{k: _coerce(k, v, hints[k]) for k, v in data.items()})

    def replace(self, **changes: object) -> RunConfig:
        return dataclasses.replace(self, **changes)


def _coerce(key: str, value: object, hint: object) -> object:
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
            return float(value) if float in args else str(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if hint is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise QCoreError(f"setting {key}: cannot read {value!r} as {hint}") from None


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """``["key=value", ...]`` -> dict, with a clear error for a malformed pair."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise QCoreError(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
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
