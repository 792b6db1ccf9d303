"""The user guard on a stream where calibration hurts: labels that are partly noise.

HAPT, source subject 1 -> target subject 4, 4 bits, the default model trained ``--epochs``
epochs. Two deployed devices: ``slda`` (the streaming head, the default) and ``qcore``
(the paper's recipe: BatchNorm re-estimation and flip passes). Each consumes the 10
target stream batches twice over (20 labelled batches, raw windows) in which a share
``noise`` of the windows carries a wrong label drawn at random (seeded), with the user
guard off (``reset_window=0``), on with its margin alone (5 batches, margin 0.02,
``reset_alpha`` none) and on with the margin and the sign test (``reset_alpha=0.05``).
Per run the table gives:

* ``clean stream``: the device's accuracy on each batch before calibrating on it,
  against the true labels (what the user gets), mean over the 20 batches;
* ``final target``: accuracy on the target test set after the stream;
* ``resets``: how often each guard returned to the deployed model (margin / sign test).

The deployed model's numbers (no calibration) are in the first column.

    .venv/bin/python benchmarks/guard.py [--epochs 8]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from qcore.cloud import pipeline  # noqa: E402
from qcore.config import RunConfig  # noqa: E402
from qcore.data.registry import load_dataset  # noqa: E402
from qcore.data.scenario import make_scenario  # noqa: E402
from qcore.edge.device import Device  # noqa: E402

NOISE = (0.0, 0.3, 0.6, 0.9)
GUARDS = (  # off, the margin alone, the margin and the sign test
    {"reset_window": 0},
    {"reset_window": 5, "reset_margin": 0.02, "reset_alpha": None},
    {"reset_window": 5, "reset_margin": 0.02, "reset_alpha": 0.05},
)
BITS, SEED, PASSES = 4, 0, 2


def noisy(y: np.ndarray, share: float, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """``y`` with a ``share`` of its labels replaced by another class, drawn at random."""
    out = y.copy()
    hit = rng.random(len(y)) < share
    out[hit] = (y[hit] + rng.integers(1, n_classes, hit.sum())) % n_classes
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = RunConfig(epochs=args.epochs, record_every=2, bits=(BITS,), seed=SEED, threads=1)
    sc = make_scenario(load_dataset("hapt"), 1, 4, seed=SEED)
    Xs, ys, k = sc.source_train.X, sc.source_train.y, sc.n_classes
    model, dyn = pipeline.train_model(cfg, Xs, ys, k)
    core = pipeline.select_qcore(cfg, Xs, ys, pipeline.core_scores(dyn, len(ys)))
    qmodel = pipeline.quantize(model, BITS, Xs, cfg)
    pipeline.calibrate_on_source(qmodel, Xs, ys, cfg)
    net, _ = pipeline.train_flip_network(qmodel, core, Xs, ys, k, len(sc.stream[0]), cfg)
    names = sc.class_names
    arts = {
        "qcore": pipeline.device_artifact(qmodel, core, net, sc.normalizer, names, cfg),
        "slda": pipeline.device_artifact(
            qmodel, None, None, sc.normalizer, names, cfg,
            cfg.device.replace(head="slda", flip_steps=0, bn_mode="frozen"),
            (Xs, ys), Xs.shape[2],
        ),
    }  # fmt: skip
    mean, std = sc.normalizer.mean[None, :, None], sc.normalizer.std[None, :, None]
    stream = [((b.X * std + mean).astype(np.float32), b.y) for b in sc.stream] * PASSES
    test_X = (sc.target_test.X * std + mean).astype(np.float32)
    test_y = sc.target_test.y
    print(
        f"HAPT 1->4, {BITS} bits, {args.epochs} epochs; {len(stream)} labelled batches of "
        f"{len(stream[0][1])}; a share `noise` of each batch's labels replaced at random\n"
    )
    print(
        "| device | noise | deployed: clean stream / final target | guard off | margin "
        "| margin + sign test | resets |\n|---|---|---|---|---|---|---|"
    )
    for method, art in arts.items():
        deployed = Device(art)
        dep_stream = np.mean([np.mean(deployed.predict(X) == y) for X, y in stream])
        dep_final = np.mean(deployed.predict(test_X) == test_y)
        for share in NOISE:
            cells, resets = [], []
            for guard in GUARDS:
                rng = np.random.default_rng(SEED)
                dev = Device(art, art.device.replace(**guard))
                clean, fired = [], 0
                for X, y in stream:
                    clean.append(np.mean(dev.predict(X) == y))
                    fired += dev.step(X, noisy(y, share, k, rng)).reset
                resets.append(str(fired))
                final = np.mean(dev.predict(test_X) == test_y)
                cells.append(f"{np.mean(clean):.3f} / {final:.3f}")
            print(
                f"| {method} | {share:.1f} | {dep_stream:.3f} / {dep_final:.3f} "
                f"| {' | '.join(cells)} | {' / '.join(resets[1:])} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
