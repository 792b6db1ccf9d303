"""The edge runtime (NumPy) against the PyTorch simulation, measured side by side in one run.

HAPT, source subject 1 -> target subject 4; InceptionTime with 16 filters and depth 3 on
6 x 128 windows, trained a few epochs, quantized at 2, 4 and 8 bits, a QCore of 20
windows and a flip network per bit-width (the cloud side). Then, per bit-width:

* inference latency per window: edge ``forward`` vs the torch simulation, for single
  windows (median of repeats) and for the whole target test split;
* calibration step time: the edge flip step (3 guarded flip passes on core + batch),
  the full QCore device step (inference, flip step, guard, core update), the full
  streaming-head device step (``slda``: inference, statistics update, one solve), and
  the torch back-prop reference (10 Adam steps on core + batch);
* peak resident memory of a device process (``qcore device`` on 3 batches, its own
  ``peak_rss_bytes``; with the QCore artifact and with the streaming-head artifact) vs a
  process doing the torch back-prop step (its own ``VmHWM``), and a bare
  ``python -c "import numpy"`` for scale;
* artifact bytes per part, and the code a device needs (qcore/edge + qcore/core sources;
  also every qcore module the device process really loads) vs the PyTorch install.

Everything runs single-threaded (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``),
like a small device and fair to both sides. Prints Markdown tables.

    .venv/bin/python benchmarks/edge.py [--epochs 8] [--out runs/bench-edge]
"""

from __future__ import annotations

import os

# Thread counts must be fixed before NumPy/PyTorch load their BLAS (a script may do this).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import qcore  # noqa: E402
from qcore.cloud import pipeline  # noqa: E402
from qcore.cloud.calibrate import backprop_calibrate  # noqa: E402
from qcore.cloud.model import count_params  # noqa: E402
from qcore.cloud.train import predict_logits  # noqa: E402
from qcore.config import RunConfig  # noqa: E402
from qcore.data.registry import load_dataset  # noqa: E402
from qcore.data.scenario import make_scenario  # noqa: E402
from qcore.edge.artifact import artifact_sizes, save_artifact  # noqa: E402
from qcore.edge.device import Device  # noqa: E402
from qcore.edge.flip_passes import flip_calibrate  # noqa: E402
from qcore.edge.infer import forward  # noqa: E402

BITS = (2, 4, 8)
FILTERS, DEPTH, CORE = 16, 3, 20
SEED = 0
SRC = Path(qcore.__file__).resolve().parent

# The torch reference process: load the same artifact into the simulation, run one
# back-prop step (10 Adam steps) on core + first batch, report its own peak RSS.
TORCH_STEP = """
import sys, numpy as np, torch
torch.set_num_threads(1)
from qcore.cloud.calibrate import backprop_calibrate
from qcore.cloud.export import load_qmodel
from qcore.cloud.model import InceptionTime
from qcore.edge.artifact import load_artifact
art = load_artifact(sys.argv[1])
qm = art.model
model = InceptionTime(qm.n_channels, qm.n_classes, qm.filters, qm.depth)
load_qmodel(model, qm)
with np.load(sys.argv[2]) as f:
    X, y = f["X"], f["y"]
Xn = (X - art.normalizer_mean[None, :, None]) / art.normalizer_std[None, :, None]
Xc = np.concatenate([art.core.X, Xn.astype(np.float32)])
yc = np.concatenate([art.core.y, y])
backprop_calibrate(model, Xc, yc, steps=10, lr=1e-3, batch_size=len(yc), seed=0)
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print(int(line.split()[1]) * 1024)
"""


def device_peak(artifact: Path, stream_dir: Path, state: Path) -> int:
    """Peak RSS (bytes) a fresh `qcore device` process reports after the stream."""
    state.unlink(missing_ok=True)
    proc = subprocess.run(
        [*device_command(), str(artifact), "--stream", str(stream_dir), "--state", str(state)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_bytes"]


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` in milliseconds (one untimed warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def device_command() -> list[str]:
    """``qcore device`` as a fresh interpreter runs it."""
    return [sys.executable, "-m", "qcore.cli", "device"]


def tree_bytes(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def py_files(*packages: str) -> list[Path]:
    return [p for pkg in packages for p in sorted((SRC / pkg).glob("*.py"))]


def loaded_qcore_files() -> list[Path]:
    """Source files of every qcore module a device process imports."""
    code = (
        "import sys, qcore.cli, qcore.edge.cli\n"
        "print('\\n'.join(m.__file__ for n, m in list(sys.modules.items())\n"
        "                 if n.startswith('qcore') and getattr(m, '__file__', None)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [Path(line) for line in out.stdout.split()]


def package_bytes(module: str) -> int:
    root = Path(__import__(module).__file__).resolve().parent
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def peak_of_command(cmd: list[str]) -> int:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return int(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--out", default=None, help="folder for artifacts (default: a temp dir)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    cfg = RunConfig(
        source=1, target=4, filters=FILTERS, depth=DEPTH, epochs=args.epochs, record_every=2,
        dynamics_bits=BITS, core_size=CORE, seed=SEED, threads=1,
    )  # fmt: skip
    out = Path(args.out or tempfile.mkdtemp(prefix="qcore-bench-edge-"))
    out.mkdir(parents=True, exist_ok=True)

    # ---- cloud side: train, score, core ---------------------------------------------
    ds = load_dataset("hapt")
    sc = make_scenario(ds, 1, 4, seed=SEED)
    Xs, ys = sc.source_train.X, sc.source_train.y
    model, dyn = pipeline.train_model(cfg, Xs, ys, sc.n_classes)
    core = pipeline.select_qcore(cfg, Xs, ys, pipeline.core_scores(dyn, len(ys)))
    batch = sc.stream[0]
    X_cal = np.concatenate([core.X, batch.X])
    y_cal = np.concatenate([core.y, batch.y])
    X_test = sc.target_test.X
    stream_dir = out / "stream"
    stream_dir.mkdir(exist_ok=True)
    mean, std = sc.normalizer.mean[None, :, None], sc.normalizer.std[None, :, None]
    for i, b in enumerate(sc.stream[:3]):  # the device gets raw, un-normalised windows
        np.savez(stream_dir / f"b{i}.npz", X=(b.X * std + mean).astype(np.float32), y=b.y)
    print(
        f"HAPT 1->4: {len(ys)} source windows {Xs.shape[1:]}, stream batches of {len(batch)}, "
        f"{len(X_test)} target test windows; {count_params(model)} parameters; "
        f"trained in {time.perf_counter() - t_start:.0f} s",
        flush=True,
    )

    rows = []
    for bits in BITS:
        bcfg = cfg.replace(bits=(bits,))
        qmodel = pipeline.quantize(model, bits, Xs, bcfg)
        plan = pipeline.FlipTraining(rounds=6, held_out=0, iters=100)
        net, _ = pipeline.train_flip_network(
            qmodel, core, Xs, ys, sc.n_classes, len(batch), bcfg, plan
        )
        art = pipeline.device_artifact(qmodel, core, net, sc.normalizer, sc.class_names, bcfg)
        qm, d = art.model, art.device
        path = out / f"deployed-{bits}bit.qcore"
        save_artifact(path, art)
        head_cfg = bcfg.device.replace(head="slda", flip_steps=0, bn_mode="frozen")
        head_art = pipeline.device_artifact(
            qmodel, None, None, sc.normalizer, sc.class_names, bcfg, head_cfg, (Xs, ys),
            Xs.shape[2],
        )  # fmt: skip
        head_path = out / f"slda-{bits}bit.qcore"
        save_artifact(head_path, head_art)

        one = X_test[:1]
        edge_1 = median_ms(lambda: forward(qm, one), 30)  # noqa: B023
        torch_1 = median_ms(lambda: predict_logits(qmodel, one), 30)  # noqa: B023
        edge_n = median_ms(lambda: forward(qm, X_test), 3) / len(X_test)  # noqa: B023
        torch_n = median_ms(lambda: predict_logits(qmodel, X_test), 3) / len(X_test)  # noqa: B023
        flip_ms = median_ms(
            lambda: flip_calibrate(  # noqa: B023
                qm, X_cal, y_cal, net, steps=d.flip_steps, guard=d.flip_guard,  # noqa: B023
                bn_mode=d.bn_mode, budget=d.flip_budget,  # noqa: B023
            ),
            3,
        )  # fmt: skip
        raw = (batch.X * std + mean).astype(np.float32)
        free = d.replace(guard_margin=1.0)  # never rolled back: the full step's cost
        device_ms = median_ms(lambda: Device(art, free).step(raw, batch.y), 3)  # noqa: B023
        slda_ms = median_ms(lambda: Device(head_art).step(raw, batch.y), 3)  # noqa: B023

        def bp_step(m=qmodel) -> None:
            work = copy.deepcopy(m)  # each repeat starts from the deployed model
            backprop_calibrate(
                work, X_cal, y_cal, steps=10, lr=cfg.calib_lr, batch_size=len(y_cal), seed=SEED
            )

        bp_ms = median_ms(bp_step, 3)
        state = out / f"state-{bits}.qcore"
        edge_peak = device_peak(path, stream_dir, state)
        slda_peak = device_peak(head_path, stream_dir, state)
        torch_peak = peak_of_command(
            [sys.executable, "-c", TORCH_STEP, str(path), str(stream_dir / "b0.npz")]
        )
        acc = float(np.mean(forward(qm, X_test).argmax(1) == sc.target_test.y))
        rows.append(
            {
                "bits": bits,
                "acc": acc,
                "edge_1": edge_1,
                "torch_1": torch_1,
                "edge_n": edge_n,
                "torch_n": torch_n,
                "flip_ms": flip_ms,
                "device_ms": device_ms,
                "slda_ms": slda_ms,
                "slda_peak": slda_peak,
                "slda_sizes": artifact_sizes(head_art),
                "bp_ms": bp_ms,
                "edge_peak": edge_peak,
                "torch_peak": torch_peak,
                "sizes": artifact_sizes(art),
            }
        )
        print(f"done {bits} bits ({time.perf_counter() - t_start:.0f} s)", flush=True)

    numpy_peak = peak_of_command(
        [
            sys.executable,
            "-c",
            "import numpy\nfor l in open('/proc/self/status'):\n"
            "    if l.startswith('VmHWM:'): print(int(l.split()[1]) * 1024)",
        ]
    )
    edge_core_code = tree_bytes(py_files("edge", "core"))
    loaded_code = tree_bytes(loaded_qcore_files())
    torch_install = package_bytes("torch")
    mib = 1 << 20

    print(f"\nTarget test accuracy before calibration: {[round(r['acc'], 3) for r in rows]}")
    print("\n### Inference latency per window (ms, single thread)\n")
    print("| bits | edge, 1 window | torch, 1 window | ratio | edge, batched | torch, batched "
          "| ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['bits']} | {r['edge_1']:.3f} | {r['torch_1']:.3f} | "
            f"{r['torch_1'] / r['edge_1']:.2f}x | {r['edge_n']:.3f} | {r['torch_n']:.3f} | "
            f"{r['torch_n'] / r['edge_n']:.2f}x |"
        )
    n_cal = len(y_cal)
    print(f"\n### Calibration step on core + batch ({n_cal} windows), ms\n")
    print("| bits | edge flip step (3 passes) | QCore device step | slda device step "
          "| torch back-prop (10 Adam steps) | back-prop / flip "
          "| back-prop / slda step |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['bits']} | {r['flip_ms']:.1f} | {r['device_ms']:.1f} | {r['slda_ms']:.1f} | "
            f"{r['bp_ms']:.1f} | {r['bp_ms'] / r['flip_ms']:.2f}x | "
            f"{r['bp_ms'] / r['slda_ms']:.1f}x |"
        )
    print("\n### Peak resident memory of a process (MiB)\n")
    print("| bits | QCore device (`qcore device`, 3 batches) | slda device | torch back-prop "
          "step | back-prop / QCore | back-prop / slda |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['bits']} | {r['edge_peak'] / mib:.1f} | {r['slda_peak'] / mib:.1f} | "
            f"{r['torch_peak'] / mib:.1f} | {r['torch_peak'] / r['edge_peak']:.2f}x | "
            f"{r['torch_peak'] / r['slda_peak']:.2f}x |"
        )
    print(f"\n(`python -c 'import numpy'` alone: {numpy_peak / mib:.1f} MiB)")
    float_bytes = 4 * count_params(model)
    print("\n### Bytes per part\n")
    print("| bits | artifact | weights | norms | act | flip network | core | head statistics "
          "| meta | total | float32 weights |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for kind, s in (("QCore", r["sizes"]), ("slda", r["slda_sizes"])):
            print(
                f"| {r['bits']} | {kind} | {s['weights']} | {s['norms']} | {s['act']} | "
                f"{s['flipnet']} | {s['core']} | {s['head']} | {s['meta']} | {s['total']} | "
                f"{float_bytes} |"
            )
    print(
        f"\nCode: qcore/edge + qcore/core sources {edge_core_code} bytes; every qcore module "
        f"a device process loads {loaded_code} bytes; the PyTorch install "
        f"{torch_install / mib:.0f} MiB."
    )
    print(f"\nTotal benchmark time {time.perf_counter() - t_start:.0f} s; artifacts in {out}")


if __name__ == "__main__":
    main()
