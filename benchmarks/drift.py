"""``policy=drift`` against ``policy=every`` on the pairs of the ``wide`` preset.

For each pair (HAPT 1 -> every other subject, USC-HAD 1 -> every other subject where the
data is found; 4 bits, seed 0) two runs of the default device share one trained model:
``policy=every`` (with ``none`` beside it, for the gain) and ``policy=drift``. Per pair:

* ``gain``: slda's final target accuracy minus none's, with every batch calibrated;
* ``first``: the first batch the drift policy calibrated on (1-based; None: never);
* ``calibrated``: how many of the stream's batches it calibrated on;
* ``final_every`` / ``final_drift``: final target accuracy under each policy;
* ``source_fired`` / ``source_batches``: on a stream of the source subject's test
  windows cut into batches of the target stream's size, how many batches the device
  that ships would calibrate on.

Each finished pair is written to ``OUT/pairs/NAME.json`` at once, so an interrupted run
resumes; ``OUT/drift.md`` summarises them against the acceptance of issue 23.

    .venv/bin/python benchmarks/drift.py --out docs/bench-drift [--pairs hapt:1:4,...]
        [--set KEY=VALUE ...]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from qcore.config import RunConfig  # noqa: E402
from qcore.core.fileio import write_json_atomic  # noqa: E402
from qcore.core.settings import parse_overrides  # noqa: E402
from qcore.data.registry import load_dataset  # noqa: E402
from qcore.data.scenario import make_scenario  # noqa: E402
from qcore.edge.artifact import load_artifact  # noqa: E402
from qcore.edge.device import Device  # noqa: E402
from qcore.eval.grid import preset  # noqa: E402
from qcore.eval.runner import run  # noqa: E402

BITS, SEED = 4, 0


def row(results: dict, method: str) -> dict:
    return next(r for r in results["results"] if r.get("method") == method and r.get("bits"))


def source_fires(art_path: Path, cfg: RunConfig, batch: int) -> tuple[int, int]:
    """(batches fired, batches) of the device that ships on the source's test windows."""
    ds = load_dataset(cfg.dataset, cfg.data_path, seed=cfg.seed)
    sc = make_scenario(ds, cfg.source, cfg.target, cfg.n_batches, cfg.test_fraction, cfg.seed)
    dev = Device(load_artifact(art_path))
    X = sc.source_test.X
    fired = 0
    starts = range(0, max(len(X) - batch, 0) + 1, batch)
    for i in starts:
        fired += dev.step(X[i : i + batch], normalized=True).drift
    return fired, len(starts)


def one_pair(dataset: str, source: int, target: int, cache: Path, sets: dict) -> dict:
    pair = {"dataset": dataset, "source": source, "target": target, "seed": SEED}
    base = RunConfig.from_dict({"bits": str(BITS), "threads": 1, **sets, **pair})
    with tempfile.TemporaryDirectory() as tmp:
        every = run(base.replace(method="slda,none"), Path(tmp) / "every", cache=cache)
        drift_cfg = base.replace(method="slda", policy="drift")
        drift = run(drift_cfg, Path(tmp) / "drift", cache=cache)
        steps = row(drift, "slda")["steps"]
        batch = row(every, "slda")["steps"][0]["labelled"]
        fired, batches = source_fires(Path(tmp) / "drift" / f"deployed-{BITS}bit.qcore",
                                      drift_cfg, batch)  # fmt: skip
    calibrated = [s["step"] for s in steps if s["calibrated"]]
    return {
        "pair": f"{dataset} {source}->{target}",
        "gain": row(every, "slda")["target_acc"] - row(every, "none")["target_acc"],
        "first": calibrated[0] if calibrated else None,
        "calibrated": len(calibrated),
        "batches": len(steps),
        "final_every": row(every, "slda")["target_acc"],
        "final_drift": row(drift, "slda")["target_acc"],
        "source_fired": fired,
        "source_batches": batches,
    }


def summary(rows: list[dict]) -> str:
    gaining = [r for r in rows if r["gain"] > 0.05]
    early = [r for r in gaining if r["first"] is not None]
    firsts = [r["first"] for r in early]
    fired = sum(r["source_fired"] for r in rows)
    batches = sum(r["source_batches"] for r in rows)
    diffs = [r["final_drift"] - r["final_every"] for r in rows]
    lines = [
        f"Pairs: {len(rows)}; where slda gains more than 5 points over none: {len(gaining)}.",
        f"- triggered on {len(early)}/{len(gaining)} of those "
        f"({len(early) / max(len(gaining), 1):.0%}), first batch median "
        f"{np.median(firsts) if firsts else float('nan'):g} (max {max(firsts, default=0)});",
        f"- source streams: {fired}/{batches} batches fired ({fired / max(batches, 1):.1%});",
        f"- final target, drift minus every: median {np.median(diffs):+.3f}, "
        f"min {min(diffs):+.3f}; batches calibrated: median "
        f"{np.median([r['calibrated'] for r in rows]):g} of {rows[0]['batches']}.",
        "",
        "| pair | gain (every) | first | calibrated | final every | final drift | source fired |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['pair']} | {r['gain']:+.3f} | {r['first']} | {r['calibrated']}/{r['batches']} "
            f"| {r['final_every']:.3f} | {r['final_drift']:.3f} | "
            f"{r['source_fired']}/{r['source_batches']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--pairs", default=None, help="dataset:source:target,... (default: wide)")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE for both policies")
    args = ap.parse_args()
    if args.pairs:
        pairs = [(p.split(":")[0], int(p.split(":")[1]), int(p.split(":")[2]))
                 for p in args.pairs.split(",")]  # fmt: skip
    else:
        pairs = list(preset("wide").pairs)
    folder = args.out / "pairs"
    folder.mkdir(parents=True, exist_ok=True)
    cache = args.out / ".cache"
    for dataset, source, target in pairs:
        path = folder / f"{dataset}-{source}-{target}.json"
        if not path.exists():
            sets = parse_overrides(args.set)
            write_json_atomic(path, one_pair(dataset, source, target, cache, sets))
            print(path.name, "done", flush=True)
    rows = [json.loads((folder / f"{d}-{s}-{t}.json").read_text()) for d, s, t in pairs]
    text = summary(rows)
    (args.out / "drift.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
