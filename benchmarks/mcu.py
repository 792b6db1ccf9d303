"""The exported C runtime on the host and on a Cortex-M4 (QEMU mps2-an386) against the
NumPy device: issue 25's acceptance figures.

Per pair (HAPT 1 -> 4, USC-HAD 1 -> 11, and HAPT 1 -> 4 with LAYING held out of the
cloud, which the stream adds as a new class; the default settings of ``qcore run``, trained
with ``bits=2,4,8`` into ``OUT/<pair>``, the training cached there) and bit-width: the
deployed artifact is exported with ``qcore export --format c`` and checked with
:func:`qcore.edge.mcu.check` on one stream:

1. the source and the target test sets, unlabelled ("before": the deployed head);
2. the target stream batches of the run's scenario, labelled with class names as ``qcore
   data batches`` writes them (learnt batch by batch);
3. the source and the target test sets again ("after" calibration).

The windows are the scenario's, turned back into sensor units with its normaliser
(``X * std + mean``), so both sides read the same raw float32 windows. Prints a Markdown
table per target and writes ``OUT/mcu.json``.

    .venv/bin/python benchmarks/mcu.py [--out runs/bench-mcu] [--targets host,cortex-m4]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from qcore.config import load_config  # noqa: E402
from qcore.data.registry import load_dataset  # noqa: E402
from qcore.data.scenario import make_scenario  # noqa: E402
from qcore.edge.artifact import load_artifact  # noqa: E402
from qcore.edge.c_export import export_c  # noqa: E402
from qcore.edge.mcu import check, passed  # noqa: E402
from qcore.edge.mcu_build import environment_note  # noqa: E402
from qcore.eval.runner import run  # noqa: E402

PAIRS = {
    "hapt-1-4": ["dataset=hapt", "source=1", "target=4"],
    "usc-had-1-11": ["dataset=usc-had", "source=1", "target=11"],
    # LAYING held out of the cloud: the stream brings it, the device (C and NumPy) adds it
    "hapt-1-4-new": ["dataset=hapt", "source=1", "target=4", "new_classes=LAYING"],
}
USCHAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "USC-HAD"


def _raw(X: np.ndarray, norm) -> np.ndarray:
    return (X * norm.std[None, :, None] + norm.mean[None, :, None]).astype(np.float32)


def stream_of(overrides: list[str]) -> tuple[list, dict[str, slice]]:
    """The check's batches for one pair and which of them are before/stream/after."""
    cfg = load_config(None, overrides)
    ds = load_dataset(cfg.dataset, cfg.data_path, seed=cfg.seed)
    sc = make_scenario(ds, cfg.source, cfg.target, cfg.n_batches, cfg.test_fraction, cfg.seed)
    n = sc.normalizer
    tests = [(_raw(sc.source_test.X, n), None), (_raw(sc.target_test.X, n), None)]
    names = np.array(sc.class_names)  # labels as `qcore data batches` writes them
    stream = [(_raw(b.X, n), names[np.asarray(b.y, dtype=np.int64)]) for b in sc.stream]
    k = len(stream)
    parts = {"before": slice(0, 2), "stream": slice(2, 2 + k), "after": slice(2 + k, 4 + k)}
    return tests + stream + tests, parts


def _phase(res: dict, part: slice) -> dict:
    rows = res["per_batch"][part]
    n = sum(r["windows"] for r in rows)
    agree = sum(r["agree"] * r["windows"] for r in rows) / n
    out = {"windows": n, "agree": agree}
    for key in ("clear_disagree", "added_c", "added_numpy"):
        out[key] = sum(r[key] for r in rows)
    return out


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "?"


def table(rows: list[dict], target: str) -> str:
    """One Markdown table per target."""
    head = (
        "| pair | bits | windows | agree before / stream / after | clear differing | "
        "added class predicted after, C / NumPy | stats rel |"
    )
    cols = "|---|---|---|---|---|---|---|"
    if target == "cortex-m4":
        head += " RAM (static + stack) | arena | flash | instr/window | ms @80MHz | instr/batch |"
        cols += "---|---|---|---|---|---|"
    else:
        head += " C ms/window | NumPy ms/window (1) | NumPy ms/window (batch) |"
        cols += "---|---|---|"
    lines = [head, cols]
    for r in rows:
        if r["target"] != target:
            continue
        ph = r["phases"]
        agree = " / ".join(f"{ph[p]['agree']:.4f}" for p in ("before", "stream", "after"))
        line = (
            f"| {r['pair']} | {r['bits']} | {r['windows']} | {agree} | "
            f"{r['predictions']['clear_disagree']} | "
            f"{ph['after']['added_c']} / {ph['after']['added_numpy']} | "
            f"{r['head_stats_rel_diff']:.1e} |"
        )
        if target == "cortex-m4":
            m, c = r["memory"], r["counts"]
            line += (
                f" {m['ram']} ({m['ram_static']} + {m['stack']}) | {m['arena']} | {m['flash']} |"
                f" {c['instructions_per_window']:.4g} | {c['ms_per_window_at_mhz']:.1f} |"
                f" {c['instructions_per_learnt_batch']:.4g} |"
            )
        else:
            line += (
                f" {r['host_ms_per_window']:.3f} | {r['numpy_ms_batch1']:.3f} |"
                f" {r['numpy_ms_batched']:.3f} (n={r['numpy_batch']}) |"
            )
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/bench-mcu")
    ap.add_argument("--targets", default="host,cortex-m4")
    ap.add_argument("--bits", default="2,4,8")
    ap.add_argument("--pairs", default=",".join(PAIRS))
    ap.add_argument(
        "--commit", default=None, help="the commit measured (default: git HEAD of this folder)"
    )
    args = ap.parse_args()
    commit = args.commit or _commit()
    out = Path(args.out)
    bits = [int(b) for b in args.bits.split(",")]
    rows: list[dict] = []
    for pair in args.pairs.split(","):
        overrides = PAIRS[pair] + [f"bits={args.bits}"]
        if pair.startswith("usc-had") and USCHAD.is_dir():
            overrides.append(f"data_path={USCHAD}")
        folder = out / pair
        if not all((folder / f"deployed-{b}bit.qcore").is_file() for b in bits):
            t0 = time.perf_counter()
            run(load_config(None, overrides), folder)
            print(f"{pair}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
        batches, parts = stream_of(overrides)
        for b in bits:
            art = load_artifact(folder / f"deployed-{b}bit.qcore")
            export = folder / f"c-{b}bit"
            export_c(art, export)
            for target in args.targets.split(","):
                t0 = time.perf_counter()
                res = check(export, batches, target, artifact=art)
                res.update(pair=pair, wall_s=time.perf_counter() - t0, passed=passed(res))
                res["phases"] = {p: _phase(res, s) for p, s in parts.items()}
                res.pop("per_batch")
                rows.append(res)
                print(json.dumps({k: res[k] for k in ("pair", "bits", "target", "wall_s")}))
                (out / "mcu.json").write_text(
                    json.dumps({"commit": commit, "rows": rows}, indent=1)
                )
    print(f"commit {commit}; {environment_note()}")
    for target in args.targets.split(","):
        print(f"\n{target}\n")
        print(table(rows, target))


if __name__ == "__main__":
    main()
