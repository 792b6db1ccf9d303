"""QCore against no calibration and back-prop on core plus batch, over seeds.

For each dataset pair and seed: one ``qcore run`` with ``bits=2,4,8`` and
``method=none,backprop,qcore`` (all methods share the trained float model and the
deployed quantized models). Prints a Markdown table of final target and source test
accuracy (mean +- std over seeds), mean device time per stream step and device bytes.
Finished runs are reused (delete the folder to recompute).

    .venv/bin/python benchmarks/method.py --seeds 0 1 2 [--pairs hapt:1:4 usc-had:1:11]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from qcore.config import RunConfig
from qcore.eval.metrics import mean_std
from qcore.eval.runner import run
from qcore.eval.stream import FLIP_HELD_OUT

DEFAULT_PAIRS = ("hapt:1:4", "hapt:1:25", "usc-had:1:11")


def fmt(values: list[float], digits: int = 3) -> str:
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", nargs="+", default=list(DEFAULT_PAIRS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--bits", default="2,4,8")
    ap.add_argument("--out", default="runs/bench-method")
    ap.add_argument("--set", action="append", default=[], help="extra key=value settings")
    args = ap.parse_args()
    torch.set_num_threads(2)
    cells: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    flips: dict[tuple, list[dict]] = defaultdict(list)
    activity: dict[tuple, list[tuple[int, list[float]]]] = defaultdict(list)
    for pair in args.pairs:
        dataset, src, tgt = pair.split(":")
        for seed in args.seeds:
            folder = Path(args.out) / f"{dataset}-{src}-{tgt}-s{seed}"
            path = folder / "results.json"
            if path.exists() and "scenario" in json.loads(path.read_text()):
                res = json.loads(path.read_text())
            else:
                extra = dict(kv.split("=", 1) for kv in args.set)
                cfg = RunConfig.from_dict(
                    {
                        "dataset": dataset,
                        "source": src,
                        "target": tgt,
                        "bits": args.bits,
                        "seed": seed,
                        "method": "none,backprop,qcore",
                        **extra,
                    }
                )
                res = run(cfg, folder)
            for r in res["results"]:
                if "steps" not in r:
                    continue
                c = cells[(pair, r["bits"], r["method"])]
                c["target"].append(r["target_acc"])
                c["source"].append(r["source_acc"])
                c["target_before"].append(r["target_acc_before"])
                c["source_before"].append(r["source_acc_before"])
                c["step_s"].append(r["seconds"])
                c["bytes"].append(r["device_bytes"])
                if "flipnet" in r:
                    flips[(pair, r["bits"])].append(r["flipnet"])
                    activity[(pair, r["bits"])].append(
                        (
                            r["flipnet"]["n_weights"] // FLIP_HELD_OUT,
                            [s["flips"] for s in r["steps"]],
                        )
                    )
            print(f"done {pair} seed {seed}", flush=True)
    print(
        "\n| pair | bits | method | target before | target after | source before "
        "| source after | s / step | device bytes |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for (pair, bits, method), c in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        print(
            f"| {pair.replace(':', ' ', 1).replace(':', '->')} | {bits} | {method} "
            f"| {fmt(c['target_before'])} | {fmt(c['target'])} | {fmt(c['source_before'])} "
            f"| {fmt(c['source'])} | {fmt(c['step_s'], 3)} | {int(mean_std(c['bytes'])[0]):,} |"
        )
    print_flip_table(flips)
    print_activity_table(activity)


def print_flip_table(flips: dict[tuple, list[dict]]) -> None:
    """Held-out agreement of the flip network with its teacher, mean over seeds."""
    print(
        "\n| pair | bits | teacher moves | flip net: agreement / recall / precision "
        "| all-zero: agreement | random, same sparsity: agreement / recall / precision |"
    )
    print("|---|---|---|---|---|---|")

    def avg(reps: list[dict], who: str, key: str) -> str:
        return f"{np.mean([r[who][key] for r in reps]):.3f}"

    for (pair, bits), reps in sorted(flips.items()):
        moved = np.mean([r["teacher_flip_rate"] for r in reps])
        arp = ("agreement", "flip_recall", "flip_precision")
        print(
            f"| {pair.replace(':', ' ', 1).replace(':', '->')} | {bits} | {100 * moved:.1f}% "
            f"| {' / '.join(avg(reps, 'flipnet', k) for k in arp)} "
            f"| {avg(reps, 'all_zero', 'agreement')} "
            f"| {' / '.join(avg(reps, 'random', k) for k in arp)} |"
        )


def print_activity_table(activity: dict[tuple, list[tuple[int, list[float]]]]) -> None:
    """How the device's guarded flip passes behaved over the stream, all seeds pooled."""
    print(
        "\n| pair | bits | steps with accepted flips | code moves per such step, summed "
        "over its passes, as % of the model's codes: mean (range) |"
    )
    print("|---|---|---|---|")
    for (pair, bits), runs in sorted(activity.items()):
        moved = [100 * f / n for n, steps in runs for f in steps if f > 0]
        n_steps = sum(len(steps) for _, steps in runs)
        share = f"{np.mean(moved):.0f}% ({min(moved):.0f}-{max(moved):.0f}%)" if moved else "-"
        print(
            f"| {pair.replace(':', ' ', 1).replace(':', '->')} | {bits} "
            f"| {len(moved)} / {n_steps} | {share} |"
        )


if __name__ == "__main__":
    main()
