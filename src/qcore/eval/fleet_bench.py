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
devices are merged (:func:`site_row`), and per site accuracy on its target test set of:

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

**Privacy curve.** Two forms of private share (:mod:`qcore.edge.share`), each at epsilon 1,
2, 4, 8 and delta ``1e-5`` and without noise, the merged artifact scored before the site's
labels (:func:`qcore.edge.fleet.merge_shares`, weighed as the deployed one):

* ``fleet_clipped``, ``fleet_epsE``: devices that stream with ``share_clip = C``, ``C`` the
  median L2 norm of the deployed model's pooled features over the source subject's
  training windows, and send counts, class sums and the second moment (what ``qcore fleet
  share`` sends); ``clip_resets``: the guard's resets over these streams;
* ``centred_clipped``, ``centred_epsE``: the form the rule of docs/results.md chose
  ("Private shares: the rule fixed before the runs"): each held window's deviation from
  the deployed mean of its class clipped to ``C_c`` (the same rule over the centred
  features), counts, centred class sums and the centred second moment. The device does
  not clip this way yet, so its statistics are the deployed ones plus ``batch_stats`` of
  its held windows' centred-clipped features: what such a device holds when its guard
  never resets.

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
(tables) and ``fleet.png`` (the privacy curve) over every pair.
"""

from __future__ import annotations

import csv
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
from qcore.eval.grid import Grid

DELTA, EPSILONS = 1e-5, (1, 2, 4, 8)
FORMS = {"fleet": "clipped devices (counts, sums, second moment)", "centred": "centred (chosen)"}
ROUNDS, LR_MULTS, BATCH = (1, 5, 20), (1, 100, 10_000, 1_000_000), 32
FEDAVG = tuple(f"fedavg_m{m:g}_r{r}" for m in LR_MULTS for r in ROUNDS)
PRIVATE = tuple(f"{f}_{e}" for f in FORMS for e in ("clipped", *(f"eps{e}" for e in EPSILONS)))
FIELDS = (
    "dataset", "site", "n_test", "deployed", "own", "fleet_before", "fleet_after", "central",
    "fleet_after_pooled", "pred_diff", "stats_diff", "bytes32", "bytes16", "resets",
    "clip", "clip_centred", "clip_resets", *PRIVATE, "fedavg_r0", *FEDAVG, "fedavg_bytes_round",
)  # fmt: skip


def pair_dir(out: Path, cfg: RunConfig) -> Path:
    """``OUT/DATASET-SOURCE``: one deployed model and its fleet."""
    return out / f"{cfg.dataset}-{cfg.source}"


def _meta(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "deployed.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


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
    meta = _meta(where)
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
    meta = _meta(where)
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


@dataclass
class Site:
    """What one device wrote, loaded for the report."""

    subject: int
    state: Any  # Artifact
    shares: dict[str, Any]  # "FORM-E" -> Share
    stream: list[tuple[np.ndarray, np.ndarray]]
    held: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    test_feats: np.ndarray
    resets: int
    clip_resets: int


def load_site(folder: Path, subject: int) -> Site:
    from qcore.edge.share import load_share
    from qcore.edge.state import load_state

    mine = folder / "devices" / str(subject)
    info = json.loads((mine / "device.json").read_text())
    with np.load(mine / "data.npz", allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    cuts = np.cumsum(data["sizes"])[:-1]
    stream = list(
        zip(np.split(data["stream_X"], cuts), np.split(data["stream_y"], cuts), strict=True)
    )
    shares = {
        f"{form}-{tag}": load_share(mine / f"share-{form}-{tag}.npz")
        for form in FORMS
        for tag in ("clean", *(f"eps{e}" for e in EPSILONS))
    }
    return Site(
        subject, load_state(mine / "state.qcore"), shares, stream,
        (data["held"], data["held_y"]), (data["test_X"], data["test_y"]),
        data["test_feats"].astype(np.float64), info["resets"], info["clip_resets"],
    )  # fmt: skip


def accuracy(art, test: tuple[np.ndarray, np.ndarray], deployed=None) -> tuple[float, np.ndarray]:
    from qcore.edge.device import Device

    pred = Device(art, deployed=deployed).predict(test[0], normalized=True)
    return float((pred == test[1]).mean()), pred


def fedavg(
    weight: np.ndarray,
    bias: np.ndarray,
    clients: list[tuple[np.ndarray, np.ndarray]],
    lr: float,
    seed: int,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """FedAvg of a linear softmax head from ``weight`` ``(K, D)`` and ``bias``: per round,
    one local epoch of SGD on each client's (features, labels), averaged by window count;
    the global head after each round of :data:`ROUNDS`."""
    w, b = weight.astype(np.float64), bias.astype(np.float64)
    share = np.array([len(y) for _, y in clients], dtype=np.float64)
    share /= share.sum()
    out = {}
    for r in range(1, max(ROUNDS) + 1):
        local_w, local_b = [], []
        for k, (X, y) in enumerate(clients):
            cw, cb = w.copy(), b.copy()
            order = np.random.default_rng([seed, r, k]).permutation(len(y))
            for i in range(0, len(y), BATCH):
                xb, yb = X[order[i : i + BATCH]], y[order[i : i + BATCH]]
                z = xb @ cw.T + cb
                p = np.exp(z - z.max(axis=1, keepdims=True))
                p /= p.sum(axis=1, keepdims=True)
                p[np.arange(len(yb)), yb] -= 1.0  # d(cross-entropy)/d(logits)
                cw -= lr * (p.T @ xb) / len(yb)
                cb -= lr * p.sum(axis=0) / len(yb)
            local_w.append(cw)
            local_b.append(cb)
        w, b = np.tensordot(share, np.array(local_w), 1), share @ np.array(local_b)
        if r in ROUNDS:
            out[r] = (w.copy(), b.copy())
    return out


def linear_accuracy(w: np.ndarray, b: np.ndarray, feats: np.ndarray, y: np.ndarray) -> float:
    return float((np.argmax(feats @ w.T + b, axis=1) == y).mean())


def stats_diff(a, b) -> float:
    """Largest difference of two heads' statistics, relative to each part's scale."""
    out = 0.0
    for part in ("count", "mean", "scatter"):
        x, z = getattr(a, part).astype(np.float64), getattr(b, part).astype(np.float64)
        out = max(out, float(np.abs(x - z).max() / max(1.0, np.abs(z).max())))
    return out


def site_row(deployed, meta: dict, site: Site, others: list[Site]) -> dict:
    """The report's row of new site ``site`` merged from the ``others`` devices."""
    from qcore.edge.backbone import solve_head
    from qcore.edge.device import Device
    from qcore.edge.fleet import learnt_part, merge_fleet, merge_shares, weigh_as
    from qcore.edge.head import batch_stats, combine

    sha, total = meta["sha256"], float(deployed.head.count.sum())
    merged = merge_fleet(deployed, [s.state for s in others], None, sha)
    feats = np.concatenate([s.held[0] for s in others])
    labels = np.concatenate([s.held[1] for s in others])
    central = replace(
        deployed, head=combine(deployed.head, batch_stats(feats, labels, deployed.head.n_classes))
    )
    prior = weigh_as(merged, total)
    fleet_before, pred_before = accuracy(merged, site.test)
    central_acc, pred_central = accuracy(central, site.test)

    def after(start) -> float:
        dev = Device(start)
        for X, y in site.stream:
            dev.step(X, y, normalized=True)
        return accuracy(dev.art, site.test, start)[0]

    private = {}
    for form in FORMS:
        for tag in ("clean", *(f"eps{e}" for e in EPSILONS)):
            art = merge_shares(deployed, [s.shares[f"{form}-{tag}"] for s in others], None, sha)
            key = f"{form}_{'clipped' if tag == 'clean' else tag}"
            private[key] = accuracy(weigh_as(art, total), site.test)[0]
    solved = solve_head(deployed.head, deployed.device)
    clients = [(s.held[0].astype(np.float64), s.held[1]) for s in others]
    fed = {}
    for m in LR_MULTS:
        for r, (w, b) in fedavg(solved.weight, solved.bias, clients, m / meta["smooth"], 0).items():
            fed[f"fedavg_m{m:g}_r{r}"] = linear_accuracy(w, b, site.test_feats, site.test[1])
    part = learnt_part(deployed, site.state)
    assert merged.head is not None and central.head is not None
    return {
        "dataset": meta["config"]["dataset"], "site": site.subject, "n_test": len(site.test[1]),
        "deployed": accuracy(deployed, site.test)[0],
        "own": accuracy(site.state, site.test, deployed)[0],
        "fleet_before": fleet_before, "fleet_after": after(prior), "central": central_acc,
        "fleet_after_pooled": after(merged),
        "pred_diff": int((pred_before != pred_central).sum()),
        "stats_diff": stats_diff(merged.head, central.head),
        "bytes32": part.nbytes, "bytes16": part.nbytes // 2, "resets": site.resets,
        "clip": meta["clip"], "clip_centred": meta["clip_centred"],
        "clip_resets": site.clip_resets, **private,
        "fedavg_r0": linear_accuracy(solved.weight, solved.bias, site.test_feats, site.test[1]),
        **fed, "fedavg_bytes_round": 2 * 4 * (solved.weight.size + solved.bias.size),
    }  # fmt: skip


def pair_rows(folder: Path) -> list[dict]:
    """Every site's row of the pair in ``folder`` (all its devices done), cached in
    ``sites.json`` for the same devices and deployed artifact."""
    from qcore.edge.artifact import load_artifact

    meta = _meta(folder)
    assert meta is not None
    key = {"deployed": meta["sha256"], "subjects": meta["subjects"], "fields": list(FIELDS)}
    cached = folder / "sites.json"
    if cached.is_file():
        got = json.loads(cached.read_text())
        if got.get("key") == key:
            return got["rows"]
    deployed = load_artifact(folder / "deployed.qcore")
    sites = [load_site(folder, s) for s in meta["subjects"]]
    rows = [site_row(deployed, meta, s, [o for o in sites if o is not s]) for s in sites]
    write_json_atomic(cached, {"key": key, "rows": rows})
    return rows


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
        meta = _meta(folder)
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
        meta = _meta(folder)
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


def write_fleet_report(out: Path, rows: list[dict]) -> None:
    """``sites.csv``, ``fleet.md`` and ``fleet.png`` of ``rows`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "sites.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in r.items()})
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    by = {d: [r for r in rows if r["dataset"] == d] for d in datasets}
    (out / "fleet.md").write_text("\n".join(summary(d, by[d]) for d in datasets))
    plot_privacy(by, out / "fleet.png")


def _median(rows: list[dict], key: str) -> float:
    return float(np.median([r[key] for r in rows]))


def summary(dataset: str, rows: list[dict]) -> str:
    n = len(rows)
    gain = np.array([r["fleet_before"] - r["deployed"] for r in rows])
    to_central = np.array([r["fleet_before"] - r["central"] for r in rows])
    after = np.array([r["fleet_after"] - r["own"] for r in rows])
    pooled = np.array([r["fleet_after_pooled"] - r["own"] for r in rows])
    beats, holds = int((gain > 0).sum()), int((after >= 0).sum())
    cols = ("deployed", "own", "fleet_before", "fleet_after", "central")
    ok_before = np.median(gain) > 0 and beats >= 0.8 * n and np.abs(to_central).max() <= 0.01
    lines = [
        f"## {dataset}: {n} sites, each merged with the other {n - 1} devices",
        "",
        "| | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
        "| median accuracy | " + " | ".join(f"{_median(rows, k):.3f}" for k in cols) + " |",
        "",
        f"- fleet_before - deployed: median {np.median(gain):+.3f}, min {gain.min():+.3f}; "
        f"fleet_before beats deployed on {beats}/{n} sites ({beats / n:.0%});",
        f"- fleet_before - central: median {np.median(to_central):+.4f}, max |.| "
        f"{np.abs(to_central).max():.4f}; test predictions that differ: "
        f"{sum(r['pred_diff'] for r in rows)} of {sum(r['n_test'] for r in rows)}; largest "
        f"relative difference of the statistics {max(r['stats_diff'] for r in rows):.1e};",
        f"- fleet_after - own: median {np.median(after):+.3f}, min {after.min():+.3f}; "
        f"fleet_after >= own on {holds}/{n} sites ({holds / n:.0%}); at the fleet's full "
        f"weight: median {np.median(pooled):+.3f}, >= own on {int((pooled >= 0).sum())}/{n};",
        f"- bytes a device sends (learnt counts, means, scatter): "
        f"{_median(rows, 'bytes32'):,.0f} as float32, {_median(rows, 'bytes16'):,.0f} as "
        "float16 (median);",
        f"- user-guard resets over all devices' streams: {sum(r['resets'] for r in rows)};",
        f"- acceptance: before any label, beats deployed at the median and on >= 80% of sites, "
        f"within 1 point of central: {'holds' if ok_before else 'does not hold'}; after the "
        f"site's stream at least as good as its own device: "
        f"{'holds' if holds == n else f'holds on {holds}/{n} sites'}.",
    ]
    return "\n".join(lines + privacy_lines(rows) + fedavg_lines(rows)) + "\n"


def privacy_lines(rows: list[dict]) -> list[str]:
    base = _median(rows, "fleet_before")
    lines = [
        "",
        f"### Privacy (delta {DELTA:g}; clips: C = {rows[0]['clip']:.3f}, centred C_c = "
        f"{rows[0]['clip_centred']:.3f}); merge without noise, unclipped: {base:.3f}",
        "",
        "| share | clipped, no noise | "
        + " | ".join(f"epsilon {e}" for e in EPSILONS[::-1])
        + " | epsilon 4 - unclipped merge |",
        "|---|---|" + "---|" * len(EPSILONS) + "---|",
    ]
    for form, label in FORMS.items():
        cols = [f"{form}_clipped", *(f"{form}_eps{e}" for e in EPSILONS[::-1])]
        gap = float(np.median([r[f"{form}_eps4"] - r["fleet_before"] for r in rows]))
        lines.append(
            f"| {label} | " + " | ".join(f"{_median(rows, k):.3f}" for k in cols)
            + f" | {gap:+.3f} (median of differences) |"
        )  # fmt: skip
    best = max(_median(rows, f"{f}_eps4") for f in FORMS)
    lines += [
        "",
        f"- user-guard resets over the clipped streams: {sum(r['clip_resets'] for r in rows)};",
        f"- acceptance: at epsilon 4 the median target accuracy within 2 points of the merge "
        f"without noise ({base:.3f}): {'holds' if best >= base - 0.02 else 'does not hold'} "
        f"(best form {best:.3f}).",
    ]
    return lines


def fedavg_lines(rows: list[dict]) -> list[str]:
    per_round = rows[0]["fedavg_bytes_round"]
    lines = [
        "",
        "### FedAvg of a linear softmax head (from the deployed head; SGD, 1 local epoch, "
        f"batch {BATCH}, lr = m / L), before the site's labels",
        "",
        "| m | " + " | ".join(f"R = {r}" for r in ROUNDS) + " |",
        "|---|" + "---|" * len(ROUNDS),
    ]
    for m in LR_MULTS:
        accs = [_median(rows, f"fedavg_m{m:g}_r{k}") for k in ROUNDS]
        lines.append(f"| {m:g} | " + " | ".join(f"{a:.3f}" for a in accs) + " |")
    lines += [
        "| bytes per device (down + up) | "
        + " | ".join(f"{k * per_round:,}" for k in ROUNDS)
        + " |",
        "",
        f"- R = 0 (the deployed head as a linear map): median {_median(rows, 'fedavg_r0'):.3f} "
        f"(deployed: {_median(rows, 'deployed'):.3f});",
        f"- one-round merge: median {_median(rows, 'fleet_before'):.3f}, "
        f"{_median(rows, 'bytes32'):,.0f} bytes up once (float32; the merged statistics down "
        "once, about as many).",
    ]
    return lines


def plot_privacy(by: dict[str, list[dict]], path: Path) -> None:
    """Median accuracy against epsilon per dataset and share form, with the deployed
    model, the merge without noise and the central head as lines."""
    from qcore.eval.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, max(1, len(by)), figsize=(5 * max(1, len(by)), 3.6), squeeze=False)
    for ax, (dataset, rows) in zip(axes[0], by.items(), strict=False):
        for form, label in FORMS.items():
            ax.plot(EPSILONS, [_median(rows, f"{form}_eps{e}") for e in EPSILONS], "o-",
                    label=label)  # fmt: skip
        for key, style in (("fleet_before", "k--"), ("central", "k:"), ("deployed", "r-.")):
            ax.axhline(_median(rows, key), linestyle=style[1:], color=style[0], label=key)
        ax.set_xscale("log", base=2)
        ax.set_xticks(EPSILONS, [str(e) for e in EPSILONS])
        ax.set_xlabel("epsilon (delta 1e-5)")
        ax.set_ylabel("median target accuracy, new site")
        ax.set_title(f"{dataset}: {len(rows)} sites")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
