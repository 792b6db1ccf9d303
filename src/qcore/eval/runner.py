"""The experiment runner behind ``qcore run``.

Cloud: train the float model (recording training dynamics when QCore needs them),
quantize to each bit-width, calibrate with back-prop on the source training data
(the deployed model), select the QCore and train the flip network.
Device: stream the target batches through the chosen method, evaluating after every
step on the batch, the source test set (forgetting), the target test set (adaptation)
and the core. Only this module holds the stream and the test sets.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from qcore.cloud import pipeline
from qcore.cloud.export import to_qmodel
from qcore.cloud.train import predict_logits
from qcore.config import RunConfig
from qcore.core.fileio import write_json_atomic
from qcore.core.metrics import accuracy as acc_of
from qcore.core.types import Batch, StepReport
from qcore.data.registry import load_dataset
from qcore.data.scenario import HeldOut, Scenario, held_out, label_mask, make_scenario
from qcore.edge.artifact import Artifact, save_artifact
from qcore.errors import QCoreError
from qcore.methods.all import available
from qcore.methods.all import make as make_method
from qcore.methods.qcore_method import DeviceCalibrator
from qcore.methods.registry import BACKPROP, UNLABELLED, USES_QCORE, Deployment


def _eval(model, sc: Scenario, hold: HeldOut | None = None) -> dict[str, float]:
    """Source and target test accuracy of a torch model (whose outputs are the cloud's
    classes, read as the data's when ``hold`` held some out)."""
    out = {}
    for name, split in (("source", sc.source_test), ("target", sc.target_test)):
        pred = predict_logits(model, split.X).argmax(1)
        out[f"{name}_acc"] = acc_of(pred if hold is None else hold.to_data(pred), split.y)
    return out


class _CloudClasses:
    """A method whose model knows the cloud's classes when the cloud held some out:
    labels and predictions are translated between the data's classes and the model's
    outputs (the cloud's classes first, then new ones in order of arrival). With ``grow``
    (back-prop methods) the model's head gains an output when a class's first labelled
    window arrives (:func:`qcore.cloud.model.add_head_rows`), which back-prop then trains
    with the rest; without it (``none``) a new class stays unlabelled to the method."""

    def __init__(self, calibrator: Any, hold: HeldOut, grow: bool) -> None:
        self.calibrator, self.grow = calibrator, grow
        self.order = [int(k) for k in hold.known]  # model output -> data class

    @property
    def core(self) -> Any:
        return getattr(self.calibrator, "core", None)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.array(self.order)[self.calibrator.predict(X)]

    def observe(self, batch: Batch) -> StepReport:
        if self.grow:
            from qcore.cloud.model import add_head_rows

            given = [int(c) for c in np.unique(batch.y[batch.y >= 0])]
            new = [c for c in given if c not in self.order]
            if new:
                add_head_rows(self.calibrator.model, len(new))
                self.order += new
        output = {c: k for k, c in enumerate(self.order)}
        y = np.array([output.get(int(c), -1) for c in batch.y], dtype=np.int64)
        return self.calibrator.observe(Batch(batch.X, y))

    def device_bytes(self) -> int:
        return int(self.calibrator.device_bytes())


def _new_class_view(method: str, cal: Any, hold: HeldOut | None) -> Any:
    """``cal`` as the stream sees it when the cloud held classes out: a streaming-head
    device adds them to its statistics, a back-prop method to its model's head; ``none``
    predicts the cloud's classes; other methods cannot learn one."""
    if hold is None:
        return cal
    if isinstance(cal, DeviceCalibrator) and cal.device.head is not None:
        return cal
    if method == "none":
        return _CloudClasses(cal, hold, grow=False)
    if method in BACKPROP and hasattr(cal, "model"):
        return _CloudClasses(cal, hold, grow=True)
    raise QCoreError(
        f"method {method!r} cannot learn a class the cloud never saw: with new_classes use "
        "none, a streaming-head method (slda, slda-bn, slda-flips, qcore-slda) or a "
        "back-prop method"
    )


def _partly_labelled(calibrator, batch: Batch, mask: np.ndarray, unlabelled: bool):
    """``observe`` a batch of which only the windows in ``mask`` keep their label: as -1
    labels for a method that takes them (``unlabelled``), else the labelled windows
    alone (no call at all when there are none). Returns (report or None, task accuracy
    before the step on every window)."""
    task_acc = acc_of(calibrator.predict(batch.X), batch.y)
    if unlabelled:
        rep = calibrator.observe(Batch(batch.X, np.where(mask, batch.y, -1)))
    elif mask.any():
        rep = calibrator.observe(Batch(batch.X[mask], batch.y[mask]))
    else:
        rep = None
    return rep, task_acc


def stream(
    calibrator,
    sc: Scenario,
    progress: bool = False,
    label: str = "stream",
    label_fraction: float = 1.0,
    seed: int = 0,
    unlabelled: bool = False,
    hold: HeldOut | None = None,
) -> list[dict]:
    """Feed every stream batch to ``calibrator``; evaluate after each step.

    With ``label_fraction`` < 1 only a seeded share of each batch's windows carries its
    label (:func:`qcore.data.scenario.label_mask`); ``unlabelled``: the method takes the
    others as -1 labels, else it sees the labelled windows alone. ``task_acc`` is always
    measured on every window of the batch. With ``hold`` (classes the cloud never saw)
    each step also records ``old_acc`` (target test windows of the cloud's classes),
    ``new_recall`` (those of the held-out classes predicted right) and ``new_seen``
    (labelled windows of held-out classes the method has been given so far)."""
    from tqdm.auto import tqdm

    steps = []
    seen_new = 0
    for i, batch in enumerate(tqdm(sc.stream, desc=label, disable=not progress)):
        if label_fraction < 1.0 or hold is not None:
            mask = label_mask(len(batch), label_fraction, seed, i + 1)
            rep, task_acc = _partly_labelled(calibrator, batch, mask, unlabelled)
            if rep is None:
                rep = StepReport(task_acc, 0.0, {})
            labelled = int(mask.sum())
        else:
            rep = calibrator.observe(batch)
            task_acc, labelled = rep.task_acc, len(batch)
        core = getattr(calibrator, "core", None)
        target_pred = calibrator.predict(sc.target_test.X)
        extra = dict(rep.extra)
        if hold is not None:
            new = np.isin(sc.target_test.y, hold.held)
            seen_new += int(np.isin(batch.y[mask], hold.held).sum())
            extra.update(
                old_acc=acc_of(target_pred[~new], sc.target_test.y[~new]),
                new_recall=acc_of(target_pred[new], sc.target_test.y[new]),
                new_seen=seen_new,
            )
        steps.append(
            {
                "step": i + 1,
                "task_acc": task_acc,
                "labelled": labelled,
                "source_acc": acc_of(calibrator.predict(sc.source_test.X), sc.source_test.y),
                "target_acc": acc_of(target_pred, sc.target_test.y),
                "core_acc": acc_of(calibrator.predict(core.X), core.y)
                if core is not None
                else float("nan"),
                "seconds": rep.seconds,
                "device_bytes": calibrator.device_bytes(),
                **extra,
            }
        )
    return steps


def run(
    cfg: RunConfig, out_dir: str | Path, progress: bool = False, cache: bool | Path = True
) -> dict:
    """Run one experiment and write ``out_dir/results.json`` (and a plot); its
    ``seconds`` is the run's wall time (the float row's ``cached`` says whether training
    was reused).

    With ``cache`` the trained float model and its training dynamics are kept in
    ``out_dir/.cache`` (or the folder ``cache`` names) under a hash of the settings that
    determine them, so a rerun, or a run that adds methods or bit-widths, reuses them
    instead of training again (``False``: always train).
    """
    run_t0 = time.perf_counter()
    out_dir = Path(out_dir)
    unknown = [m for m in cfg.methods if m not in available()]
    if unknown:
        raise QCoreError(
            f"unknown method {unknown[0]!r}: choose one of {', '.join(sorted(available()))}"
        )
    ds = load_dataset(cfg.dataset, cfg.data_path, seed=cfg.seed)
    sc = make_scenario(ds, cfg.source, cfg.target, cfg.n_batches, cfg.test_fraction, cfg.seed)
    hold = held_out(cfg.new_classes, sc.class_names)
    cloud = sc.source_train if hold is None else hold.cloud_split(sc.source_train)
    Xs, ys = cloud.X, cloud.y
    n_classes = sc.n_classes if hold is None else len(hold.known)
    t0 = time.perf_counter()
    model, dyn, cached = pipeline.cached_model(
        cfg,
        Xs,
        ys,
        n_classes,
        (out_dir / ".cache" if cache is True else cache) if cache else None,
        dynamics=bool(USES_QCORE & set(cfg.methods)),
        progress=progress,
    )
    train_seconds = time.perf_counter() - t0
    rows: list[dict] = [
        {
            "method": "float",
            "bits": None,
            **_eval(model, sc, hold),
            "device_bytes": to_qmodel(model).device_bytes()["total"],
            "seconds": train_seconds,
            "cached": cached,
        }
    ]
    scores = pipeline.core_scores(dyn, len(ys))
    core = pipeline.select_qcore(cfg, Xs, ys, scores)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(
        out_dir / "core.npz",
        X=core.X,
        y=core.y,
        score=core.score,
        origin=core.origin,
        train_scores=scores,
    )
    saved: set[int] = set()  # bit-widths whose device artifacts are written
    for bits in cfg.bits:
        shared: dict = {}  # cloud products the methods of this bit-width share
        t0 = time.perf_counter()
        qmodel = pipeline.quantize(model, bits, Xs, cfg)
        rows.append(
            {
                "method": "ptq",
                "bits": bits,
                **_eval(qmodel, sc, hold),
                "device_bytes": to_qmodel(qmodel).device_bytes()["total"],
                "seconds": time.perf_counter() - t0,
            }
        )
        t0 = time.perf_counter()
        pipeline.calibrate_on_source(qmodel, Xs, ys, cfg)
        deployed = _eval(qmodel, sc, hold)
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
                _stream_row(
                    cfg,
                    method,
                    sc,
                    qmodel,
                    core,
                    bits,
                    deployed,
                    progress,
                    out_dir,
                    saved,
                    shared,
                    cloud,
                    hold,
                )  # fmt: skip
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
        "seconds": time.perf_counter() - run_t0,  # the whole run, cached training included
    }
    write_json_atomic(out_dir / "results.json", result)
    from qcore.eval.plots import plot_stream

    title = f"{cfg.dataset} {cfg.source} -> {cfg.target}"
    plot_stream(rows, out_dir / "stream.png", title)
    return result


def _save(out_dir: Path, bits: int, art: Artifact) -> None:
    """``out_dir/deployed-{bits}bit.qcore`` (step 0): what ``qcore export`` hands to a device;
    ``calibrated-{bits}bit.qcore`` (step > 0): the simulated device's state after the stream."""
    name = "deployed" if art.step == 0 else "calibrated"
    save_artifact(out_dir / f"{name}-{bits}bit.qcore", art)


NEW_CLASS_RECALL = 0.8  # the recall at which a new class counts as recognised


def _stream_row(
    cfg, method, sc, qmodel, core, bits, deployed, progress, out_dir, saved, shared, cloud, hold
) -> dict:
    """Stream one method; the first device method of the run (``saved`` records it) writes
    its deployed artifact and its state after the stream. ``cloud``: the source training
    windows the cloud saw; ``hold``: the classes it did not (or None)."""
    names = tuple(sc.class_names)
    dep = Deployment(
        cfg=cfg,
        bits=bits,
        qmodel=qmodel,
        core=core,
        source_X=cloud.X,
        source_y=cloud.y,
        n_classes=sc.n_classes if hold is None else len(hold.known),
        batch_len=len(sc.stream[0]),
        normalizer=sc.normalizer,
        class_names=names if hold is None else tuple(names[k] for k in hold.known),
        label_names=() if hold is None else names,
        shared=shared,
        progress=progress,
    )
    cloud_t0 = time.perf_counter()
    cal = _new_class_view(method, make_method(method, dep), hold)
    save = isinstance(cal, DeviceCalibrator) and bits not in saved
    if save:  # the deployable file: model, core, flip network, head statistics
        saved.add(bits)
        _save(out_dir, bits, cal.deployed)
    row: dict = {
        "method": method,
        "bits": bits,
        "source_acc_before": deployed["source_acc"],
        "target_acc_before": deployed["target_acc"],
        "cloud_seconds": time.perf_counter() - cloud_t0,
        **dep.extras,
    }
    steps = stream(
        cal,
        sc,
        progress,
        label=f"{method}, {bits} bits",
        label_fraction=cfg.label_fraction,
        seed=cfg.seed,
        unlabelled=method in UNLABELLED,
        hold=hold,
    )
    if save:
        _save(out_dir, bits, cal.art)
    last = steps[-1]
    if hold is not None:
        # labelled windows of the new classes given when target recall first reached 0.8
        hit = [s["new_seen"] for s in steps if s["new_recall"] >= NEW_CLASS_RECALL]
        row.update(
            old_acc=last["old_acc"],
            new_recall=last["new_recall"],
            windows_to_recall=hit[0] if hit else None,
        )
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
