"""Rules for the windows a stream batch brings without a label, on the validation pairs.

The default device (``slda``) keeps its backbone frozen, so every window's pooled features
are fixed by the deployed model, and a rule for unlabelled windows is only a rule for what
enters the streaming head's statistics. This script computes the features once per run
and replays the stream under each rule with the head's own update and solve
(``qcore.edge.head``):

* ``ignore``: only labelled windows are added (the device's default; checked against a
  real :class:`~qcore.edge.device.Device` with the user guard off on every run: the replay
  models the head, not the guard);
* ``pseudo 0.99``: unlabelled windows whose confidence reaches 0.99 are added as the class
  the device predicts (``pseudo_threshold=0.99``);
* ``T3A 20``: a support set as in T3A (Iwasawa & Matsuo, 2021): per predicted class the
  20 unlabelled windows of lowest entropy seen so far; the head is solved from the
  statistics plus the support set;
* ``common shift``: each class mean is moved by the mean shift of the labelled target
  windows from their classes' source means, in proportion to the source's share of that
  class's statistics (a class without target labels follows the others' drift);
* ``marginal shift``: the same with the shift of the mean of every window seen (labelled
  or not) from the source's mean.

Validation pairs HAPT 2 -> 5, 3 -> 9, 6 -> 12 and USC-HAD 2 -> 10, seeds 0-2, 4 bits,
default settings; label fractions 1, 0.25, 0.1, 0.05 and 0. Score: the mean over runs and
fractions of (final target accuracy + final source accuracy) / 2, as in the rules for the
default settings (docs/results.md).

    .venv/bin/python benchmarks/unlabelled.py [--out runs/unlabelled]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from qcore.config import RunConfig  # noqa: E402
from qcore.data.registry import load_dataset  # noqa: E402
from qcore.data.scenario import label_mask, make_scenario  # noqa: E402
from qcore.edge.artifact import load_artifact  # noqa: E402
from qcore.edge.device import Device  # noqa: E402
from qcore.edge.head import HeadStats, logits, solve, update  # noqa: E402
from qcore.edge.infer import forward_features  # noqa: E402
from qcore.eval.runner import run  # noqa: E402

PAIRS = (("hapt", 2, 5), ("hapt", 3, 9), ("hapt", 6, 12), ("usc-had", 2, 10))
SEEDS, BITS, FRACTIONS = (0, 1, 2), 4, (1.0, 0.25, 0.1, 0.05, 0.0)
SHRINKAGE, PSEUDO, SUPPORT = 1e-3, 0.99, 20

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # features, labels, labelled mask
Head = Callable[[HeadStats], tuple[np.ndarray, np.ndarray]]


def probs(head: tuple[np.ndarray, np.ndarray], f: np.ndarray) -> np.ndarray:
    z = logits(*head, f).astype(np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def ignore(dep: HeadStats, batches: list[Batch]) -> tuple[np.ndarray, np.ndarray]:
    stats = dep
    for f, y, m in batches:
        stats = update(stats, f[m], y[m])
    return solve(stats, SHRINKAGE)


def pseudo(dep: HeadStats, batches: list[Batch]) -> tuple[np.ndarray, np.ndarray]:
    stats = dep
    for f, y, m in batches:
        p = probs(solve(stats, SHRINKAGE), f)
        chosen = m | (p.max(1) >= PSEUDO)
        stats = update(stats, f[chosen], np.where(m, y, p.argmax(1))[chosen])
    return solve(stats, SHRINKAGE)


def t3a(dep: HeadStats, batches: list[Batch]) -> tuple[np.ndarray, np.ndarray]:
    stats, k = dep, dep.n_classes
    support: list[list[tuple[float, np.ndarray]]] = [[] for _ in range(k)]

    def with_support() -> HeadStats:
        f = [x for c in range(k) for _, x in support[c]]
        y = np.array([c for c in range(k) for _ in support[c]], dtype=np.int64)
        return update(stats, np.array(f), y) if f else stats

    for f, y, m in batches:
        p = probs(solve(with_support(), SHRINKAGE), f)
        entropy = -(p * np.log(p + 1e-12)).sum(1)
        for x, c, e in zip(f[~m], p.argmax(1)[~m], entropy[~m], strict=True):
            support[c] = sorted([*support[c], (float(e), x)], key=lambda t: t[0])[:SUPPORT]
        stats = update(stats, f[m], y[m])
    return solve(with_support(), SHRINKAGE)


def shifted(stats: HeadStats, dep: HeadStats, shift: np.ndarray) -> HeadStats:
    """``stats`` with each class mean moved by ``shift`` times the source's share of it."""
    total = stats.count.astype(np.float64)
    share = np.divide(dep.count, total, out=np.zeros_like(total), where=total > 0)
    return HeadStats(stats.count, stats.mean + share[:, None] * shift, stats.scatter)


def common_shift(dep: HeadStats, batches: list[Batch]) -> tuple[np.ndarray, np.ndarray]:
    stats, drift, n = dep, np.zeros(dep.n_features), 0
    for f, y, m in batches:
        stats = update(stats, f[m], y[m])
        drift += (f[m] - dep.mean[y[m]]).sum(0)
        n += int(m.sum())
    return solve(shifted(stats, dep, drift / max(n, 1)), SHRINKAGE)


def marginal_shift(dep: HeadStats, batches: list[Batch]) -> tuple[np.ndarray, np.ndarray]:
    stats = dep
    for f, y, m in batches:
        stats = update(stats, f[m], y[m])
    source_mean = dep.count @ dep.mean / dep.count.sum()
    seen = np.concatenate([f for f, _, _ in batches]).mean(0)
    return solve(shifted(stats, dep, seen - source_mean), SHRINKAGE)


RULES = {
    "ignore": ignore,
    f"pseudo {PSEUDO}": pseudo,
    f"T3A {SUPPORT}": t3a,
    "common shift": common_shift,
    "marginal shift": marginal_shift,
}


def device_accuracy(art_path: Path, sc, fraction: float, seed: int) -> float:
    """Final target accuracy of a real device (user guard off) fed the stream with -1 for
    missing labels."""
    art = load_artifact(art_path)
    dev = Device(art, art.device.replace(reset_window=0))
    for i, b in enumerate(sc.stream):
        dev.step(b.X, np.where(label_mask(len(b), fraction, seed, i + 1), b.y, -1), normalized=True)
    return float(np.mean(dev.predict(sc.target_test.X, normalized=True) == sc.target_test.y))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/unlabelled"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    scores: dict[str, dict[float, list[float]]] = {r: {f: [] for f in FRACTIONS} for r in RULES}
    for dataset, source, target in PAIRS:
        for seed in SEEDS:
            out = args.out / f"{dataset}-{source}-{target}-s{seed}"
            cfg = RunConfig(
                dataset=dataset, source=source, target=target, bits=(BITS,), seed=seed,
                threads=1, method="slda",
            )  # fmt: skip
            run(cfg, out, cache=args.out / ".cache")
            art_path = out / f"deployed-{BITS}bit.qcore"
            art = load_artifact(art_path)
            assert art.head is not None
            sc = make_scenario(load_dataset(dataset, seed=seed), source, target, seed=seed)
            feats = [forward_features(art.model, b.X)[1] for b in sc.stream]
            tests = [
                (forward_features(art.model, s.X)[1], s.y) for s in (sc.target_test, sc.source_test)
            ]
            row = []
            for fraction in FRACTIONS:
                masks = [label_mask(len(b), fraction, seed, i + 1) for i, b in enumerate(sc.stream)]
                batches = [(f, b.y, m) for f, b, m in zip(feats, sc.stream, masks, strict=True)]
                for name, rule in RULES.items():
                    head = rule(art.head, batches)
                    tgt, src = (float(np.mean(logits(*head, f).argmax(1) == y)) for f, y in tests)
                    scores[name][fraction].append((tgt + src) / 2)
                    if name == "ignore":
                        if abs(device_accuracy(art_path, sc, fraction, seed) - tgt) > 1e-9:
                            raise SystemExit(f"{out}: the replay differs from the device")
                        row.append(f"{fraction}: {tgt:.3f}")
            print(f"{dataset} {source}->{target} seed {seed}, ignore target: {', '.join(row)}")
    print(
        f"\n| rule | score ({len(PAIRS) * len(SEEDS)} runs) | "
        + " | ".join(f"fraction {f}" for f in FRACTIONS)
        + " |"
        + "\n|---|---|"
        + "---|" * len(FRACTIONS)
    )
    for name, per in scores.items():
        mean = np.mean([v for vals in per.values() for v in vals])
        cols = " | ".join(f"{np.mean(per[f]):.4f}" for f in FRACTIONS)
        print(f"| {name} | {mean:.4f} | {cols} |")


if __name__ == "__main__":
    main()
