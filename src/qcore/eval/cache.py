"""The run's cache (``OUT/.cache``, or the grid's ``DIR/.cache``): what the cloud computes
before the stream, kept under a hash of the settings that determine it, so that a rerun,
or a run that adds methods or bit-widths, trains nothing.

Two kinds of entry:

* ``float-KEY.pt``: the trained float model with its training dynamics. A cached run
  always records the dynamics, so that a later run adding a method that starts from the
  QCore (``backprop``, ``qcore``) trains nothing: on the default run (HAPT 1, 30 epochs,
  6 observations at 5 bit-widths, one thread) recording adds about three quarters to the
  float training (17-30 s without, 30-55 s with, on a shared 2-core machine), paid once
  per key, where a missing entry would cost the whole training again. A run without a
  cache records them only when a method needs them. An older entry without dynamics
  serves runs that need none;
* ``source-KEY.pt``: per bit-width, the deployed model's state after back-prop calibration
  on the source (the ``backprop-source`` row), keyed by the float model's key, the
  bit-width and the calibration settings.

Keys are taken from resolved settings: ``new_classes`` by the data's class indices it
holds out (``5,LAYING`` and ``LAYING`` are one key on HAPT), ``data_path`` absolute.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import torch

from qcore.cloud import pipeline
from qcore.cloud.model import InceptionTime
from qcore.cloud.train import CALIB_WINDOWS, Dynamics
from qcore.config import RunConfig
from qcore.core.fileio import write_atomic
from qcore.data.scenario import HeldOut

CACHE_VERSION = 1  # bump when training changes what the same settings produce
# The float model sees the source domain's train split only (its normaliser is fitted
# there too), so the target and the stream's cut are not part of the key: every pair with
# one source and seed shares one trained model.
TRAINING_KEYS = (
    "dataset", "data_path", "source", "test_fraction", "filters", "depth", "epochs", "lr",
    "batch_size", "record_every", "dynamics_bits", "seed", "threads", "new_classes",
)  # fmt: skip
# what the deployed model of one bit-width depends on beyond the float model
SOURCE_KEYS = ("source_calib_epochs", "calib_lr")


def _hash(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def training_key(cfg: RunConfig, hold: HeldOut | None = None) -> str:
    """A hash of everything that determines the trained float model and its dynamics
    (the settings above, resolved; the cache format and the torch version). ``hold``:
    the classes ``cfg.new_classes`` resolves to on the run's data."""
    data = {k: cfg.to_dict()[k] for k in TRAINING_KEYS}
    data["new_classes"] = "" if hold is None else ",".join(str(int(k)) for k in hold.held)
    if cfg.data_path is not None:
        data["data_path"] = str(Path(cfg.data_path).resolve())
    data.update(cache=CACHE_VERSION, torch=torch.__version__)
    return _hash(data)


def source_key(cfg: RunConfig, bits: int, hold: HeldOut | None = None) -> str:
    """A hash of what the deployed model at ``bits`` depends on: the float model's key,
    the bit-width, the quantization's calibration windows and the source calibration."""
    data = {k: cfg.to_dict()[k] for k in SOURCE_KEYS}
    data.update(float=training_key(cfg, hold), bits=bits, calib_windows=CALIB_WINDOWS)
    return _hash(data)


def _load(path: Path) -> dict:
    return torch.load(io.BytesIO(path.read_bytes()), weights_only=True)


def _save(path: Path, entry: dict) -> None:
    buf = io.BytesIO()
    torch.save(entry, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buf.getvalue(), 0o644)


def _dynamics_from(saved: dict | None) -> Dynamics | None:
    if saved is None:
        return None
    bits = tuple(None if b < 0 else b for b in saved["bits"].tolist())
    return Dynamics(bits, tuple(saved["epochs"].tolist()), saved["correct"].numpy())


def _dynamics_to(dyn: Dynamics | None) -> dict | None:
    if dyn is None:
        return None
    return {
        "bits": torch.tensor([-1 if b is None else b for b in dyn.bits]),
        "epochs": torch.tensor(dyn.epochs),
        "correct": torch.from_numpy(dyn.correct),
    }


def float_model(
    cfg: RunConfig,
    X: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    folder: Path | None,
    *,
    hold: HeldOut | None = None,
    dynamics: bool = True,
    progress: bool = False,
) -> tuple[InceptionTime, Dynamics | None, bool]:
    """:func:`qcore.cloud.pipeline.train_model`, reusing ``folder/float-KEY.pt`` when an
    earlier run with the same training settings left it (recording dynamics never changes
    the trained weights). With a ``folder`` the dynamics are always recorded (and stored),
    without one only when ``dynamics``; they are returned only when ``dynamics``, so that
    a run's results never depend on the cache. Returns (model, dynamics or None, whether
    it came from the cache)."""
    path = None if folder is None else folder / f"float-{training_key(cfg, hold)}.pt"
    if path is not None and path.is_file():
        entry = _load(path)
        if entry["dynamics"] is not None or not dynamics:
            torch.manual_seed(cfg.seed)
            model = InceptionTime(X.shape[1], n_classes, cfg.filters, cfg.depth)
            model.load_state_dict(entry["model"])
            dyn = _dynamics_from(entry["dynamics"]) if dynamics else None
            return model.eval(), dyn, True
    record = dynamics or path is not None
    model, dyn = pipeline.train_model(cfg, X, y, n_classes, dynamics=record, progress=progress)
    if path is not None:
        _save(path, {"model": model.state_dict(), "dynamics": _dynamics_to(dyn)})
    return model, dyn if dynamics else None, False


def source_calibrated(
    qmodel: torch.nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    cfg: RunConfig,
    bits: int,
    folder: Path | None,
    hold: HeldOut | None = None,
) -> bool:
    """:func:`qcore.cloud.pipeline.calibrate_on_source` of ``qmodel`` (in place), or its
    state from ``folder/source-KEY.pt`` when an earlier run left it; True when cached."""
    path = None if folder is None else folder / f"source-{source_key(cfg, bits, hold)}.pt"
    if path is not None and path.is_file():
        qmodel.load_state_dict(_load(path)["model"])
        return True
    pipeline.calibrate_on_source(qmodel, X, y, cfg)
    if path is not None:
        _save(path, {"model": qmodel.state_dict()})
    return False
