"""Telling a device's wrong predictions from its right ones: a third try, per-class radii.

The rule these signals are judged by, and its outcome, are in docs/wrong-right.md ("A third
rule"). The cloud measures per class ``c`` a radius ``rho_c``: the median squared distance
of the source's training windows of class ``c`` to ``mu_c`` under a head fitted without
them (the novelty threshold's five folds). On finished run folders (the deployed
``deployed-{b}bit.qcore`` as a streaming-head device with the cloud's novelty threshold),
before the stream, on the target test set, the AUROC of each signal telling the device's
right predictions from its wrong ones (higher = more likely right):

* ``conf``: the calibrated confidence shipped today; ``dmargin``: the distance margin
  shipped today (``Signals.margin``), the bar's reference;
* ``radius``: ``-d2[pred] / rho_pred``;
* ``dmargin_radius``: ``dmargin / sqrt(rho_pred)``;
* ``conf_p0``: the calibrated confidence with ``confidence_novelty_power`` 0;
* ``rank_mean``: per chunk of the stream's batch size, the mean of the within-chunk
  ranks of ``dmargin`` and ``radius``, over the chunk's size;
* ``logistic``: a penalised logistic regression on ``dmargin``, ``log(d2[pred] / rho_pred)``
  and ``conf_p0``; leave-one-pair-out over the runs given, or, with ``--fit-on RUN...``,
  fitted on those runs' cells and scoring the runs given.

A cell where the device is right on every window has no AUROC (None); the last lines are
the means over the cells that have one, per pair and over all. ``--why`` prints instead,
per cell, the radii (in class order) and the median ``d2[pred] / rho_pred`` of the wrong
and of the right windows.

    .venv/bin/python benchmarks/wrong_right_3.py [--why] RUN_DIR... [--fit-on RUN_DIR...]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy.stats import rankdata  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from wrong_right_2 import _mean, with_threshold  # noqa: E402

from qcore.config import RunConfig  # noqa: E402
from qcore.data.registry import load_dataset  # noqa: E402
from qcore.data.scenario import make_scenario  # noqa: E402
from qcore.edge.artifact import load_artifact  # noqa: E402
from qcore.edge.device import Device  # noqa: E402
from qcore.edge.infer import forward_features  # noqa: E402
from qcore.edge.signals import held_out_sq_distances, sq_distances  # noqa: E402
from qcore.eval.metrics import auroc  # noqa: E402

SIGNALS = ("conf", "dmargin", "radius", "dmargin_radius", "conf_p0", "rank_mean")
PENALTY, NEWTON_STEPS, NEWTON_TOL = 1.0, 100, 1e-8


def fit_radii(
    features: np.ndarray, y: np.ndarray, n_classes: int, shrinkage: float, seed: int
) -> np.ndarray:
    """Per class, the median held-out squared distance of its windows to its own mean
    (the folds of ``fit_novelty_threshold``); the median over all for a class without."""
    d2 = held_out_sq_distances(features, y, n_classes, shrinkage, seed)
    own = d2[np.arange(len(y)), y]
    return np.array([np.median(own[y == c]) if (y == c).any() else np.median(own)
                     for c in range(n_classes)])  # fmt: skip


def windows(art_path: Path, sc, seed: int, batch: int) -> dict:
    """Per target test window: ``right`` and every candidate's value (see the docstring)."""
    art = with_threshold(load_artifact(art_path), sc, seed)
    dev = Device(art)
    assert dev.head is not None
    X, y = sc.target_test.X, sc.target_test.y
    sig = dev.signals(X, normalized=True)
    flat = Device(art, art.device.replace(confidence_novelty_power=0.0))
    assert sig.margin is not None
    pred = sig.probs.argmax(1)
    lam = np.asarray(dev.head.precision, dtype=np.float64)
    assert sig.features is not None  # the pooled features the device scored
    feats = sig.features.astype(np.float64)
    scores = feats @ dev.head.weight.T.astype(np.float64) + dev.head.bias.astype(np.float64)
    d2 = sq_distances(scores, feats, (lam + lam.T) / 2.0)
    source = forward_features(art.model, sc.source_train.X)[1]
    n_classes = len(sc.class_names)
    rho = fit_radii(source, sc.source_train.y, n_classes, art.device.head_shrinkage, seed)
    ratio = d2[np.arange(len(y)), pred] / rho[pred]
    rank_mean = np.empty(len(y))
    for start in range(0, len(y), batch):
        part = slice(start, start + batch)
        ranks = rankdata(sig.margin[part]) + rankdata(-ratio[part])
        rank_mean[part] = ranks / 2.0 / len(ranks)
    return {
        "rho": rho,
        "ratio_wrong_right": (
            np.median(ratio[pred != y]) if (pred != y).any() else None,
            np.median(ratio[pred == y]),
        ),
        "right": pred == y,
        "conf": sig.confidence,
        "dmargin": sig.margin,
        "radius": -ratio,
        "dmargin_radius": sig.margin / np.sqrt(rho[pred]),
        "conf_p0": flat.signals(X, normalized=True).confidence,
        "rank_mean": rank_mean,
        "log_ratio": np.log(np.maximum(ratio, 1e-6)),
    }


def _inputs(w: dict) -> np.ndarray:
    return np.column_stack([w["dmargin"], w["log_ratio"], w["conf_p0"]])


def fit_logistic(cells: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standardisation (mean, std) and weights (intercept first) of the penalised
    logistic regression of ``right`` on the pooled windows of ``cells``."""
    x = np.concatenate([_inputs(w) for w in cells])
    t = np.concatenate([w["right"] for w in cells]).astype(np.float64)
    mu, sd = x.mean(0), x.std(0)
    a = np.column_stack([np.ones(len(x)), (x - mu) / sd])
    pen = np.diag([0.0] + [PENALTY] * x.shape[1])
    beta = np.zeros(a.shape[1])
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-(a @ beta)))
        grad = a.T @ (p - t) + pen @ beta
        hess = (a * (p * (1 - p))[:, None]).T @ a + pen
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < NEWTON_TOL:
            break
    return mu, sd, beta


def score_logistic(fit: tuple[np.ndarray, np.ndarray, np.ndarray], w: dict) -> np.ndarray:
    mu, sd, beta = fit
    return beta[0] + ((_inputs(w) - mu) / sd) @ beta[1:]


def load(runs: list[Path]) -> list[tuple[str, str, dict]]:
    """(pair, cell name, windows) of every run folder and bit-width."""
    out = []
    for run in runs:
        cfg = RunConfig.from_dict(json.loads((run / "results.json").read_text())["config"])
        ds = load_dataset(cfg.dataset, cfg.data_path, seed=cfg.seed)
        sc = make_scenario(ds, cfg.source, cfg.target, cfg.n_batches, cfg.test_fraction, cfg.seed)
        batch = len(sc.stream[0].y)
        pair = f"{cfg.dataset} {cfg.source}->{cfg.target}"
        for bits in cfg.bits:
            w = windows(run / f"deployed-{bits}bit.qcore", sc, cfg.seed, batch)
            out.append((pair, f"{run.name} {bits}b batch {batch}", w))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--fit-on", nargs="+", type=Path, help="the logistic's training runs")
    ap.add_argument("--why", action="store_true", help="radii and median d2/rho instead")
    args = ap.parse_args()
    cells = load(args.runs)
    if args.why:
        for _, name, w in cells:
            wrong, right = (
                None if v is None else round(float(v), 2) for v in w["ratio_wrong_right"]
            )
            print(name, "rho", np.round(w["rho"], 1).tolist(), "median d2/rho wrong", wrong,
                  "right", right)  # fmt: skip
        return
    fixed = fit_logistic([w for _, _, w in load(args.fit_on)]) if args.fit_on else None
    rows: dict[str, list[dict]] = {}
    for pair, name, w in cells:
        fit = fixed or fit_logistic([v for p, _, v in cells if p != pair])
        row = {k: auroc(w[k], w["right"]) for k in SIGNALS}
        row["logistic"] = auroc(score_logistic(fit, w), w["right"])
        shown = {k: None if v is None else round(v, 3) for k, v in row.items()}
        print(name, f"acc {w['right'].mean():.3f}", shown, flush=True)
        rows.setdefault(pair, []).append(row)
    keys = [*SIGNALS, "logistic"]
    for pair, pair_rows in rows.items():
        print("mean", pair, _mean(pair_rows, keys))
    print("mean over all", _mean([r for v in rows.values() for r in v], keys))
    if not args.fit_on:
        fit = fit_logistic([w for _, _, w in cells])
        print("logistic on all cells: mean, std, weights", [np.round(v, 4).tolist() for v in fit])


if __name__ == "__main__":
    main()
