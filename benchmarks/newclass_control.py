"""What learning a new class on the device costs the classes the cloud knew.

For each HAPT test pair (1 -> 4, 1 -> 25), bit-width (2, 4, 8) and class held out of the
cloud in turn, one ``qcore`` run (``new_classes`` = that class, method ``slda``, default
settings otherwise) builds the deployed artifact; two devices then consume the same 10
labelled target batches:

* ``learns``: every window with its label, so the device adds the held-out class when
  its first windows arrive (``allow_new_classes``);
* ``control``: the held-out class's windows arrive without a label (``""``), so the
  device learns from the old classes' windows alone.

Per cell the table gives target test accuracy on the old classes for both and their
difference (``learns - control``: what adding the class cost or gave the old ones), the
held-out class's recall after the stream (the control never learns it, so its recall is
0), and the labelled windows of it the ``learns`` device had been given when that recall
first reached 0.8.

    .venv/bin/python benchmarks/newclass_control.py [--out runs/newclass-control]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from qcore.config import RunConfig  # noqa: E402
from qcore.data.registry import load_dataset  # noqa: E402
from qcore.data.scenario import make_scenario  # noqa: E402
from qcore.edge.artifact import load_artifact  # noqa: E402
from qcore.edge.device import Device  # noqa: E402
from qcore.eval.runner import NEW_CLASS_RECALL, run  # noqa: E402

PAIRS, BITS, SEED = ((1, 4), (1, 25)), (2, 4, 8), 0


def stream(art_path: Path, sc, held: str, learn: bool) -> tuple[float, float, int | None]:
    """(old-class accuracy, held-out recall after the stream, labelled windows of the
    held-out class when its recall first reached the threshold) of one device."""
    dev = Device(load_artifact(art_path), allow_new_classes=True)
    names = np.array(sc.class_names)
    test_names = names[sc.target_test.y]
    new = test_names == held
    seen, reached, recall = 0, None, 0.0
    for batch in sc.stream:
        y = names[batch.y]
        if not learn:
            y = np.where(y == held, "", y)
        seen += int((y == held).sum())
        dev.step(batch.X, y, normalized=True)
        pred = np.array(dev.art.class_names)[dev.predict(sc.target_test.X, normalized=True)]
        recall = float(np.mean(pred[new] == held))
        if reached is None and recall >= NEW_CLASS_RECALL:
            reached = seen
    old = float(np.mean(pred[~new] == test_names[~new]))
    return old, recall, reached


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/newclass-control"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    ds = load_dataset("hapt", seed=SEED)
    print(
        "| pair | class held out | bits | old classes: learns / control | learns - control "
        "| held-out recall: learns / control | windows to recall 0.8 |\n"
        "|---|---|---|---|---|---|---|"
    )
    diffs = []
    for source, target in PAIRS:
        sc = make_scenario(ds, source, target, seed=SEED)
        for held in sc.class_names:
            out = args.out / f"hapt-{source}-{target}-new-{held}"
            cfg = RunConfig(
                source=source, target=target, bits=BITS, seed=SEED, threads=1,
                method="slda", new_classes=held,
            )  # fmt: skip
            run(cfg, out, cache=args.out / ".cache")
            for bits in BITS:
                art = out / f"deployed-{bits}bit.qcore"
                old, recall, reached = stream(art, sc, held, learn=True)
                old_ctl, recall_ctl, _ = stream(art, sc, held, learn=False)
                diffs.append(old - old_ctl)
                print(
                    f"| {source}->{target} | {held} | {bits} | {old:.3f} / {old_ctl:.3f} | "
                    f"{old - old_ctl:+.3f} | {recall:.2f} / {recall_ctl:.2f} | {reached or '-'} |",
                    flush=True,
                )
    print(
        f"\nlearns - control over {len(diffs)} cells: min {min(diffs):+.3f}, "
        f"median {float(np.median(diffs)):+.3f}, max {max(diffs):+.3f}"
    )


if __name__ == "__main__":
    main()
