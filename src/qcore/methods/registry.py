"""The method registry: a plain dict filled by an explicit decorator.

A method is a factory ``(Deployment) -> Calibrator``. The runner builds one
:class:`Deployment` per bit-width (the cloud's hand-over to the device) and asks
:func:`qcore.methods.make` for each method named in the config. Every method module
of this package registers itself here when :mod:`qcore.methods` imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qcore.config import RunConfig
from qcore.coreset.core import Core

Factory = Callable[["Deployment"], Any]
METHODS: dict[str, Factory] = {}
USES_QCORE: set[str] = set()  # methods that need the core chosen from training dynamics
BACKPROP: set[str] = set()  # methods that back-propagate on the device
UNLABELLED: set[str] = set()  # methods that take batches whose unlabelled windows are -1


def register(
    name: str, *, uses_qcore: bool = False, backprop: bool = False, unlabelled: bool = False
) -> Callable[[Factory], Factory]:
    """Register ``factory`` as method ``name``; ``uses_qcore``: it starts from the QCore
    (so the cloud must record training dynamics for it); ``backprop``: it back-propagates
    on the device (the plots draw these methods apart from the back-prop-free ones);
    ``unlabelled``: its ``observe`` takes a batch whose windows without a label are -1
    (the others get the labelled windows only, and no call for a batch without any)."""

    def deco(factory: Factory) -> Factory:
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        METHODS[name] = factory
        if uses_qcore:
            USES_QCORE.add(name)
        if backprop:
            BACKPROP.add(name)
        if unlabelled:
            UNLABELLED.add(name)
        return factory

    return deco


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
    one dict per bit-width handed to every method's deployment.
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
