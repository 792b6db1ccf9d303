"""The ``fleet`` preset of ``qcore bench``: what pooling a fleet's streaming heads gives a new site.

Per domain pair ``dataset:source:target`` of the grid (the preset: HAPT 1 and USC-HAD 1
when its files are found; the target only fixes the run that trains the deployed model),
the default device (``method=slda``: the streaming head on the frozen backbone) is
trained from the source subject and deployed once (:func:`deploy_task`). Every other
subject is a device (:func:`device_task`, the unit of work: one local process or one Dask
task per device) that streams its labelled target stream (the scenario's batches) from
the deployed artifact, and writes what the report needs: its state, its shares and the
features of the windows it holds. A device already computed for the same deployed
artifact is not computed again. Then each subject in turn is the new site, the other
devices are merged (:func:`qcore.eval.fleet_sites.site_row`), and per site accuracy on
its target test set of:

* ``deployed``: the deployed model (the streaming head from the source);
* ``own``: the site's own device after its stream;
* ``fleet_before``: the merged artifact (:func:`qcore.edge.fleet.merge_fleet`), before
  any of the site's labels;
* ``fleet_after``: a device started from the merged artifact weighed as the deployed one
  (:func:`qcore.edge.fleet.weigh_as`, what ``qcore fleet merge`` writes), after the site's
  stream; ``fleet_after_pooled``: the same from the merged statistics at their full weight;
* ``central``: the upper bound, a head fitted in one computation on the pooled features of
  every other device's held windows (:func:`qcore.edge.head.batch_stats`), combined with
  the deployed statistics; ``pred_diff`` counts the test windows where its prediction
  differs from ``fleet_before``'s, ``stats_diff`` is the largest relative difference of
  its statistics from the merged ones.

``bytes32`` / ``bytes16``: what a device sends (its learnt counts, means and scatter) as
float32 and float16. ``resets``: how often the user guard returned a device to the
deployed model (the windows before a reset are then not in its state).

**Privacy curve.** Four forms of private share (:mod:`qcore.edge.share`), each at epsilon 1,
2, 4, 8 and delta ``1e-5`` and without noise, the merged artifact scored before the site's
labels (:func:`qcore.edge.fleet.merge_shares`, weighed as the deployed one):

* ``fleet_clipped``, ``fleet_epsE``: devices that stream with ``share_clip = C``, ``C`` the
  median L2 norm of the deployed model's pooled features over the source subject's
  training windows, and send counts, class sums and the second moment (what ``qcore fleet
  share`` sends); ``clip_resets``: the guard's resets over these streams;
* ``centred_clipped``, ``centred_epsE``: the first rule's pick (docs/results.md, "Private
  shares: the rule fixed before the runs"): each held window's deviation from
  the deployed mean of its class clipped to ``C_c`` (the same rule over the centred
  features), counts, centred class sums and the centred second moment. The device does
  not clip this way yet, so its statistics are the deployed ones plus ``batch_stats`` of
  its held windows' centred-clipped features: what such a device holds when its guard
  never resets.
* ``centred-held_clipped``, ``centred-held_epsE``: the pick of the second rule
  (docs/fleet-privacy.md, not adopted): the centred form with ``C_h`` (``clip_held``) the
  median of ``|x - μ_y|`` over the source subject's held-out windows, computed when the rows
  are made (:func:`qcore.eval.fleet_sites.centred_held_shares`), not by the device tasks.
* ``means-whitened-4_clipped``, ``means-whitened-4_epsE``: the pick of the third rule
  (docs/fleet-privacy.md, adopted as the preset's chosen form): counts and class sums of
  each held window's whitened deviation from the deployed mean of its class,
  ``Σ^(-1/2) (x - μ_y)``, clipped to ``C_m`` (``clip_means``: 4 times the median of that
  norm over the source subject's held-out windows), the deployed covariance kept for the
  scatter (:mod:`qcore.edge.share_means`); made when the rows are made, as the previous
  form.

Noise is seeded by the device's subject number; nothing is tuned on the sites.

**FedAvg baseline.** A linear softmax head on the deployed model's pooled features,
initialised from the deployed streaming head's weights and bias
(:func:`qcore.edge.backbone.solve_head`) and trained by FedAvg over the other devices'
held windows: each round every device runs one local epoch of plain SGD (minibatches of
32, its own shuffle) on the softmax cross-entropy, and the server averages by window
count. Step ``lr = m / L``, ``L`` the largest eigenvalue of the source training windows'
second moment of ``[x, 1]``, ``m`` in :data:`LR_MULTS` (all reported: choosing the best
afterwards is choosing on the sites, which flatters FedAvg). ``fedavg_mM_rR``: accuracy
after ``R`` rounds (``fedavg_r0``: the deployed head as a linear map). Bytes per device:
``R x 2 x (K D + K) x 4`` (``fedavg_bytes_round`` per round, down and up).

Outputs under ``OUT``: per pair a folder ``DATASET-SOURCE`` (the deployed artifact, one
folder per device, ``sites.json``), and ``sites.csv`` (one row per site), ``fleet.md``
(tables) and ``fleet.png`` (the privacy curve) over every pair
(:mod:`qcore.eval.fleet_report`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from qcore.config import RunConfig
from qcore.core.fileio import write_json_atomic
from qcore.errors import QCoreError
from qcore.eval.fleet_report import write_fleet_report
from qcore.eval.fleet_sites import DELTA, EPSILONS, pair_rows, read_meta
from qcore.eval.grid import Grid


def pair_dir(out: Path, cfg: RunConfig) -> Path:
    """``OUT/DATASET-SOURCE``: one deployed model and its fleet."""
    return out / f"{cfg.dataset}-{cfg.source}"


def deploy_task(cfg_dict: dict, folder: str) -> float:
    """Train and deploy the default device of the pair ``cfg_dict`` into ``folder``
    (``deployed.qcore`` and ``deployed.json``: its SHA-256, the clips, the FedAvg step's
    ``L``, the devices' subjects); wall seconds, 0 when already done with these settings."""
    from qcore.data.registry import load_dataset
    from qcore.data.scenario import make_scenario
    from qcore.edge.artifact import load_artifact
    from qcore.edge.infer import forward_features
    from qcore.eval.runner import run
    from qcore.threads import limit_threads

    limit_threads(1)
    t0, cfg, where = time.perf_counter(), RunConfig.from_dict(cfg_dict), Path(folder)
    meta = read_meta(where)
    if meta is not None and cfg.made_with(meta["config"]):
        return 0.0
    where.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        run(cfg, Path(tmp), cache=where.parent / ".cache")
        shutil.copyfile(Path(tmp) / f"deployed-{cfg.bits[0]}bit.qcore", where / "deployed.qcore")
    deployed = load_artifact(where / "deployed.qcore")
    assert deployed.head is not None
    ds = load_dataset(cfg.dataset, cfg.data_path, seed=cfg.seed)
    source = make_scenario(
        ds, cfg.source, cfg.target, cfg.n_batches, cfg.test_fraction, cfg.seed
    ).source_train
    feats = forward_features(deployed.model, source.X)[1].astype(np.float64)
    centred = feats - deployed.head.mean.astype(np.float64)[source.y]
    aug = np.hstack([feats, np.ones((len(feats), 1))])
    write_json_atomic(where / "deployed.json", {
        "config": cfg.to_dict(),
        "sha256": hashlib.sha256((where / "deployed.qcore").read_bytes()).hexdigest(),
        "clip": float(np.median(np.linalg.norm(feats, axis=1))),
        "clip_centred": float(np.median(np.linalg.norm(centred, axis=1))),
        "smooth": float(np.linalg.eigvalsh(aug.T @ aug / len(aug)).max()),
        "subjects": [int(s) for s in np.unique(ds.domain) if int(s) != cfg.source],
    })  # fmt: skip
    return time.perf_counter() - t0


def _device_done(folder: Path, sha: str) -> bool:
    try:
        return json.loads((folder / "device.json").read_text())["deployed"] == sha
    except (OSError, json.JSONDecodeError, KeyError):
        return False


def _stream(start, stream: list[tuple[np.ndarray, np.ndarray]]) -> tuple[Any, int, int]:
    """A device from ``start`` after ``stream``: (the device, user-guard resets, the index
    of the first batch its state still holds)."""
    from qcore.edge.device import Device

    dev, since, resets = Device(start), 0, 0
    for i, (X, y) in enumerate(stream):
        if dev.step(X, y, normalized=True).reset:
            since, resets = i, resets + 1  # the state restarted from the deployed one
    return dev, resets, since


def device_task(folder: str, subject: int) -> float:
    """One device of the fleet in ``folder`` (a :func:`deploy_task` folder): subject
    ``subject`` streams its target stream from the deployed artifact, unclipped and with
    ``share_clip``; writes ``devices/SUBJECT/``: ``state.qcore``, ``share-FORM-E.npz``
    (``E`` ``clean`` or an epsilon) and ``data.npz`` (its stream, the features and labels
    of the windows its state holds, its test set), ``device.json`` last. Wall seconds, 0
    when already done for this deployed artifact."""
    from qcore.data.registry import load_dataset
    from qcore.data.scenario import make_scenario
    from qcore.edge.artifact import load_artifact
    from qcore.edge.fleet import learnt_part
    from qcore.edge.head import batch_stats
    from qcore.edge.infer import forward_features
    from qcore.edge.share import centres, clip_norms, make_share, save_share
    from qcore.edge.state import save_state
    from qcore.threads import limit_threads

    limit_threads(1)
    t0, where = time.perf_counter(), Path(folder)
    meta = read_meta(where)
    if meta is None:
        raise QCoreError(f"{where}: no deployed model (deployed.json) to stream from")
    mine = where / "devices" / str(subject)
    if _device_done(mine, meta["sha256"]):
        return 0.0
    mine.mkdir(parents=True, exist_ok=True)
    cfg, sha = RunConfig.from_dict(meta["config"]), meta["sha256"]
    deployed = load_artifact(where / "deployed.qcore")
    assert deployed.head is not None
    ds = load_dataset(cfg.dataset, cfg.data_path, seed=cfg.seed)
    sc = make_scenario(ds, cfg.source, subject, cfg.n_batches, cfg.test_fraction, cfg.seed)
    stream = [(b.X, b.y) for b in sc.stream]
    dev, resets, since = _stream(deployed, stream)
    X = np.concatenate([b[0] for b in stream[since:]])
    y = np.concatenate([b[1] for b in stream[since:]])
    held = forward_features(deployed.model, X)[1]
    save_state(mine / "state.qcore", dev.art)
    clip, clip_c = meta["clip"], meta["clip_centred"]
    clipped_dep = replace(deployed, device=replace(deployed.device, share_clip=clip))
    clipped, clip_resets, _ = _stream(clipped_dep, stream)
    k, names = deployed.head.n_classes, deployed.class_names
    plain = learnt_part(deployed, clipped.art)
    mu = deployed.head.mean.astype(np.float64)
    centred = batch_stats(clip_norms(held, clip_c, mu[y]), y, k)
    for eps in (None, *EPSILONS):
        tag = "clean" if eps is None else f"eps{eps}"
        private = None if eps is None else (float(eps), DELTA, clip)
        share = make_share(plain, clipped.art.class_names, sha, private, seed=subject)
        save_share(mine / f"share-fleet-{tag}.npz", share)
        private = None if eps is None else (float(eps), DELTA, clip_c)
        share = make_share(centred, names, sha, private, subject, centres(deployed.head, k))
        save_share(mine / f"share-centred-{tag}.npz", share)
    test_feats = forward_features(deployed.model, sc.target_test.X)[1]
    np.savez(
        mine / "data.npz", stream_X=np.concatenate([b[0] for b in stream]),
        stream_y=np.concatenate([b[1] for b in stream]),
        sizes=np.array([len(b[1]) for b in stream]), held=held, held_y=y,
        test_X=sc.target_test.X, test_y=sc.target_test.y, test_feats=test_feats,
    )  # fmt: skip
    write_json_atomic(mine / "device.json", {
        "deployed": sha, "subject": subject, "resets": resets, "clip_resets": clip_resets,
        "seconds": time.perf_counter() - t0,
    })  # fmt: skip
    return time.perf_counter() - t0


@dataclass(frozen=True)
class FleetResult:
    """Devices in the fleet preset, devices computed by this call, wall seconds, the
    per-site rows and one line per failed task."""

    n_devices: int
    n_computed: int
    seconds: float
    rows: list[dict]
    failed: tuple[str, ...]


def run_fleet(
    grid: Grid,
    out_dir: str | Path,
    workers: int = 1,
    progress: bool = True,
    compute: bool = True,
    scheduler: str | None = None,
) -> FleetResult:
    """Deploy each pair of ``grid`` (one seed, one bit-width), run every device not
    yet done (``workers`` local processes, or one task per device on the Dask cluster at
    ``scheduler``), then write ``sites.csv``, ``fleet.md`` and ``fleet.png`` under
    ``out_dir`` from the pairs whose devices are all done. Failures do not stop the other
    tasks; a :class:`QCoreError` names them at the end."""
    from tqdm.auto import tqdm

    from qcore.eval.bench import task_results

    if workers < 1:
        raise QCoreError(f"workers must be >= 1, got {workers}")
    pairs = grid.cells()
    if len(pairs) != len(grid.pairs):
        raise QCoreError(
            "the fleet preset deploys one model per pair: set one bit-width (bits=B), one seed "
            "(seeds=S) and no label fractions, policies or held-out classes"
        )
    out, t0 = Path(out_dir), time.perf_counter()
    folders = {pair_dir(out, c): c for c in pairs}
    failed: list[str] = []
    deploys = [(f.name, deploy_task, (c.to_dict(), str(f))) for f, c in folders.items()]
    if compute:
        for name, outcome in task_results(deploys, workers, scheduler):
            if isinstance(outcome, Exception):
                failed.append(f"deploy {name}: {type(outcome).__name__}: {outcome}")
    devices = []
    for folder in folders:
        meta = read_meta(folder)
        if meta is not None:
            devices += [(folder, s, meta["sha256"]) for s in meta["subjects"]]
    todo = [
        (f"{f.name}-device-{s}", device_task, (str(f), s))
        for f, s, sha in devices
        if not _device_done(f / "devices" / str(s), sha)
    ]
    if compute and todo:
        bar = tqdm(total=len(devices), initial=len(devices) - len(todo), desc="devices",
                   disable=not progress)  # fmt: skip
        with bar:
            for name, outcome in task_results(todo, workers, scheduler):
                if isinstance(outcome, Exception):
                    failed.append(f"{name}: {type(outcome).__name__}: {outcome}")
                    bar.write(f"{name} failed: {type(outcome).__name__}: {outcome}")
                bar.update()
    rows: list[dict] = []
    for folder in folders:
        meta = read_meta(folder)
        if meta is not None and all(
            _device_done(folder / "devices" / str(s), meta["sha256"]) for s in meta["subjects"]
        ):
            rows += pair_rows(folder)
    write_fleet_report(out, rows)
    n_done = len(todo) - sum(1 for f in failed if not f.startswith("deploy"))
    result = FleetResult(len(devices), n_done if compute else 0, time.perf_counter() - t0,
                         rows, tuple(failed))  # fmt: skip
    if failed:
        raise QCoreError(f"{len(failed)} task(s) failed: " + "; ".join(failed))
    return result
