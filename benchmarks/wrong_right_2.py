"""Telling a device's wrong predictions from its right ones before any label: a second try.

The rule these signals were chosen by, and the decision it led to, are in
docs/wrong-right.md. On finished run folders (the deployed ``deployed-{b}bit.qcore`` of
each, as a streaming-head device with the cloud's novelty threshold), before the stream,
on the target test set, the AUROC of each signal telling the device's right predictions
from its wrong ones (higher = more likely right):

* ``conf``: the calibrated confidence the device reports today; ``novelty``: minus it;
* ``rmd``: minus the relative Mahalanobis distance (Ren et al. 2021): the smallest squared
  distance to a class mean minus that to one background Gaussian fitted on all the source
  training windows (covariance shrunk as the head's);
* ``dmargin``: the Mahalanobis distance to the second-nearest class mean minus that to
  the nearest;
* ``cluster``: per chunk of the stream's batch size, k-means (k = classes) on the
  whitened features, clusters matched one-to-one to classes by least total squared
  distance of centroids to class means; 1 where the window's cluster is matched to its
  predicted class, plus 1e-3 times the confidence;
* ``balanced``: per chunk, the calibrated probabilities Sinkhorn-scaled to rows of equal
  mass and columns in the source's class shares; the rescaled probability of the
  predicted class.

``device_margin`` is ``dmargin`` as the device reports it (``Signals.margin``, adopted by
the rule), from the device's own float32 scores: the same signal, computed once more.

A cell where the device is right on every window has no AUROC (None). The last lines are
the means over the cells that have one, per pair and over all.

``--why`` prints instead, per cell where the device errs, what its wrong windows look like:
the (true, predicted) class pairs of the errors, the wrong share per true class, the
median novelty and margin of wrong and right windows, and the confidence's AUROC without
its novelty temperature (``confidence_novelty_power`` 0) beside the shipped one.

    .venv/bin/python benchmarks/wrong_right_2.py [--why] RUN_DIR... > OUT.txt
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402
from scipy.special import logsumexp  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from signals import with_threshold  # noqa: E402

from qcore.config import RunConfig  # noqa: E402
from qcore.data.registry import load_dataset  # noqa: E402
from qcore.data.scenario import make_scenario  # noqa: E402
from qcore.edge.artifact import load_artifact  # noqa: E402
from qcore.edge.device import Device  # noqa: E402
from qcore.edge.infer import forward_features  # noqa: E402
from qcore.edge.signals import sq_distances  # noqa: E402
from qcore.eval.metrics import auroc  # noqa: E402

KMEANS_ITERS, SINKHORN_ITERS = 100, 200


def background(features: np.ndarray, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and precision of one Gaussian over all ``features`` (covariance shrunk)."""
    x = np.asarray(features, dtype=np.float64)
    mean = x.mean(0)
    sigma = (x - mean).T @ (x - mean) / len(x)
    cov = (1.0 - shrinkage) * sigma + shrinkage * np.eye(x.shape[1])
    return mean, np.linalg.inv(cov)


def kmeans(z: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Cluster centroids ``(k, D)`` of ``z``: k-means++ start, Lloyd until stable."""
    centres = [z[rng.integers(len(z))]]
    for _ in range(1, k):
        d2 = ((z[:, None, :] - np.array(centres)[None]) ** 2).sum(-1).min(1)
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(z), 1.0 / len(z))
        centres.append(z[rng.choice(len(z), p=p)])
    c = np.array(centres)
    assign = np.full(len(z), -1)
    for _ in range(KMEANS_ITERS):
        new = ((z[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
        if (new == assign).all():
            break
        assign = new
        for j in range(k):
            if (assign == j).any():
                c[j] = z[assign == j].mean(0)
    return c


def cluster_signal(
    z: np.ndarray, means_z: np.ndarray, pred: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """1 where a window's cluster is matched to its predicted class, else 0."""
    k = min(len(means_z), len(z))
    c = kmeans(z, k, rng)
    assign = ((z[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
    cost = ((c[:, None, :] - means_z[None]) ** 2).sum(-1)  # (k clusters, K classes)
    rows, cols = linear_sum_assignment(cost)
    matched = np.full(k, -1)
    matched[rows] = cols
    return (matched[assign] == pred).astype(np.float64)


def balanced(probs: np.ndarray, shares: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Sinkhorn scaling of ``probs`` to rows of mass 1/n and columns ``shares`` (in logs);
    the rescaled probability of the predicted class, per window."""
    n = len(probs)
    logp = np.log(np.maximum(probs, 1e-300))
    log_r, log_c = np.full(n, -np.log(n)), np.log(shares)
    log_u, log_v = np.zeros(n), np.zeros(probs.shape[1])
    for _ in range(SINKHORN_ITERS):
        log_u = log_r - logsumexp(logp + log_v[None], axis=1)
        log_v = log_c - logsumexp(logp + log_u[:, None], axis=0)
    q = logp + log_u[:, None] + log_v[None]
    q = np.exp(q - logsumexp(q, axis=1, keepdims=True))
    return q[np.arange(n), pred]


def cell(art_path: Path, sc, seed: int, batch: int) -> dict:
    art = with_threshold(load_artifact(art_path), sc, seed)
    dev = Device(art)
    assert dev.head is not None and art.head is not None
    X, y = sc.target_test.X, sc.target_test.y
    sig = dev.signals(X, normalized=True)
    assert sig.novelty is not None and sig.margin is not None
    pred = sig.probs.argmax(1)
    right = pred == y
    lam = np.asarray(dev.head.precision, dtype=np.float64)
    lam = (lam + lam.T) / 2.0
    feats = forward_features(art.model, X)[1].astype(np.float64)
    scores = feats @ dev.head.weight.T.astype(np.float64) + dev.head.bias.astype(np.float64)
    d2 = np.sort(sq_distances(scores, feats, lam), axis=1)
    bg_mean, bg_prec = background(
        forward_features(art.model, sc.source_train.X)[1], art.device.head_shrinkage
    )
    centred = feats - bg_mean
    d2_bg = np.einsum("nd,de,ne->n", centred, bg_prec, centred)
    chol = np.linalg.cholesky(lam)  # lam = L L^T, so |x L - m L| is the head's distance
    z, means_z = feats @ chol, art.head.mean.astype(np.float64) @ chol
    shares = art.head.count.astype(np.float64) / art.head.count.sum()
    clus, bal = np.empty(len(y)), np.empty(len(y))
    for i, start in enumerate(range(0, len(y), batch)):
        part = slice(start, start + batch)
        rng = np.random.default_rng([seed, i])
        clus[part] = cluster_signal(z[part], means_z, pred[part], rng)
        bal[part] = balanced(sig.probs[part], shares, pred[part])
    return {
        "acc": float(right.mean()),
        "conf": auroc(sig.confidence, right),
        "novelty": auroc(-sig.novelty, right),
        "rmd": auroc(-(d2[:, 0] - d2_bg), right),
        "dmargin": auroc(np.sqrt(d2[:, 1]) - np.sqrt(d2[:, 0]), right),
        "device_margin": auroc(sig.margin, right),
        "cluster": auroc(clus + 1e-3 * sig.confidence, right),
        "balanced": auroc(bal, right),
    }


def why(art_path: Path, sc, seed: int) -> dict | None:
    """What the device's wrong windows look like in one cell (None: no wrong window)."""
    art = with_threshold(load_artifact(art_path), sc, seed)
    X, y, names = sc.target_test.X, sc.target_test.y, sc.class_names
    sig = Device(art).signals(X, normalized=True)
    assert sig.novelty is not None and sig.margin is not None
    pred = sig.probs.argmax(1)
    wrong = pred != y
    if not wrong.any():
        return None
    flat = art.device.replace(confidence_novelty_power=0.0)
    plain = Device(art, flat).signals(X, normalized=True)
    pairs = Counter((names[a], names[b]) for a, b in zip(y[wrong], pred[wrong], strict=True))
    med = {k: (round(float(np.median(v[wrong])), 2), round(float(np.median(v[~wrong])), 2))
           for k, v in (("novelty", sig.novelty), ("margin", sig.margin))}  # fmt: skip
    return {
        "acc": round(float(1 - wrong.mean()), 3),
        "errors": pairs.most_common(4),
        "wrong/class": {
            n: f"{(wrong & (y == c)).sum()}/{(y == c).sum()}" for c, n in enumerate(names)
        },
        "median wrong/right": med,
        "conf": round(auroc(sig.confidence, ~wrong) or 0.0, 3),
        "conf_power0": round(auroc(plain.confidence, ~wrong) or 0.0, 3),
    }


def _mean(rows: list[dict], keys: list[str]) -> dict:
    scored = [r for r in rows if r["conf"] is not None]
    out: dict = {"cells": len(scored)}
    out.update({k: round(float(np.mean([r[k] for r in scored])), 3) for k in keys})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--why", action="store_true", help="what the wrong windows look like")
    args = ap.parse_args()
    rows: dict[str, list[dict]] = {}
    for run in args.runs:
        cfg = RunConfig.from_dict(json.loads((run / "results.json").read_text())["config"])
        ds = load_dataset(cfg.dataset, cfg.data_path, seed=cfg.seed)
        sc = make_scenario(ds, cfg.source, cfg.target, cfg.n_batches, cfg.test_fraction, cfg.seed)
        batch = len(sc.stream[0].y)
        for bits in cfg.bits:
            if args.why:
                print(f"{run.name} {bits}b", why(run / f"deployed-{bits}bit.qcore", sc, cfg.seed))
                continue
            row = cell(run / f"deployed-{bits}bit.qcore", sc, cfg.seed, batch)
            shown = {k: None if v is None else round(v, 3) for k, v in row.items()}
            print(f"{run.name} {bits}b batch {batch}", shown, flush=True)
            rows.setdefault(f"{cfg.dataset} {cfg.source}->{cfg.target}", []).append(row)
    if args.why:
        return
    keys = [k for k in next(iter(rows.values()))[0] if k != "acc"]
    for pair, pair_rows in rows.items():
        print("mean", pair, _mean(pair_rows, keys))
    print("mean over all", _mean([r for v in rows.values() for r in v], keys))


if __name__ == "__main__":
    main()
