"""Foundation table: float, post-training quantization and back-prop calibration.

For each dataset pair: float accuracy on the source and target test sets, and at 2, 4
and 8 bits the accuracy before (PTQ) and after back-prop calibration on the source
training data, with packed model bytes against float bytes. Runs ``qcore.eval.runner``
with ``method=none`` (no stream calibration) and prints a Markdown table.

    .venv/bin/python benchmarks/foundation.py [--out runs/bench-foundation] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from qcore.config import RunConfig
from qcore.eval.runner import run

PAIRS = (("hapt", 1, 4), ("usc-had", 1, 11))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="runs/bench-foundation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=RunConfig.epochs)
    args = ap.parse_args()
    torch.set_num_threads(2)
    lines = [
        "| data (source->target) | bits | source PTQ | source calibrated | target PTQ "
        "| target calibrated | model bytes | x smaller than float |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dataset, src, tgt in PAIRS:
        cfg = RunConfig(
            dataset=dataset,
            source=src,
            target=tgt,
            bits=(2, 4, 8),
            method="none",
            seed=args.seed,
            epochs=args.epochs,
        )
        res = run(cfg, Path(args.out) / f"{dataset}-{src}-{tgt}-s{args.seed}")
        rows = res["results"]
        fl = rows[0]
        lines.append(
            f"| {dataset} {src}->{tgt} | float | {fl['source_acc']:.3f} | - "
            f"| {fl['target_acc']:.3f} | - | {fl['device_bytes']:,} | 1.0 |"
        )
        for bits in cfg.bits:
            ptq = next(r for r in rows if r["method"] == "ptq" and r["bits"] == bits)
            cal = next(r for r in rows if r["method"] == "backprop-source" and r["bits"] == bits)
            lines.append(
                f"| {dataset} {src}->{tgt} | {bits} | {ptq['source_acc']:.3f} "
                f"| {cal['source_acc']:.3f} | {ptq['target_acc']:.3f} | {cal['target_acc']:.3f} "
                f"| {cal['device_bytes']:,} | {fl['device_bytes'] / cal['device_bytes']:.1f} |"
            )
        print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
