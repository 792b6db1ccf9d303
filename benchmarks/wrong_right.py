"""Telling a device's wrong predictions from its right ones before any label: other signals.

Issue 23 asks that, on a drifted target before the stream, the device's own signals tell
its wrong predictions from its right ones with AUROC >= 0.8; the calibrated confidence
reaches 0.57-0.88 on the test pairs. This script measures, on finished run folders (the
deployed ``deployed-{b}bit.qcore`` of each, a streaming-head device with the cloud's
novelty threshold), the AUROC on the target test set of:

* ``conf``: the device's calibrated confidence (what it reports today);
* ``novelty``: minus its novelty;
* ``tta_keep`` / ``tta_agree`` / ``tta_conf``: test-time augmentation, 12 copies of each
  window (amplitude scaled by 0.8, 0.9, 1.1, 1.2; shifted in time by -16, -8, 8, 16
  steps, circularly; Gaussian noise of std 0.1 in normalised units, four draws of a
  generator seeded by the run's seed): the mean probability of the class predicted on the
  window itself, the share of copies predicted as that class (ties by confidence), the
  mean top probability;
* ``knn`` / ``knn_x_conf``: within the target test set seen as one batch, the share of a
  window's 5 nearest neighbours (standardised pooled features) predicted as its class
  (ties by confidence), and that share times the confidence.

A cell where the device is right on every window has no AUROC (None). The last line is
the mean over the cells that have one.

    .venv/bin/python benchmarks/wrong_right.py RUN_DIR... > OUT.txt
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

sys.path.insert(0, str(Path(__file__).parent))
from signals import with_threshold  # noqa: E402

from qcore.config import RunConfig  # noqa: E402
from qcore.data.registry import load_dataset  # noqa: E402
from qcore.data.scenario import make_scenario  # noqa: E402
from qcore.edge.artifact import load_artifact  # noqa: E402
from qcore.edge.device import Device  # noqa: E402
from qcore.edge.infer import forward_features  # noqa: E402
from qcore.eval.metrics import auroc  # noqa: E402

SCALES, SHIFTS, NOISE, NOISE_DRAWS, K = (0.8, 0.9, 1.1, 1.2), (-16, -8, 8, 16), 0.1, 4, 5


def knn_agree(features: np.ndarray, pred: np.ndarray, k: int = K) -> np.ndarray:
    """Per window, the share of its ``k`` nearest other windows predicted as its class."""
    z = (features - features.mean(0)) / (features.std(0) + 1e-6)
    d = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nearest = np.argsort(d, axis=1, kind="stable")[:, :k]
    return (pred[nearest] == pred[:, None]).mean(1)


def augmented(X: np.ndarray, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = [X * a for a in SCALES] + [np.roll(X, s, axis=-1) for s in SHIFTS]
    out += [X + NOISE * rng.standard_normal(X.shape) for _ in range(NOISE_DRAWS)]
    return [a.astype(np.float32) for a in out]


def cell(art_path: Path, sc, seed: int) -> dict:
    art = with_threshold(load_artifact(art_path), sc, seed)
    dev = Device(art)
    X, y = sc.target_test.X, sc.target_test.y
    sig = dev.signals(X, normalized=True)
    assert sig.novelty is not None
    pred = sig.probs.argmax(1)
    right = pred == y
    probs = np.stack([dev.signals(a, normalized=True).probs for a in augmented(X, seed)])
    idx = np.arange(len(pred))
    agree = knn_agree(forward_features(art.model, X)[1], pred)
    return {
        "acc": float(right.mean()),
        "conf": auroc(sig.confidence, right),
        "novelty": auroc(-sig.novelty, right),
        "tta_keep": auroc(probs[:, idx, pred].mean(0), right),
        "tta_agree": auroc((probs.argmax(2) == pred).mean(0) + 1e-3 * sig.confidence, right),
        "tta_conf": auroc(probs.max(2).mean(0), right),
        "knn": auroc(agree + 1e-3 * sig.confidence, right),
        "knn_x_conf": auroc(agree * sig.confidence, right),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    rows = []
    for run in args.runs:
        cfg = RunConfig.from_dict(json.loads((run / "results.json").read_text())["config"])
        ds = load_dataset(cfg.dataset, cfg.data_path, seed=cfg.seed)
        sc = make_scenario(ds, cfg.source, cfg.target, cfg.n_batches, cfg.test_fraction, cfg.seed)
        for bits in cfg.bits:
            row = cell(run / f"deployed-{bits}bit.qcore", sc, cfg.seed)
            shown = {k: None if v is None else round(v, 3) for k, v in row.items()}
            print(f"{run.name} {bits}b", shown, flush=True)
            rows.append(row)
    keys = [k for k in rows[0] if k != "acc"]
    scored = [r for r in rows if r["conf"] is not None]
    print(
        "mean over",
        len(scored),
        "cells",
        {k: round(float(np.mean([r[k] for r in scored])), 3) for k in keys},
    )


if __name__ == "__main__":
    main()
