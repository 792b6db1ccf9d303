"""The device's own signals on finished runs: calibration error, wrong-from-right, drift.

For each run folder (written by ``qcore run``: ``results.json`` and, per bit-width,
``deployed-{b}bit.qcore``, the device that ships, and ``calibrated-{b}bit.qcore``, the
default device after the stream) the scenario is cut again from the run's settings and
the streaming head is asked, with every candidate confidence setting:

* ``ece``: expected calibration error (10 bins) on the source and the target test sets,
  before and after the stream, and their mean (what the rule in docs/results.md ranks);
* ``auroc``: before the stream, on the target test set, how well the confidence and the
  novelty tell the device's wrong predictions from its right ones;
* ``drift``: per ``drift_share``, the first batch (1-based) of the target stream on which
  the device that ships would calibrate under ``policy=drift``, and the share of fired
  batches on a stream of the source subject's test windows cut into batches of the target
  stream's size.

An artifact without a novelty threshold (written before the cloud fitted one) gets the
one the cloud fits now (:func:`qcore.edge.signals.fit_novelty_threshold`).

    .venv/bin/python benchmarks/signals.py runs/val-2-5 runs/val-3-9 ... [--out FILE.md]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from qcore.config import RunConfig  # noqa: E402
from qcore.data.registry import load_dataset  # noqa: E402
from qcore.data.scenario import Scenario, make_scenario  # noqa: E402
from qcore.edge.artifact import Artifact, load_artifact  # noqa: E402
from qcore.edge.device import Device  # noqa: E402
from qcore.edge.infer import forward_features  # noqa: E402
from qcore.edge.signals import fit_novelty_threshold, novel_share  # noqa: E402
from qcore.eval.metrics import auroc, ece  # noqa: E402

DOFS = (1.0, 3.0, 10.0, 30.0, 100.0)
TEMPERATURES = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0)
# the second rule: dof at its chosen value, a novelty-dependent temperature
POWERS = (0.0, 0.5, 1.0, 1.5, 2.0)
POWER_TEMPERATURES = (1.0, 2.0, 5.0, 10.0)
FIRST = [(d, t, 0.0) for d, t in itertools.product(DOFS, TEMPERATURES)]
SECOND = [(30.0, t, p) for p, t in itertools.product(POWERS, POWER_TEMPERATURES)]
SHARES = (0.1, 0.2, 0.3, 0.5, 0.7)


def with_threshold(art: Artifact, sc: Scenario, seed: int) -> Artifact:
    """``art`` as a streaming-head device, with the cloud's novelty threshold."""
    device = art.device.replace(head="slda", reset_window=0)
    if device.novelty_threshold is None:
        features = forward_features(art.model, sc.source_train.X)[1]
        n = len(sc.class_names)
        limit = fit_novelty_threshold(features, sc.source_train.y, n, device.head_shrinkage, seed)
        device = device.replace(novelty_threshold=limit)
    return replace(art, device=device)


def cell(run: Path, bits: int, sc: Scenario, seed: int) -> dict:
    """Every measure of one run folder at one bit-width."""
    before = with_threshold(load_artifact(run / f"deployed-{bits}bit.qcore"), sc, seed)
    after = with_threshold(load_artifact(run / f"calibrated-{bits}bit.qcore"), sc, seed)
    after = replace(after, device=before.device)
    tests = {"source": sc.source_test, "target": sc.target_test}
    eces = {}
    for dof, temp, power in dict.fromkeys(FIRST + SECOND):
        out = []
        for art, (_, split) in itertools.product((before, after), tests.items()):
            cfg = art.device.replace(
                confidence_dof=dof, confidence_temperature=temp, confidence_novelty_power=power
            )
            dev = Device(art, cfg)
            sig = dev.signals(split.X, normalized=True)
            out.append(ece(sig.confidence, sig.probs.argmax(1) == split.y))
        eces[(dof, temp, power)] = out
    dev = Device(before)
    sig = dev.signals(sc.target_test.X, normalized=True)
    right = sig.probs.argmax(1) == sc.target_test.y
    assert sig.novelty is not None
    target_shares = [novel_share(dev.signals(b.X, normalized=True).novelty) for b in sc.stream]
    size = len(sc.stream[0].y)
    Xs = sc.source_test.X
    cuts = range(0, len(Xs) - size + 1, size) if len(Xs) >= size else [0]
    source_shares = [
        novel_share(dev.signals(Xs[i : i + size], normalized=True).novelty) for i in cuts
    ]
    return {
        "eces": eces,
        "auroc_conf": _nan(auroc(sig.confidence, right)),
        "auroc_novelty": _nan(auroc(-sig.novelty, right)),
        "acc_before": float(right.mean()),
        "target_shares": target_shares,
        "source_shares": source_shares,
        "threshold": before.device.novelty_threshold,
    }


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def first_fire(shares: list, share: float) -> int | None:
    return next((i + 1 for i, s in enumerate(shares) if s >= share), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    cells = {}
    for run in args.runs:
        cfg = RunConfig.from_dict(json.loads((run / "results.json").read_text())["config"])
        ds = load_dataset(cfg.dataset, cfg.data_path, seed=cfg.seed)
        sc = make_scenario(ds, cfg.source, cfg.target, cfg.n_batches, cfg.test_fraction, cfg.seed)
        for bits in cfg.bits:
            name = f"{cfg.dataset} {cfg.source}->{cfg.target} s{cfg.seed} {bits}b"
            cells[name] = cell(run, bits, sc, cfg.seed)
            print(name, "done", flush=True)
    lines = [
        "| cell | target acc before | AUROC conf | AUROC novelty | novel shares target "
        "(first 3) | source batches | threshold |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, c in cells.items():
        t = ", ".join(f"{s:.2f}" for s in c["target_shares"][:3])
        s = ", ".join(f"{v:.2f}" for v in c["source_shares"])
        lines.append(
            f"| {name} | {c['acc_before']:.3f} | {c['auroc_conf']:.2f} | "
            f"{c['auroc_novelty']:.2f} | {t} | {s} | {c['threshold']:.0f} |"
        )
    for candidates, tie in ((FIRST, "larger dof"), (SECOND, "smaller power")):
        lines += [
            "",
            f"Ranked by mean ECE (a tie: {tie}, then smaller temperature)",
            "",
            "| dof | temperature | power | mean ECE | source before | target before | "
            "source after | target after |",
            "|---|---|---|---|---|---|---|---|",
        ]
        ranked = []
        for dof, temp, power in candidates:
            per = np.array([c["eces"][(dof, temp, power)] for c in cells.values()]).mean(axis=0)
            order = -dof if tie == "larger dof" else power
            ranked.append((round(float(per.mean()), 6), order, temp, (dof, temp, power), per))
        for mean, _, _, (dof, temp, power), per in sorted(ranked, key=lambda r: r[:3]):
            parts = " | ".join(f"{v:.3f}" for v in per)
            lines.append(f"| {dof:g} | {temp:g} | {power:g} | {mean:.3f} | {parts} |")
    lines += [
        "",
        "| drift_share | targets fired in batches 1-3 | first batch (median) | "
        "source batches fired |",
        "|---|---|---|---|",
    ]
    for share in SHARES:
        firsts = [first_fire(c["target_shares"], share) for c in cells.values()]
        early = sum(f is not None and f <= 3 for f in firsts)
        fired = [s >= share for c in cells.values() for s in c["source_shares"]]
        med = np.median([f for f in firsts if f is not None]) if any(firsts) else float("nan")
        lines.append(
            f"| {share:g} | {early}/{len(firsts)} | {med:g} | "
            f"{sum(fired)}/{len(fired)} ({np.mean(fired):.0%}) |"
        )
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
