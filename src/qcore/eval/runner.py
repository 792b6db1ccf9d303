"""The experiment runner behind ``qcore run``.

Cloud: train the float model with its training dynamics, quantize to each bit-width,
calibrate with back-prop on the source training data (the deployed model), select the
QCore and train the flip network; what the cloud computes is cached
(:mod:`qcore.eval.cache`).
Device: stream the target batches through the chosen method, evaluating after every
step on the batch, the source test set (forgetting), the target test set (adaptation)
and the core; before the first batch and after the last, also how well the method's
confidence is calibrated on both test sets (:mod:`qcore.eval.calibration`). Only the
runner (this module, :mod:`qcore.eval.newclass` and :mod:`qcore.eval.calibration`) holds
the stream and the test sets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
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
from qcore.data.scenario import HeldOut, Scenario, Split, held_out, label_mask, make_scenario
from qcore.edge.artifact import Artifact, save_artifact
from qcore.errors import QCoreError
from qcore.eval import cache as cache_store
from qcore.eval import label_requests
from qcore.eval.calibration import measure_test_sets
from qcore.eval.newclass import NEW_CLASS_RECALL, new_class_record, new_class_view
from qcore.methods.all import available, check_methods
from qcore.methods.all import make as make_method
from qcore.methods.qcore_method import DeviceCalibrator
from qcore.methods.registry import UNLABELLED, USES_QCORE, Deployment


def _eval(model, sc: Scenario, hold: HeldOut | None = None) -> dict[str, float]:
    """Source and target test accuracy of a torch model (whose outputs are the cloud's
    classes, read as the data's when ``hold`` held some out)."""
    out = {}
    for name, split in (("source", sc.source_test), ("target", sc.target_test)):
        pred = predict_logits(model, split.X).argmax(1)
        out[f"{name}_acc"] = acc_of(pred if hold is None else hold.to_data(pred), split.y)
    return out


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


def _accuracies(calibrator, sc: Scenario) -> dict[str, float]:
    """``calibrator``'s accuracy on the source test set (forgetting) and on the target
    test set (adaptation), as it predicts now."""
    return {
        "source_acc": acc_of(calibrator.predict(sc.source_test.X), sc.source_test.y),
        "target_acc": acc_of(calibrator.predict(sc.target_test.X), sc.target_test.y),
    }


def stream(
    calibrator,
    sc: Scenario,
    progress: bool = False,
    label: str = "stream",
    label_fraction: float = 1.0,
    seed: int = 0,
    unlabelled: bool = False,
    hold: HeldOut | None = None,
    masks: list[np.ndarray] | None = None,
) -> list[dict]:
    """Feed every stream batch to ``calibrator``; evaluate after each step.

    With ``label_fraction`` < 1 only a seeded share of each batch's windows carries its
    label (:func:`qcore.data.scenario.label_mask`, or ``masks``: the labelled windows of
    each batch, :mod:`qcore.eval.label_requests`); ``unlabelled``: the method takes the
    others as -1 labels, else it sees the labelled windows alone. ``task_acc`` is always
    measured on every window of the batch. With ``hold`` (classes the cloud never saw)
    each step also records ``old_acc`` (target test windows of the cloud's classes),
    ``new_recall`` (those of the held-out classes predicted right) and ``new_seen``
    (labelled windows of held-out classes the method has been given so far). A step's
    ``seconds`` is the device's time for it."""
    from tqdm.auto import tqdm

    steps = []
    seen_new = 0
    for i, batch in enumerate(tqdm(sc.stream, desc=label, disable=not progress)):
        if label_fraction < 1.0 or hold is not None:
            mask = (
                masks[i]
                if masks is not None
                else label_mask(len(batch), label_fraction, seed, i + 1)
            )
            rep, task_acc = _partly_labelled(calibrator, batch, mask, unlabelled)
            if rep is None:
                rep = StepReport(task_acc, 0.0, {})
            labelled = int(mask.sum())
        else:
            rep = calibrator.observe(batch)
            task_acc, labelled = rep.task_acc, len(batch)
        extra = dict(rep.extra)
        if hold is not None:
            seen_new += int(np.isin(batch.y[mask], hold.held).sum())
            extra.update(new_class_record(calibrator, sc, hold, seen_new))
        core = getattr(calibrator, "core", None)
        steps.append(
            {
                "step": i + 1,
                "task_acc": task_acc,
                "labelled": labelled,
                **_accuracies(calibrator, sc),
                "core_acc": acc_of(calibrator.predict(core.X), core.y)
                if core is not None
                else None,
                "seconds": rep.seconds,
                "device_bytes": calibrator.device_bytes(),
                **extra,
            }
        )
    return steps


@dataclass
class _Run:
    """What every step of one run reads: the settings, the scenario, the classes the
    cloud held out (or None), the source windows the cloud trains on, where the run
    writes, its cache folder (or None) and, per bit-width whose device artifacts are
    written, the method whose device they hold."""

    cfg: RunConfig
    sc: Scenario
    hold: HeldOut | None
    cloud: Split
    out_dir: Path
    cache: Path | None
    progress: bool
    saved: dict[int, str] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        """Classes the cloud's model knows."""
        return self.sc.n_classes if self.hold is None else len(self.hold.known)


def _prepare(cfg: RunConfig, out_dir: Path, progress: bool, cache: bool | Path) -> _Run:
    """Check the methods, load the data and cut the scenario."""
    unknown = [m for m in cfg.methods if m not in available()]
    if unknown:
        raise QCoreError(
            f"unknown method {unknown[0]!r}: choose one of {', '.join(sorted(available()))}"
        )
    check_methods(cfg)  # a method's fixed device settings against the run's, before training
    ds = load_dataset(cfg.dataset, cfg.data_path, seed=cfg.seed)
    sc = make_scenario(ds, cfg.source, cfg.target, cfg.n_batches, cfg.test_fraction, cfg.seed)
    hold = held_out(cfg.new_classes, sc.class_names)
    cloud = sc.source_train if hold is None else hold.cloud_split(sc.source_train)
    folder = (out_dir / ".cache" if cache is True else Path(cache)) if cache else None
    return _Run(cfg, sc, hold, cloud, out_dir, folder, progress)


def _train(r: _Run) -> tuple[Any, Any, dict]:
    """The float model (trained, or from the cache), its dynamics and its results row
    (``train_s``: the training's wall time, or the cache's load time when ``cached``)."""
    t0 = time.perf_counter()
    model, dyn, cached = cache_store.float_model(
        r.cfg,
        r.cloud.X,
        r.cloud.y,
        r.n_classes,
        r.cache,
        hold=r.hold,
        dynamics=bool(USES_QCORE & set(r.cfg.methods)),
        progress=r.progress,
    )
    row = {
        "method": "float",
        "bits": None,
        **_eval(model, r.sc, r.hold),
        "device_bytes": to_qmodel(model).device_bytes()["total"],
        "train_s": time.perf_counter() - t0,
        "cached": cached,
    }
    return model, dyn, row


def _select_core(r: _Run, dyn) -> Any:
    """The QCore chosen from the training dynamics, saved as ``out_dir/core.npz``."""
    scores = pipeline.core_scores(dyn, len(r.cloud.y))
    core = pipeline.select_qcore(r.cfg, r.cloud.X, r.cloud.y, scores)
    r.out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(
        r.out_dir / "core.npz",
        X=core.X,
        y=core.y,
        score=core.score,
        origin=core.origin,
        train_scores=scores,
    )
    return core


def _deploy(r: _Run, model, bits: int) -> tuple[Any, list[dict]]:
    """The deployed model at ``bits`` (quantized, then calibrated with back-prop on the
    source, or from the cache) and the rows of both stages (``quantize_s``,
    ``calibrate_s``: their wall times)."""
    t0 = time.perf_counter()
    qmodel = pipeline.quantize(model, bits, r.cloud.X, r.cfg)
    ptq = {"method": "ptq", "bits": bits, **_eval(qmodel, r.sc, r.hold)}
    ptq.update(device_bytes=to_qmodel(qmodel).device_bytes()["total"])
    ptq["quantize_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cached = cache_store.source_calibrated(
        qmodel, r.cloud.X, r.cloud.y, r.cfg, bits, r.cache, r.hold
    )
    deployed = {"method": "backprop-source", "bits": bits, **_eval(qmodel, r.sc, r.hold)}
    deployed.update(device_bytes=to_qmodel(qmodel).device_bytes()["total"])
    deployed.update(calibrate_s=time.perf_counter() - t0, cached=cached)
    return qmodel, [ptq, deployed]


def run(
    cfg: RunConfig, out_dir: str | Path, progress: bool = False, cache: bool | Path = True
) -> dict:
    """Run one experiment and write ``out_dir/results.json`` and the plots ``stream.png``
    and ``reliability.png``; its ``wall_s`` is the run's wall time (the float row's
    ``cached`` says whether training was reused).

    With ``cache`` the trained float model, its training dynamics and the deployed model
    of each bit-width are kept in ``out_dir/.cache`` (or the folder ``cache`` names) under
    a hash of the settings that determine them (:mod:`qcore.eval.cache`), so a rerun, or a
    run that adds methods or bit-widths, reuses them instead of training again
    (``False``: always train).
    """
    run_t0 = time.perf_counter()
    r = _prepare(cfg, Path(out_dir), progress, cache)
    model, dyn, float_row = _train(r)
    core = _select_core(r, dyn)
    rows: list[dict] = [float_row]
    for bits in cfg.bits:
        shared: dict = {}  # cloud products the methods of this bit-width share
        qmodel, deployed_rows = _deploy(r, model, bits)
        rows += deployed_rows
        masks = _label_masks(r, bits, qmodel, core, shared)
        rows += [
            _stream_row(r, method, bits, qmodel, core, shared, masks) for method in cfg.methods
        ]
        write_json_atomic(r.out_dir / "results.json", {"config": cfg.to_dict(), "results": rows})
    result = {
        "config": cfg.to_dict(),
        "results": rows,
        "scenario": _scenario_sizes(r),
        "wall_s": time.perf_counter() - run_t0,  # the whole run, cached training included
    }
    write_json_atomic(r.out_dir / "results.json", result)
    from qcore.eval.plots import plot_reliability, plot_stream

    title = f"{cfg.dataset} {cfg.source} -> {cfg.target}"
    plot_stream(rows, r.out_dir / "stream.png", title)
    plot_reliability(rows, r.out_dir / "reliability.png", title, r.saved)
    return result


def _scenario_sizes(r: _Run) -> dict[str, int]:
    return {
        "n_source_train": len(r.cloud.y),
        "n_target_train": len(r.sc.target_train),
        "n_source_test": len(r.sc.source_test),
        "n_target_test": len(r.sc.target_test),
        "batch_size": len(r.sc.stream[0]),
        "n_batches": len(r.sc.stream),
    }


def _save(out_dir: Path, bits: int, art: Artifact) -> None:
    """``out_dir/deployed-{bits}bit.qcore`` (step 0): what ``qcore export`` hands to a device;
    ``calibrated-{bits}bit.qcore`` (step > 0): the simulated device's state after the stream."""
    name = "deployed" if art.step == 0 else "calibrated"
    save_artifact(out_dir / f"{name}-{bits}bit.qcore", art)


def _deployment(r: _Run, bits: int, qmodel, core, shared: dict) -> Deployment:
    """What the cloud hands to each method at ``bits``."""
    names = tuple(r.sc.class_names)
    return Deployment(
        cfg=r.cfg,
        bits=bits,
        qmodel=qmodel,
        core=core,
        source_X=r.cloud.X,
        source_y=r.cloud.y,
        n_classes=r.n_classes,
        batch_len=len(r.sc.stream[0]),
        normalizer=r.sc.normalizer,
        class_names=names if r.hold is None else tuple(names[k] for k in r.hold.known),
        label_names=() if r.hold is None else names,
        shared=shared,
        progress=r.progress,
    )


def _label_masks(r: _Run, bits: int, qmodel, core, shared: dict) -> list[np.ndarray]:
    """Which windows of each stream batch carry a label at ``bits``, for every method:
    the seeded draw, or those the reference device asks for
    (:mod:`qcore.eval.label_requests`)."""
    c = r.cfg
    if not label_requests.chooses(c):
        return label_requests.random_masks(r.sc.stream, c.label_fraction, c.seed)
    ref = label_requests.reference_device(_deployment(r, bits, qmodel, core, shared))
    return label_requests.requested_masks(
        ref, r.sc.stream, c.label_policy, c.label_fraction, c.seed
    )


def _stream_row(
    r: _Run, method: str, bits: int, qmodel, core, shared: dict, masks: list[np.ndarray]
) -> dict:
    """Stream one method with the labelled windows ``masks``. ``*_before``: the accuracies
    and calibration (:func:`qcore.eval.calibration.measure_test_sets`) of what this method
    ships, before the first batch; without the suffix, after the stream; ``cloud_s``: its cloud
    preparation; ``step_ms``: its mean device milliseconds per step. The first device
    method of the run at ``bits`` writes its deployed artifact and its state after the
    stream."""
    cloud_t0 = time.perf_counter()
    dep = _deployment(r, bits, qmodel, core, shared)
    cal = new_class_view(method, make_method(method, dep), r.hold)
    save = isinstance(cal, DeviceCalibrator) and bits not in r.saved
    if save:  # the deployable file: model, core, flip network, head statistics
        r.saved[bits] = method
        _save(r.out_dir, bits, cal.deployed)
    row: dict = {"method": method, "bits": bits, "cloud_s": time.perf_counter() - cloud_t0}
    unseen = label_requests.classes_never_labelled(r.sc.stream, masks)
    row.update(label_policy=r.cfg.label_policy, classes_never_labelled=unseen)
    row.update(measure_test_sets(cal, r.sc, "_before"))
    row.update(dep.extras)
    steps = stream(
        cal,
        r.sc,
        r.progress,
        label=f"{method}, {bits} bits",
        label_fraction=r.cfg.label_fraction,
        seed=r.cfg.seed,
        unlabelled=method in UNLABELLED,
        hold=r.hold,
        masks=masks,
    )
    if save:
        _save(r.out_dir, bits, cal.art)
    if r.hold is not None:
        # labelled windows of the new classes given when target recall first reached 0.8
        hit = [s["new_seen"] for s in steps if s["new_recall"] >= NEW_CLASS_RECALL]
        new = {k: steps[-1][k] for k in ("old_acc", "new_recall")}
        row.update(new, windows_to_recall=hit[0] if hit else None)
    row.update(measure_test_sets(cal, r.sc))  # after: the last step's accuracies, too
    row.update(
        device_bytes=cal.device_bytes(),
        step_ms=1000 * float(np.mean([s["seconds"] for s in steps])),
        steps=steps,
    )
    return row
