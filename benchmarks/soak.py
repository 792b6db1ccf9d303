"""Soak test of the edge runtime: a long labelled stream, memory and core size watched.

Cloud side (a child process, so the measured device process never imports PyTorch): a
seeded synthetic dataset (:func:`qcore.data.synthetic.make_synthetic`, 3 channels x 64
steps, 4 classes, 5 domains); InceptionTime with ``--filters`` filters and depth
``--depth`` trained on domain 0 with its training dynamics recorded, quantized to
``--bits``, back-prop calibrated on the source, a QCore of ``--core-size`` windows selected
by the dynamics scores, a flip network fitted on teacher rounds, and the artifact written.

Device side (this process; NumPy only): :class:`qcore.edge.device.Device` streams
``--batches`` labelled batches of ``--batch`` raw windows. The stream cycles through the
target domains 1..4, switching every ``--switch-every`` batches; each batch is a seeded
draw from the current domain's windows with fresh Gaussian noise and a slow sinusoidal
gain drift, so calibration keeps having work to do. Every step calls ``dev.step`` (policy
``--policy``, default: calibrate every batch) and every ``--save-every`` steps the state is
persisted with :func:`qcore.edge.state.save_state` into a temporary folder, as ``qcore
device`` does after each batch, so the file I/O is soaked too.

Checked along the way:

* after every step: the core holds exactly its fixed size (``len(core) == --core-size``,
  windows of the model's shape);
* every ``--check-every`` steps (after the warm-up of ``--warmup`` steps): the resident set
  size (:func:`qcore.edge.report.rss_bytes`, ``/proc/self/statm``), live Python objects and
  open file descriptors are sampled; the state file is read back with
  :func:`qcore.edge.state.load_state`, and both the file's bytes and the re-encoded
  loaded state must equal ``encode_artifact(dev.art)``; no stale ``.tmp`` file may remain.

The run FAILS (exit status 1, after printing the table) if the core size ever deviates,
a state file does not round-trip, open file descriptors or stale temporary files grow,
or RSS grows from the end of the warm-up to the end of the stream by more than
``--tol-mib`` MiB (default 10) AND more than ``--tol-pct`` percent (default 5) at once.
Prints a Markdown table and a verdict line; writes the numbers to ``--out`` (JSON) and a
PNG of RSS against batch number beside it (``--no-plot`` to skip).

    .venv/bin/python benchmarks/soak.py [--batches 10000] [--save-every 1]
        [--out runs/soak/soak.json]
"""

from __future__ import annotations

import os

# Thread counts must be fixed before NumPy/PyTorch load their BLAS (a script may do this).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from qcore.edge.artifact import encode_artifact, load_artifact  # noqa: E402
from qcore.edge.device import Device  # noqa: E402
from qcore.edge.report import peak_rss_bytes  # noqa: E402
from qcore.edge.state import load_state, save_state  # noqa: E402

SOURCE = 0
N_DOMAINS = 5  # domain 0 is the source, 1..4 the drifting targets
MIB = 1 << 20


# ------------------------------------------------------------------------ cloud side


def build(args: argparse.Namespace, art_path: Path, pool_path: Path) -> None:
    """Train, quantize, select the core, fit the flip net; write the artifact and the pool.

    Runs in a child process (``--build-only``): PyTorch is imported here only.
    """
    import torch

    from qcore.cloud import pipeline
    from qcore.cloud.model import count_params
    from qcore.config import RunConfig
    from qcore.data.scenario import make_scenario
    from qcore.data.synthetic import make_synthetic
    from qcore.edge.artifact import save_artifact

    torch.set_num_threads(1)
    seed = args.seed
    cfg = RunConfig(
        dataset="synthetic",
        source=SOURCE,
        target=1,
        filters=args.filters,
        depth=args.depth,
        epochs=args.epochs,
        record_every=2,
        bits=(args.bits,),
        dynamics_bits=tuple(sorted({2, args.bits, 8})),
        core_size=args.core_size,
        seed=seed,
        threads=1,
    )
    ds = make_synthetic(n_domains=N_DOMAINS, n_per_class=60, seed=seed)
    sc = make_scenario(ds, SOURCE, 1, seed=seed)
    Xs, ys = sc.source_train.X, sc.source_train.y
    model, dyn = pipeline.train_model(cfg, Xs, ys, sc.n_classes)
    qmodel = pipeline.quantize(model, args.bits, Xs, cfg)
    pipeline.calibrate_on_source(qmodel, Xs, ys, cfg)
    core = pipeline.select_qcore(cfg, Xs, ys, pipeline.core_scores(dyn, len(ys)))
    plan = pipeline.FlipTraining(rounds=6, held_out=0)
    net, _ = pipeline.train_flip_network(qmodel, core, Xs, ys, sc.n_classes, args.batch, cfg, plan)
    art = pipeline.device_artifact(qmodel, core, net, sc.normalizer, sc.class_names, cfg)
    save_artifact(art_path, art)
    targets = ds.domain != SOURCE
    np.savez(pool_path, X=ds.X[targets], y=ds.y[targets], domain=ds.domain[targets])
    print(
        f"built: {count_params(model)} parameters, {args.bits}-bit, core {len(core)}, "
        f"{len(ys)} source windows {Xs.shape[1:]}",
        flush=True,
    )


# ----------------------------------------------------------------------- device side


class Stream:
    """Seeded labelled batches of raw windows from a drifting target (domains 1..4)."""

    def __init__(self, pool: dict[str, np.ndarray], batch: int, switch_every: int, seed: int):
        self.X, self.y, self.domain = pool["X"], pool["y"].astype(np.int64), pool["domain"]
        self.targets = np.unique(self.domain)
        self.index = {int(d): np.flatnonzero(self.domain == d) for d in self.targets}
        self.sd = self.X.std(axis=(0, 2)).astype(np.float32)[None, :, None]
        self.batch, self.switch_every = batch, switch_every
        self.rng = np.random.default_rng([seed, 1])

    def domain_at(self, i: int) -> int:
        """Target domain of batch ``i`` (0-based)."""
        return int(self.targets[(i // self.switch_every) % len(self.targets)])

    def draw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.rng.choice(self.index[self.domain_at(i)], self.batch, replace=False)
        gain = 1.0 + 0.15 * np.sin(2.0 * np.pi * i / 1700.0)  # slow drift within a domain
        noise = self.rng.normal(0.0, 0.2, (self.batch, *self.X.shape[1:])).astype(np.float32)
        X = (gain * self.X[idx] + noise * self.sd).astype(np.float32)
        return X, self.y[idx]


def open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def soak(args: argparse.Namespace, art_path: Path, pool_path: Path, state_dir: Path) -> dict:
    art = load_artifact(art_path)
    with np.load(pool_path) as f:
        pool = {k: f[k] for k in f.files}
    stream = Stream(pool, args.batch, args.switch_every, args.seed)
    shape = (art.model.n_channels, art.window_length)
    size = len(art.core)
    if size != args.core_size:
        raise SystemExit(f"artifact core has {size} windows, expected {args.core_size}")
    dev = Device(art, art.device.replace(policy=args.policy, seed=args.seed))
    state = state_dir / "state.qcore"
    n = args.batches
    rss = np.zeros(n, dtype=np.int64)  # per step, from the step's report (preallocated)
    step_ms = np.zeros(n)
    save_ms = np.zeros(n)
    acc = np.zeros(n)
    counts = {"calibrations": 0, "rollbacks": 0, "flips": 0, "saves": 0, "state_checks": 0}
    core_min = core_max = size
    core_bad: list[int] = []
    state_bad: list[int] = []
    checkpoints: list[dict] = []
    saved_at = 0
    t_start = time.perf_counter()
    for i in range(n):
        X, y = stream.draw(i)
        t0 = time.perf_counter()
        rep = dev.step(X, y)
        step_ms[i] = (time.perf_counter() - t0) * 1e3
        rss[i] = rep.rss_bytes or 0
        acc[i] = rep.accuracy
        counts["calibrations"] += bool(rep.calibrated)
        counts["rollbacks"] += bool(rep.rolled_back)
        counts["flips"] += int(rep.flips)
        core = dev.art.core
        k = len(core)
        core_min, core_max = min(core_min, k), max(core_max, k)
        if k != size or core.X.shape[1:] != shape or len(core.y) != size:
            core_bad.append(i + 1)
        done = i + 1
        checkpoint = done >= args.warmup and (done - args.warmup) % args.check_every == 0
        if done % args.save_every == 0 or (checkpoint and saved_at != done) or done == n:
            t1 = time.perf_counter()
            save_state(state, dev.art)
            save_ms[i] = (time.perf_counter() - t1) * 1e3
            counts["saves"] += 1
            saved_at = done
        if checkpoint or done == n:
            cp = {"batch": done, "rss_bytes": int(rss[i]), "objects": None, "fds": open_fds()}
            cp["objects"] = len(gc.get_objects())
            want = encode_artifact(dev.art)
            ok = state.read_bytes() == want and encode_artifact(load_state(state)) == want
            counts["state_checks"] += 1
            if not ok:
                state_bad.append(done)
            cp["stale_tmp"] = len(list(state_dir.glob(".*.tmp")))
            cp["state_bytes"] = state.stat().st_size
            checkpoints.append(cp)
            if args.verbose or done % (5 * args.check_every) == 0 or done == n:
                print(
                    f"batch {done:6d}  rss {rss[i] / MIB:7.2f} MiB  objects {cp['objects']}  "
                    f"fds {cp['fds']}  acc(last 500) {acc[max(0, i - 499) : i + 1].mean():.3f}  "
                    f"{time.perf_counter() - t_start:6.0f} s",
                    flush=True,
                )
    wall = time.perf_counter() - t_start
    peak = peak_rss_bytes()
    base, end = checkpoints[0], checkpoints[-1]
    after = rss[args.warmup - 1 :] / MIB
    slope = float(np.polyfit(np.arange(len(after)), after, 1)[0]) * 1000 if len(after) > 1 else 0.0
    growth = (end["rss_bytes"] - base["rss_bytes"]) / MIB
    growth_pct = 100.0 * (end["rss_bytes"] - base["rss_bytes"]) / base["rss_bytes"]
    phases = []
    for start in range(0, n, args.switch_every):
        seg = acc[start : min(n, start + args.switch_every)]
        head = seg[: min(100, len(seg))]
        phases.append(
            {
                "first_batch": start + 1,
                "domain": stream.domain_at(start),
                "acc_first_100": float(head.mean()),
                "acc_last_100": float(seg[-100:].mean()),
                "acc_mean": float(seg.mean()),
            }
        )
    fails = []
    if core_bad:
        fails.append(f"core size deviated at {len(core_bad)} steps (first: {core_bad[0]})")
    if state_bad:
        fails.append(f"state did not round-trip at {len(state_bad)} checks (first: {state_bad[0]})")
    if growth > args.tol_mib and growth_pct > args.tol_pct:
        fails.append(f"RSS grew {growth:.2f} MiB ({growth_pct:.1f} %)")
    if base["fds"] is not None and end["fds"] > base["fds"]:
        fails.append(f"open file descriptors grew {base['fds']} -> {end['fds']}")
    if end["stale_tmp"]:
        fails.append(f"{end['stale_tmp']} stale temporary state files")
    return {
        "settings": {k: v for k, v in vars(args).items() if k != "build_only"},
        "artifact_bytes": art_path.stat().st_size,
        "state_bytes": end["state_bytes"],
        "batches": n,
        "core_size": size,
        "core_min": core_min,
        "core_max": core_max,
        "core_deviations": len(core_bad),
        "state_mismatches": len(state_bad),
        **counts,
        "rss_warmup_bytes": base["rss_bytes"],
        "rss_end_bytes": end["rss_bytes"],
        "rss_growth_mib": growth,
        "rss_growth_pct": growth_pct,
        "rss_slope_mib_per_1000": slope,
        "rss_max_bytes": int(rss.max()),
        "rss_max_after_warmup_bytes": int(rss[args.warmup - 1 :].max()),
        "peak_rss_bytes": peak,
        "objects_warmup": base["objects"],
        "objects_end": end["objects"],
        "fds_warmup": base["fds"],
        "fds_end": end["fds"],
        "accuracy_mean": float(acc.mean()),
        "phases": phases,
        "step_ms_mean": float(step_ms.mean()),
        "step_ms_p50": float(np.median(step_ms)),
        "step_ms_p99": float(np.percentile(step_ms, 99)),
        "save_ms_mean": float(save_ms[save_ms > 0].mean()) if counts["saves"] else 0.0,
        "stream_wall_s": wall,
        "checkpoints": checkpoints,
        "failures": fails,
        "_rss_trace": rss,
    }


def plot(res: dict, path: Path, warmup: int, switch_every: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rss = res["_rss_trace"] / MIB
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(np.arange(1, len(rss) + 1), rss, lw=0.8, label="RSS after each step")
    cps = res["checkpoints"]
    ax.plot(
        [c["batch"] for c in cps],
        [c["rss_bytes"] / MIB for c in cps],
        "o",
        ms=3,
        label="checkpoints",
    )
    ax.axvline(warmup, color="grey", ls="--", lw=0.8, label="end of warm-up")
    for b in range(switch_every, len(rss), switch_every):
        ax.axvline(b, color="tab:orange", ls=":", lw=0.8)
    ax.set_xlabel("batch (orange: target domain switch)")
    ax.set_ylabel("RSS (MiB)")
    lo = min(rss[warmup - 1 :].min(), rss.min())
    ax.set_ylim(lo - 5, rss.max() + 5)
    ax.set_title(f"Edge runtime soak: {len(rss)} batches, core {res['core_size']}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(res: dict, build_s: float) -> str:
    s = res["settings"]
    rows = [
        ("batches streamed", f"{res['batches']:,} (batch {s['batch']}, policy {s['policy']})"),
        ("state saves / round-trip checks", f"{res['saves']:,} / {res['state_checks']}"),
        ("calibrations", f"{res['calibrations']:,}"),
        ("rollbacks (guard)", f"{res['rollbacks']:,}"),
        ("codes flipped (total)", f"{res['flips']:,}"),
        (
            "core size min / max (fixed)",
            f"{res['core_min']} / {res['core_max']} ({res['core_size']})",
        ),
        ("RSS after warm-up", f"{res['rss_warmup_bytes'] / MIB:.2f} MiB (batch {s['warmup']})"),
        ("RSS at the end", f"{res['rss_end_bytes'] / MIB:.2f} MiB"),
        ("RSS growth", f"{res['rss_growth_mib']:+.2f} MiB ({res['rss_growth_pct']:+.2f} %)"),
        ("RSS trend after warm-up", f"{res['rss_slope_mib_per_1000']:+.3f} MiB / 1,000 batches"),
        (
            "max RSS (any step) / process peak",
            f"{res['rss_max_bytes'] / MIB:.2f} MiB / {(res['peak_rss_bytes'] or 0) / MIB:.2f} MiB",
        ),
        ("Python objects warm-up -> end", f"{res['objects_warmup']:,} -> {res['objects_end']:,}"),
        ("open fds warm-up -> end", f"{res['fds_warmup']} -> {res['fds_end']}"),
        ("state file", f"{res['state_bytes']:,} bytes"),
        (
            "mean step (p50 / p99)",
            f"{res['step_ms_mean']:.1f} ms ({res['step_ms_p50']:.1f} / {res['step_ms_p99']:.1f})",
        ),
        ("mean state save", f"{res['save_ms_mean']:.1f} ms"),
        ("mean accuracy before calibration", f"{res['accuracy_mean']:.3f}"),
        ("wall time (stream / build)", f"{res['stream_wall_s'] / 60:.1f} min / {build_s:.0f} s"),
    ]
    lines = ["| quantity | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=16, help="windows per batch")
    ap.add_argument("--save-every", type=int, default=1, help="persist the state every K steps")
    ap.add_argument("--warmup", type=int, default=500, help="steps before the RSS baseline")
    ap.add_argument("--check-every", type=int, default=500, help="steps between checkpoints")
    ap.add_argument("--switch-every", type=int, default=2000, help="steps per target domain")
    ap.add_argument("--policy", default="every", help="every, every:N or drift")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--core-size", type=int, default=20)
    ap.add_argument("--filters", type=int, default=8)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol-mib", type=float, default=10.0)
    ap.add_argument("--tol-pct", type=float, default=5.0)
    ap.add_argument("--out", default="runs/soak/soak.json", help="JSON of the numbers")
    ap.add_argument("--no-plot", action="store_true", help="skip the RSS PNG")
    ap.add_argument("--verbose", action="store_true", help="print every checkpoint")
    ap.add_argument("--build-only", nargs=2, metavar=("ART", "POOL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build_only:
        build(args, Path(args.build_only[0]), Path(args.build_only[1]))
        return
    if min(args.batches, args.batch, args.save_every, args.warmup, args.check_every) < 1:
        raise SystemExit("--batches, --batch, --save-every, --warmup, --check-every must be >= 1")
    if args.switch_every < 1 or args.warmup > args.batches:
        raise SystemExit("need --switch-every >= 1 and --warmup <= --batches")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    art_path = out.with_name(out.stem + "-artifact.qcore")
    pool_path = out.with_name(out.stem + "-pool.npz")
    t0 = time.perf_counter()
    cmd = [sys.executable, __file__, *sys.argv[1:], "--build-only", str(art_path), str(pool_path)]
    subprocess.run(cmd, check=True)
    build_s = time.perf_counter() - t0
    state_dir = Path(tempfile.mkdtemp(prefix="qcore-soak-"))
    try:
        res = soak(args, art_path, pool_path, state_dir)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    res["build_s"] = build_s
    res["command"] = " ".join([".venv/bin/python", "benchmarks/soak.py", *sys.argv[1:]])
    if not args.no_plot:
        png = out.with_suffix(".png")
        plot(res, png, args.warmup, args.switch_every)
        res["plot"] = str(png)
    trace = res.pop("_rss_trace")
    res["rss_trace_mib_every_50"] = [round(float(v) / MIB, 3) for v in trace[49::50]]
    out.write_text(json.dumps(res, indent=1) + "\n")
    print()
    print(table(res, build_s))
    print()
    if res["failures"]:
        print("**Verdict: FAIL** - " + "; ".join(res["failures"]))
        sys.exit(1)
    print(
        f"**Verdict: PASS** - core fixed at {res['core_size']} for all {res['batches']:,} "
        f"batches, every state round-tripped, RSS {res['rss_growth_mib']:+.2f} MiB "
        f"({res['rss_growth_pct']:+.2f} %) from warm-up to end (tolerance: "
        f"{args.tol_mib:g} MiB and {args.tol_pct:g} %)."
    )


if __name__ == "__main__":
    main()
