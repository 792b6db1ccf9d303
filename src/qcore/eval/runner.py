"""The experiment runner behind ``qcore run``.

Cloud: train the float model (recording training dynamics when QCore needs them),
quantize to each bit-width, calibrate with back-prop on the source training data
(the deployed model), select the QCore and train the flip network.
Device: stream the target batches through the chosen method, evaluating after every
step on the batch, the source test set (forgetting), the target test set (adaptation)
and the core. Only this module holds the stream and the test sets.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from qcore.cloud.calibrate import backprop_calibrate
from qcore.cloud.export import to_qmodel
from qcore.cloud.model import InceptionTime
from qcore.cloud.quantize import quantize_model
from qcore.cloud.train import CALIB_WINDOWS, accuracy, train_float
from qcore.config import RunConfig
from qcore.coreset.core import build_core
from qcore.coreset.scores import qcore_scores
from qcore.coreset.select import core_size_from
from qcore.data.registry import load_dataset
from qcore.data.scenario import Scenario, make_scenario
from qcore.edge.artifact import build_artifact, save_artifact
from qcore.errors import QCoreError
from qcore.eval.methods import Deployment, available
from qcore.eval.methods import make as make_method
from qcore.eval.metrics import accuracy as acc_of


def _eval(model, sc: Scenario) -> dict[str, float]:
    return {
        "source_acc": accuracy(model, sc.source_test.X, sc.source_test.y),
        "target_acc": accuracy(model, sc.target_test.X, sc.target_test.y),
    }


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON to a temporary file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def stream(calibrator, sc: Scenario, progress: bool = False) -> list[dict]:
    """Feed every stream batch to ``calibrator``; evaluate after each step."""
    from tqdm.auto import tqdm

    steps = []
    for i, batch in enumerate(tqdm(sc.stream, desc="stream", disable=not progress)):
        rep = calibrator.observe(batch)
        core = getattr(calibrator, "core", None)
        steps.append(
            {
                "step": i + 1,
                "task_acc": rep.task_acc,
                "source_acc": acc_of(calibrator.predict(sc.source_test.X), sc.source_test.y),
                "target_acc": acc_of(calibrator.predict(sc.target_test.X), sc.target_test.y),
                "core_acc": acc_of(calibrator.predict(core.X), core.y)
                if core is not None
                else float("nan"),
                "seconds": rep.seconds,
                "device_bytes": calibrator.device_bytes(),
                **rep.extra,
            }
        )
    return steps


def run(cfg: RunConfig, out_dir: str | Path, progress: bool = False) -> dict:
    """Run one experiment and write ``out_dir/results.json`` (and a plot)."""
    out_dir = Path(out_dir)
    unknown = [m for m in cfg.methods if m not in available()]
    if unknown:
        raise QCoreError(
            f"unknown method {unknown[0]!r}: choose one of {', '.join(sorted(available()))}"
        )
    ds = load_dataset(cfg.dataset, cfg.data_path, seed=cfg.seed)
    sc = make_scenario(ds, cfg.source, cfg.target, cfg.n_batches, cfg.test_fraction, cfg.seed)
    Xs, ys = sc.source_train.X, sc.source_train.y
    torch.manual_seed(cfg.seed)
    model = InceptionTime(ds.X.shape[1], sc.n_classes, cfg.filters, cfg.depth)
    t0 = time.perf_counter()
    dyn = train_float(
        model,
        Xs,
        ys,
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        dynamics_bits=cfg.dynamics_bits if set(cfg.methods) != {"none"} else (),
        record_every=cfg.record_every,
        progress=progress,
    )
    train_seconds = time.perf_counter() - t0
    rows: list[dict] = [
        {
            "method": "float",
            "bits": None,
            **_eval(model, sc),
            "device_bytes": to_qmodel(model).device_bytes()["total"],
            "seconds": train_seconds,
        }
    ]
    if dyn is not None:
        scores = qcore_scores(dyn.correct, dyn.bits)
    else:
        scores = np.ones(len(ys), dtype=np.int64)  # no dynamics: a uniform core
    core = build_core(
        Xs,
        ys,
        scores,
        min(core_size_from(cfg.core_size, len(ys)), len(ys)),
        cfg.core_mode,
        cfg.seed,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(
        out_dir / "core.npz",
        X=core.X,
        y=core.y,
        score=core.score,
        origin=core.origin,
        train_scores=scores,
    )
    for bits in cfg.bits:
        t0 = time.perf_counter()
        qmodel = quantize_model(model, bits, Xs[:CALIB_WINDOWS], cfg.seed)
        rows.append(
            {
                "method": "ptq",
                "bits": bits,
                **_eval(qmodel, sc),
                "device_bytes": to_qmodel(qmodel).device_bytes()["total"],
                "seconds": time.perf_counter() - t0,
            }
        )
        t0 = time.perf_counter()
        steps = max(1, cfg.source_calib_epochs * -(-len(ys) // cfg.batch_size))
        backprop_calibrate(
            qmodel, Xs, ys, steps=steps, lr=cfg.calib_lr, batch_size=cfg.batch_size, seed=cfg.seed
        )
        deployed = _eval(qmodel, sc)
        _save_artifact(out_dir, bits, to_qmodel(qmodel), core, None, sc, cfg)
        rows.append(
            {
                "method": "backprop-source",
                "bits": bits,
                **deployed,
                "device_bytes": to_qmodel(qmodel).device_bytes()["total"],
                "seconds": time.perf_counter() - t0,
            }
        )
        for method in cfg.methods:
            rows.append(
                _stream_row(cfg, method, sc, qmodel, core, bits, deployed, progress, out_dir)
            )
        write_json_atomic(out_dir / "results.json", {"config": cfg.to_dict(), "results": rows})
    result = {
        "config": cfg.to_dict(),
        "results": rows,
        "scenario": {
            "n_source_train": len(ys),
            "n_target_train": len(sc.target_train),
            "n_source_test": len(sc.source_test),
            "n_target_test": len(sc.target_test),
            "batch_size": len(sc.stream[0]),
            "n_batches": len(sc.stream),
        },
    }
    write_json_atomic(out_dir / "results.json", result)
    from qcore.eval.plots import plot_stream

    plot_stream(rows, out_dir / "stream.png")
    return result


def _save_artifact(
    out_dir: Path, bits: int, qm, core, net, sc: Scenario, cfg: RunConfig, step: int = 0
) -> None:
    """``out_dir/deployed-{bits}bit.qcore`` (step 0): what ``qcore export`` hands to a device;
    ``calibrated-{bits}bit.qcore`` (step > 0): the simulated device's state after the stream."""
    art = build_artifact(qm, core, net, sc.normalizer, sc.class_names, cfg.to_dict())
    name = "deployed" if step == 0 else "calibrated"
    save_artifact(out_dir / f"{name}-{bits}bit.qcore", replace(art, step=step))


def _stream_row(cfg, method, sc, qmodel, core, bits, deployed, progress, out_dir) -> dict:
    dep = Deployment(
        cfg=cfg,
        bits=bits,
        qmodel=qmodel,
        core=core,
        source_X=sc.source_train.X,
        source_y=sc.source_train.y,
        n_classes=sc.n_classes,
        batch_len=len(sc.stream[0]),
    )
    cloud_t0 = time.perf_counter()
    cal = make_method(method, dep)
    if method == "qcore":  # the deployable file: model, core and the trained flip network
        _save_artifact(out_dir, bits, cal.qm, cal.core, cal.net, sc, cfg)
    row: dict = {
        "method": method,
        "bits": bits,
        "source_acc_before": deployed["source_acc"],
        "target_acc_before": deployed["target_acc"],
        "cloud_seconds": time.perf_counter() - cloud_t0,
        **dep.extras,
    }
    steps = stream(cal, sc, progress)
    if method == "qcore":
        _save_artifact(out_dir, bits, cal.qm, cal.core, cal.net, sc, cfg, step=len(steps))
    last = steps[-1]
    row.update(
        {
            "source_acc": last["source_acc"],
            "target_acc": last["target_acc"],
            "device_bytes": cal.device_bytes(),
            "seconds": float(np.mean([s["seconds"] for s in steps])),
            "steps": steps,
        }
    )
    return row
