"""The method registry: a plain dict filled by an explicit decorator.

A method is a factory ``(Deployment) -> Calibrator``. The runner builds one
:class:`Deployment` per method and bit-width (the cloud's hand-over to the device) and
asks :func:`qcore.methods.all.make` for each method named in the config. Every method
module of this package registers itself here when :mod:`qcore.methods.all` imports it.

A method declares the device settings it fixes (``fixes``: ``slda`` is the streaming head
without flips on a frozen backbone whatever the run says) and the device settings it runs
with (``reads``). :func:`method_device` gives a method its device settings: the run's,
with the fixed ones in place of the defaults; a setting the run chose
(:meth:`qcore.config.RunConfig.chosen_device`) that contradicts a fixed one is an error
naming both. The settings a method read are recorded in its results row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qcore.config import DEVICE_KEYS, RUN_DEVICE_KEYS, DeviceConfig, RunConfig
from qcore.coreset.core import Core
from qcore.errors import QCoreError

Factory = Callable[["Deployment"], Any]
METHODS: dict[str, Factory] = {}
USES_QCORE: set[str] = set()  # methods that need the core chosen from training dynamics
BACKPROP: set[str] = set()  # methods that back-propagate on the device
UNLABELLED: set[str] = set()  # methods that take batches whose unlabelled windows are -1
FIXES: dict[str, dict[str, object]] = {}  # device settings each method fixes
READS: dict[str, tuple[str, ...]] = {}  # device settings each method runs with
CORE_LOOP = ("core_mode", "old_quota", "seed")  # what QCore's core update reads


def register(
    name: str,
    *,
    uses_qcore: bool = False,
    backprop: bool = False,
    unlabelled: bool = False,
    fixes: dict[str, object] | None = None,
    reads: tuple[str, ...] = (),
) -> Callable[[Factory], Factory]:
    """Register ``factory`` as method ``name``; ``uses_qcore``: it starts from the QCore
    (so the cloud must record training dynamics for it); ``backprop``: it back-propagates
    on the device (the plots draw these methods apart from the back-prop-free ones);
    ``unlabelled``: its ``observe`` takes a batch whose windows without a label are -1
    (the others get the labelled windows only, and no call for a batch without any);
    ``fixes``: device settings it runs with whatever the run says; ``reads``: the device
    settings it runs with (``fixes`` among them; a device method reads them all)."""
    fixed = dict(fixes or {})
    DeviceConfig(**fixed)  # a fixed value must be a valid one
    if set(fixed) - set(RUN_DEVICE_KEYS) or set(reads) - set(DEVICE_KEYS):
        raise ValueError(f"method {name!r}: unknown device setting in fixes or reads")
    if set(fixed) - set(reads):
        raise ValueError(f"method {name!r}: fixes settings it does not read")

    def deco(factory: Factory) -> Factory:
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        METHODS[name] = factory
        FIXES[name], READS[name] = fixed, tuple(reads)
        if uses_qcore:
            USES_QCORE.add(name)
        if backprop:
            BACKPROP.add(name)
        if unlabelled:
            UNLABELLED.add(name)
        return factory

    return deco


def _shown(value: object) -> str:
    return "none" if value is None else str(value)


def method_device(name: str, cfg: RunConfig) -> DeviceConfig:
    """The device settings method ``name`` runs with: ``cfg.device`` with the method's
    fixed settings. A setting the run chose that contradicts a fixed one fails:
    ``method slda fixes head=slda; the run sets head=model``."""
    fixed = FIXES[name]
    chosen = cfg.chosen_device()
    for key, value in fixed.items():
        if key in chosen and chosen[key] != value:
            raise QCoreError(
                f"method {name} fixes {key}={_shown(value)}; "
                f"the run sets {key}={_shown(chosen[key])}"
            )
    return cfg.device.replace(**fixed)


def device_record(name: str, device: DeviceConfig) -> dict[str, object]:
    """What a results row records of the device settings method ``name`` ran with."""
    return {k: getattr(device, k) for k in READS[name]}


@dataclass
class Deployment:
    """What the cloud hands to the device for one bit-width.

    ``qmodel``: the deployed quantized torch model (calibrated on the source; copy it
    before changing it); ``core``: the QCore chosen from training dynamics;
    ``source_X``/``source_y``: the source training set, for methods that fill their own
    buffer in the cloud; ``normalizer``/``class_names``: what an artifact records;
    ``label_names``: the classes of the stream's labels when they include classes the
    cloud never saw (empty: ``class_names``);
    ``extras``: cloud-side results a method adds (e.g. the flip network's agreement
    report), copied into the results row; ``shared``: cloud products that several methods
    of the same bit-width would otherwise compute again (e.g. the flip network of a core),
    one dict per bit-width handed to every method's deployment; ``device``: the device
    settings of the method being built (:func:`method_device`; :func:`qcore.methods.all.make`
    sets it).
    """

    cfg: RunConfig
    bits: int
    qmodel: Any
    core: Core
    source_X: np.ndarray
    source_y: np.ndarray
    n_classes: int
    batch_len: int
    normalizer: Any = None
    class_names: tuple[str, ...] = ()
    # the class names of the stream's labels when the cloud held some out (new classes)
    label_names: tuple[str, ...] = ()
    extras: dict[str, Any] = field(default_factory=dict)
    shared: dict[Any, Any] = field(default_factory=dict)
    progress: bool = False  # show progress bars for long cloud-side work
    device: DeviceConfig | None = None
