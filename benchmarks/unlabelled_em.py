"""EM rules for the windows a stream batch brings without a label, on the validation pairs.

The same replay as ``benchmarks/unlabelled.py`` (whose pairs, seeds, ``ignore`` and
``T3A`` rules and device check this script imports): each run's pooled features are
computed once by the deployed model and the stream is replayed with the head's own update
and solve (:mod:`qcore.edge.head`). Labelled windows always enter the statistics, as
under ``ignore``; the rules differ in what the unlabelled ones do:

* ``none``: the deployed head, never updated; ``ignore`` and ``T3A 20``: as in
  ``unlabelled.py``;
* ``EM w (softmax|calibrated)``: semi-supervised EM on the Gaussian class model. After a
  batch's labelled windows are merged, its unlabelled windows enter the statistics with
  soft class posteriors weighted by ``w`` (:func:`merge_soft`), :data:`EM_ROUNDS` rounds
  of E (posteriors of the head solved from the statistics so far) and M (the batch's soft
  statistics merged into those before it), so the deployed statistics anchor the means;
* ``label shift (softmax|calibrated)``: Saerens, Latinne & Decaestecker (2002): EM on the
  unlabelled windows' posteriors re-estimates the target class priors (source priors from
  the statistics' counts); the running target priors (labelled windows' classes plus the
  unlabelled windows' EM posteriors) add ``log(prior_target / prior_source)`` to the bias;
* ``LAME (softmax|calibrated)``: Boudiaf et al. (CVPR 2022) on top of ``ignore``: a batch's
  outputs are the fixed point of ``z_i ∝ p_i exp(Σ_j a_ij z_j)``, ``a`` the symmetrised
  k-nearest-neighbour affinity of its L2-normalised features; the statistics are not
  changed, so the test sets are predicted in shuffled chunks of the stream's batch size.

Posteriors: ``softmax`` of the head's scores, or ``calibrated``: the device's confidence
(:func:`qcore.edge.signals.head_signals` with the artifact's settings). Label fractions
0.1, 0.05 and 0; the rule for adoption is in docs/results.md ("Windows without a label:
EM rules fixed before the runs"). Deployed models are trained once per run folder
(``--out``, with a training cache) and reused.

    .venv/bin/python benchmarks/unlabelled_em.py [--out runs/em]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
from collections.abc import Callable  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from unlabelled import (  # noqa: E402  (benchmarks/unlabelled.py: the replay this one extends)
    BITS,
    PAIRS,
    SEEDS,
    SHRINKAGE,
    SUPPORT,
    Batch,
    device_accuracy,
    ignore,
    probs,
    t3a,
)

from qcore.config import DeviceConfig, RunConfig  # noqa: E402
from qcore.data.registry import load_dataset  # noqa: E402
from qcore.data.scenario import label_mask, make_scenario  # noqa: E402
from qcore.edge.artifact import load_artifact  # noqa: E402
from qcore.edge.head import HeadStats, batch_stats, logits, precision, solve, update  # noqa: E402
from qcore.edge.infer import forward_features  # noqa: E402
from qcore.edge.signals import head_signals  # noqa: E402
from qcore.eval.runner import run  # noqa: E402

FRACTIONS = (0.1, 0.05, 0.0)
WEIGHTS = (0.1, 0.3, 1.0)
EM_ROUNDS, PRIOR_ITERS, PRIOR_TOL = 3, 100, 1e-6
LAME_K, LAME_ITERS, LAME_TOL = 5, 100, 1e-6
LAME_SHUFFLE = 0x1A4E  # the test sets' chunk order

Head = tuple[np.ndarray, np.ndarray]  # weight, bias
Posterior = Callable[[HeadStats, np.ndarray], np.ndarray]  # statistics, features -> (n, K)


def softmax_post(stats: HeadStats, f: np.ndarray) -> np.ndarray:
    return probs(solve(stats, SHRINKAGE), f)


def calibrated_post(cfg: DeviceConfig, stats: HeadStats, f: np.ndarray) -> np.ndarray:
    """The device's calibrated probabilities under the head solved from ``stats``."""
    head = solve(stats, SHRINKAGE)
    return head_signals(
        logits(*head, f), f, precision(stats, SHRINKAGE).astype(np.float32),
        cfg.confidence_dof, cfg.confidence_temperature, cfg.novelty_threshold,
        cfg.confidence_novelty_power,
    ).probs  # fmt: skip


def merge_soft(stats: HeadStats, f: np.ndarray, r: np.ndarray) -> HeadStats:
    """``stats`` with windows ``f`` ``(n, D)`` merged in, window i counting ``r[i, c] >= 0``
    towards class c: the weighted counts, means and within-class scatter of the batch,
    merged by Chan's pairwise update (with one-hot ``r``, :func:`qcore.edge.head.update`)."""
    if len(f) == 0:
        return stats
    x, r = np.asarray(f, dtype=np.float64), np.asarray(r, dtype=np.float64)
    n_b = r.sum(0)  # (K,)
    safe_b = np.where(n_b > 0, n_b, 1.0)
    mean_b = (r.T @ x) / safe_b[:, None]
    scatter_b = np.zeros((x.shape[1], x.shape[1]))
    for c in np.flatnonzero(n_b > 0):
        centred = x - mean_b[c]
        scatter_b += (centred * r[:, c : c + 1]).T @ centred
    n_a, mean_a = stats.count.astype(np.float64), stats.mean.astype(np.float64)
    total = n_a + n_b
    safe = np.where(total > 0, total, 1.0)
    delta = mean_b - mean_a
    weight = n_a * n_b / safe
    scatter = stats.scatter.astype(np.float64) + scatter_b + (delta * weight[:, None]).T @ delta
    return HeadStats(total, mean_a + delta * (n_b / safe)[:, None], scatter)


def check_merge_soft() -> None:
    """:func:`merge_soft` against a batch computation: in chunks equals all at once, and
    one-hot weights equal the head's own update."""
    rng = np.random.default_rng(0)
    x, k = rng.normal(size=(60, 5)), 3
    r = rng.dirichlet(np.ones(k), size=60) * rng.uniform(0.1, 1.0, size=(60, 1))
    empty = HeadStats(np.zeros(k), np.zeros((k, 5)), np.zeros((5, 5)))
    whole = merge_soft(empty, x, r)
    parts = merge_soft(
        merge_soft(merge_soft(empty, x[:7], r[:7]), x[7:30], r[7:30]), x[30:], r[30:]
    )
    ref_mean = (r.T @ x) / r.sum(0)[:, None]
    ref_scatter = sum(((x - ref_mean[c]) * r[:, [c]]).T @ (x - ref_mean[c]) for c in range(k))
    y = rng.integers(0, k, size=60)
    base = batch_stats(x[:20], y[:20], k)
    hard, soft = update(base, x[20:], y[20:]), merge_soft(base, x[20:], np.eye(k)[y[20:]])
    for a, b in (
        (whole.mean, ref_mean), (whole.scatter, ref_scatter), (parts.count, whole.count),
        (parts.mean, whole.mean), (parts.scatter, whole.scatter), (soft.count, hard.count),
        (soft.mean, hard.mean), (soft.scatter, hard.scatter),
    ):  # fmt: skip
        if not np.allclose(a, b, rtol=1e-5, atol=1e-4):
            raise SystemExit("merge_soft disagrees with the batch computation")


def none(dep: HeadStats, batches: list[Batch]) -> Head:
    return solve(dep, SHRINKAGE)


def em(post: Posterior, w: float, dep: HeadStats, batches: list[Batch]) -> Head:
    stats = dep
    for f, y, m in batches:
        base = update(stats, f[m], y[m])
        stats = base
        for _ in range(EM_ROUNDS):
            stats = merge_soft(base, f[~m], w * post(stats, f[~m]))
    return solve(stats, SHRINKAGE)


def saerens(p: np.ndarray, prior_s: np.ndarray) -> np.ndarray:
    """The EM posteriors ``q`` ``(n, K)`` of Saerens et al. under the target priors they
    converge to (``p``: posteriors under ``prior_s``)."""
    prior, q = prior_s, p
    for _ in range(PRIOR_ITERS):
        q = p * (prior / prior_s)
        q /= q.sum(1, keepdims=True)
        new = q.mean(0)
        if np.abs(new - prior).max() < PRIOR_TOL:
            break
        prior = new
    return q


def label_shift(post: Posterior, dep: HeadStats, batches: list[Batch]) -> Head:
    stats, seen = dep, np.zeros(dep.n_classes)
    for f, y, m in batches:
        if (~m).any():
            share = stats.count.astype(np.float64) / stats.count.sum()
            seen += saerens(post(stats, f[~m]), share).sum(0)
        seen += np.bincount(y[m], minlength=dep.n_classes)
        stats = update(stats, f[m], y[m])
    weight, bias = solve(stats, SHRINKAGE)
    if seen.sum() == 0:
        return weight, bias
    prior_s = stats.count.astype(np.float64) / stats.count.sum()
    prior_t = np.maximum(seen / seen.sum(), 1e-6)
    return weight, (bias + np.log(prior_t / prior_s)).astype(np.float32)


def lame(p: np.ndarray, f: np.ndarray) -> np.ndarray:
    """LAME's outputs ``(n, K)`` of one batch: posteriors ``p``, features ``f``."""
    n = len(f)
    k = min(LAME_K, n - 1)
    if k < 1:
        return p
    x = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    a = np.zeros((n, n))
    a[np.arange(n)[:, None], np.argsort(d, axis=1)[:, :k]] = 1.0
    a = (a + a.T) / 2
    log_p, z = np.log(p + 1e-10), p
    for _ in range(LAME_ITERS):
        s = log_p + a @ z
        new = np.exp(s - s.max(1, keepdims=True))
        new /= new.sum(1, keepdims=True)
        if np.abs(new - z).max() < LAME_TOL:
            return new
        z = new
    return z


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/em"))
    ap.add_argument("--no-device-check", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    check_merge_soft()
    rows: list[dict] = []
    for seed in SEEDS:
        for dataset, source, target in PAIRS:
            rows += one_run(args.out, dataset, source, target, seed, not args.no_device_check)
            (args.out / "em.json").write_text(json.dumps(rows, indent=1))
    print_table(rows)


def one_run(
    root: Path, dataset: str, source: int, target: int, seed: int, check: bool
) -> list[dict]:
    out = root / f"{dataset}-{source}-{target}-s{seed}"
    art_path = out / f"deployed-{BITS}bit.qcore"
    if not art_path.exists():
        cfg = RunConfig(
            dataset=dataset, source=source, target=target, bits=(BITS,), seed=seed, threads=1,
            method="slda",
        )  # fmt: skip
        run(cfg, out, cache=root / ".cache")
    art = load_artifact(art_path)
    assert art.head is not None and art.head.n_learnt == 0
    dep = art.head
    sc = make_scenario(load_dataset(dataset, seed=seed), source, target, seed=seed)
    feats = [forward_features(art.model, b.X)[1] for b in sc.stream]
    size = len(sc.stream[0])
    tests = {}
    for name, s in (("target", sc.target_test), ("source", sc.source_test)):
        order = np.random.default_rng([seed, LAME_SHUFFLE]).permutation(len(s.y))
        tests[name] = (forward_features(art.model, s.X)[1][order], s.y[order])
    cal = partial(calibrated_post, art.device)
    posts: dict[str, Posterior] = {"softmax": softmax_post, "calibrated": cal}
    rules: dict[str, Callable[[HeadStats, list[Batch]], Head]] = {
        "none": none, "ignore": ignore, f"T3A {SUPPORT}": t3a,
    }  # fmt: skip
    for pname, post in posts.items():
        for w in WEIGHTS:
            rules[f"EM {w} ({pname})"] = partial(em, post, w)
    for pname, post in posts.items():
        rules[f"label shift ({pname})"] = partial(label_shift, post)
    rows = []
    for fraction in FRACTIONS:
        masks = [label_mask(len(b), fraction, seed, i + 1) for i, b in enumerate(sc.stream)]
        batches = [(f, b.y, m) for f, b, m in zip(feats, sc.stream, masks, strict=True)]
        heads = {name: rule(dep, batches) for name, rule in rules.items()}
        accs = {
            name: {t: float(np.mean(logits(*h, f).argmax(1) == y)) for t, (f, y) in tests.items()}
            for name, h in heads.items()
        }
        stats = dep  # ignore's statistics, for LAME's calibrated posteriors
        for f, y, m in batches:
            stats = update(stats, f[m], y[m])
        for pname, post in posts.items():
            acc = {}
            for t, (f, y) in tests.items():
                right = [
                    lame(post(stats, f[i : i + size]), f[i : i + size]).argmax(1) == y[i : i + size]
                    for i in range(0, len(y), size)
                ]
                acc[t] = float(np.mean(np.concatenate(right)))
            accs[f"LAME ({pname})"] = acc
        if check and fraction == FRACTIONS[0]:
            dev = device_accuracy(art_path, sc, fraction, seed)
            if abs(dev - accs["ignore"]["target"]) > 1e-9:
                print(f"warning: {out}: the device's target {dev:.4f} differs from the replay")
        for name, acc in accs.items():
            rows.append(
                {"pair": f"{dataset} {source}->{target}", "seed": seed, "fraction": fraction,
                 "rule": name, "target_acc": acc["target"], "source_acc": acc["source"]}
            )  # fmt: skip
        print(
            f"{dataset} {source}->{target} seed {seed} fraction {fraction}: none "
            f"{accs['none']['target']:.3f}, ignore {accs['ignore']['target']:.3f}, best "
            + max(((a["target"], n) for n, a in accs.items()), key=lambda t: t[0])[1],
            flush=True,
        )
    return rows


def print_table(rows: list[dict]) -> None:
    """Per rule and fraction: mean target, mean source, mean score and the worst run's
    target against ``none``'s; then the rule's verdict."""
    rules = list(dict.fromkeys(r["rule"] for r in rows))
    key = {(r["rule"], r["fraction"], r["pair"], r["seed"]): r for r in rows}
    runs = sorted({(r["pair"], r["seed"]) for r in rows})
    print(f"\n{len(runs)} runs")
    print("| rule | fraction | target | source | score | worst target - none |")
    print("|---|---|---|---|---|---|")
    summary: dict[tuple[str, float], tuple[float, float, float, float]] = {}
    for rule in rules:
        for fr in FRACTIONS:
            got = [key.get((rule, fr, *run)) for run in runs]
            if any(g is None for g in got):
                continue
            tgt = np.array([g["target_acc"] for g in got])
            src = np.array([g["source_acc"] for g in got])
            base = np.array([key[("none", fr, *run)]["target_acc"] for run in runs])
            summary[rule, fr] = (tgt.mean(), src.mean(), (tgt.mean() + src.mean()) / 2,
                                 (tgt - base).min())  # fmt: skip
            t, s, sc, worst = summary[rule, fr]
            print(f"| {rule} | {fr} | {t:.4f} | {s:.4f} | {sc:.4f} | {worst:+.4f} |")
    print()
    for rule in rules:
        if rule in ("none", "ignore") or (rule, FRACTIONS[-1]) not in summary:
            continue
        wins = all(summary[rule, fr][2] >= summary["ignore", fr][2] + 0.01 for fr in (0.1, 0.05))
        never_below = all(summary[rule, fr][3] >= 0 for fr in FRACTIONS)
        source_ok = all(
            abs(summary[rule, fr][1] - summary["ignore", fr][1]) <= 0.02 for fr in FRACTIONS
        )
        verdict = "ADOPT" if wins and never_below and source_ok else "no"
        print(
            f"{rule}: beats ignore by 0.01 {wins}, never below none {never_below}, "
            f"source within 0.02 {source_ok} -> {verdict}"
        )


if __name__ == "__main__":
    main()
