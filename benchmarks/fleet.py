"""A fleet of devices, one merge round: what pooling the fleet's streaming heads gives a new site.

For each dataset (HAPT; USC-HAD where the data is found), source subject 1, 4 bits, seed
0, the default device (``method=slda``: the streaming head on the frozen backbone) is
trained and deployed once. Every other subject is a device that streams its target
stream (labelled, the scenario's 10 batches) from the deployed artifact; each device's
state is computed once. Then each subject in turn is the new site, and the other
devices' states are merged (:func:`qcore.edge.fleet.merge_fleet`). Per site, accuracy on
its target test set of:

* ``deployed``: the deployed model (the streaming head from the source);
* ``own``: the site's own device after its stream;
* ``fleet_before``: the merged artifact, before any of the site's labels;
* ``fleet_after``: a device started from the merged artifact weighed as the deployed one
  (:func:`qcore.edge.fleet.weigh_as`, what ``qcore fleet merge`` writes), after the site's
  stream; ``fleet_after_pooled``: the same from the merged statistics at their full weight;
* ``central``: a head fitted in one computation on the pooled features of the windows the
  other devices hold (:func:`qcore.edge.head.batch_stats`), combined with the deployed
  statistics (:func:`qcore.edge.head.combine`); ``pred_diff`` counts the test windows
  where its prediction differs from ``fleet_before``'s, ``stats_diff`` is the largest
  relative difference of its statistics from the merged ones.

``bytes32`` / ``bytes16``: the size of what a device sends (its learnt statistics,
:func:`qcore.edge.fleet.learnt_part`: counts, means and scatter) as float32 and float16.
``resets``: how often the user guard returned a device to the deployed model (the
windows before a reset are then not in its state; ``central`` pools what the states hold).

Rows go to ``OUT/sites.csv`` (per dataset, also ``OUT/sites-DATASET.json``, so a dataset
already measured is not measured again) and a summary against the acceptance of issue 26
to ``OUT/fleet.md``.

    .venv/bin/python benchmarks/fleet.py --out docs/bench-fleet [--datasets hapt,usc-had]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import csv  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from qcore.config import RunConfig  # noqa: E402
from qcore.core.fileio import write_json_atomic  # noqa: E402
from qcore.data.registry import load_dataset  # noqa: E402
from qcore.data.scenario import make_scenario  # noqa: E402
from qcore.edge.artifact import Artifact, load_artifact  # noqa: E402
from qcore.edge.device import Device  # noqa: E402
from qcore.edge.fleet import learnt_part, merge_fleet, weigh_as  # noqa: E402
from qcore.edge.head import HeadStats, batch_stats, combine  # noqa: E402
from qcore.edge.infer import forward_features  # noqa: E402
from qcore.eval.grid import _uschad_found, one_to_all  # noqa: E402
from qcore.eval.runner import run  # noqa: E402

BITS, SEED, SOURCE = 4, 0, 1
FIELDS = (
    "dataset", "site", "n_test", "deployed", "own", "fleet_before", "fleet_after", "central",
    "fleet_after_pooled", "pred_diff", "stats_diff", "bytes32", "bytes16", "resets",
)  # fmt: skip


@dataclass
class Site:
    """One subject: its device's state after its stream and what the benchmark needs."""

    subject: int
    state: Artifact
    stream: list[tuple[np.ndarray, np.ndarray]]  # the (normalised) batches
    held: tuple[np.ndarray, np.ndarray]  # features and labels of the windows its state holds
    test: tuple[np.ndarray, np.ndarray]
    resets: int


def deploy(dataset: str, cache: Path) -> tuple[Artifact, str, RunConfig]:
    """The deployed default device of ``dataset`` (source 1), and its file's SHA-256."""
    target = one_to_all(dataset, SOURCE)[0][2]
    pair = {"dataset": dataset, "source": SOURCE, "target": target, "seed": SEED}
    cfg = RunConfig.from_dict({"bits": str(BITS), "threads": 1, "method": "slda", **pair})
    with tempfile.TemporaryDirectory() as tmp:
        run(cfg, Path(tmp), cache=cache)
        path = Path(tmp) / f"deployed-{BITS}bit.qcore"
        return load_artifact(path), hashlib.sha256(path.read_bytes()).hexdigest(), cfg


def accuracy(
    art: Artifact, test: tuple[np.ndarray, np.ndarray], deployed: Artifact | None = None
) -> tuple[float, np.ndarray]:
    pred = Device(art, deployed=deployed).predict(test[0], normalized=True)
    return float((pred == test[1]).mean()), pred


def stream_device(start: Artifact, stream: list[tuple[np.ndarray, np.ndarray]]) -> Device:
    dev = Device(start)
    for X, y in stream:
        dev.step(X, y, normalized=True)
    return dev


def one_site(deployed: Artifact, ds, cfg: RunConfig, subject: int) -> Site:
    sc = make_scenario(ds, SOURCE, subject, cfg.n_batches, cfg.test_fraction, SEED)
    stream = [(b.X, b.y) for b in sc.stream]
    dev, since, resets = Device(deployed), 0, 0
    for i, (X, y) in enumerate(stream):
        if dev.step(X, y, normalized=True).reset:
            since, resets = i, resets + 1  # the state restarted from the deployed one
    X = np.concatenate([b[0] for b in stream[since:]])
    y = np.concatenate([b[1] for b in stream[since:]])
    held = (forward_features(deployed.model, X)[1], y)
    return Site(subject, dev.art, stream, held, (sc.target_test.X, sc.target_test.y), resets)


def stats_diff(a: HeadStats, b: HeadStats) -> float:
    """Largest difference of two heads' statistics, relative to each part's scale."""
    out = 0.0
    for part in ("count", "mean", "scatter"):
        x, z = getattr(a, part).astype(np.float64), getattr(b, part).astype(np.float64)
        out = max(out, float(np.abs(x - z).max() / max(1.0, np.abs(z).max())))
    return out


def measure(dataset: str, cache: Path) -> list[dict]:
    t0 = time.perf_counter()
    deployed, sha, cfg = deploy(dataset, cache)
    assert deployed.head is not None
    ds = load_dataset(dataset, cfg.data_path, seed=SEED)
    subjects = [t for _, _, t in one_to_all(dataset, SOURCE)]
    sites = [one_site(deployed, ds, cfg, t) for t in subjects]
    print(f"{dataset}: {len(sites)} devices streamed ({time.perf_counter() - t0:.0f} s)")
    rows = []
    for site in sites:
        others = [s for s in sites if s is not site]
        merged = merge_fleet(deployed, [s.state for s in others],
                             [f"subject {s.subject}" for s in others], sha)  # fmt: skip
        feats = np.concatenate([s.held[0] for s in others])
        labels = np.concatenate([s.held[1] for s in others])
        pooled = batch_stats(feats, labels, deployed.head.n_classes)
        central = replace(deployed, head=combine(deployed.head, pooled))
        assert merged.head is not None and central.head is not None
        prior = weigh_as(merged, float(deployed.head.count.sum()))
        fleet_before, pred_before = accuracy(merged, site.test)
        central_acc, pred_central = accuracy(central, site.test)
        part = learnt_part(deployed, site.state)
        rows.append({
            "dataset": dataset,
            "site": site.subject,
            "n_test": len(site.test[1]),
            "deployed": accuracy(deployed, site.test)[0],
            "own": accuracy(site.state, site.test, deployed)[0],
            "fleet_before": fleet_before,
            "fleet_after": accuracy(stream_device(prior, site.stream).art, site.test, prior)[0],
            "fleet_after_pooled": accuracy(
                stream_device(merged, site.stream).art, site.test, merged
            )[0],
            "central": central_acc,
            "pred_diff": int((pred_before != pred_central).sum()),
            "stats_diff": stats_diff(merged.head, central.head),
            "bytes32": part.nbytes,
            "bytes16": part.nbytes // 2,
            "resets": site.resets,
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    print(f"{dataset}: done ({time.perf_counter() - t0:.0f} s)")
    return rows


def summary(dataset: str, rows: list[dict]) -> str:
    n = len(rows)
    gain = np.array([r["fleet_before"] - r["deployed"] for r in rows])
    to_central = np.array([r["fleet_before"] - r["central"] for r in rows])
    after = np.array([r["fleet_after"] - r["own"] for r in rows])
    pooled = np.array([r["fleet_after_pooled"] - r["own"] for r in rows])
    beats = int((gain > 0).sum())
    holds = int((after >= 0).sum())
    b32, b16 = np.median([r["bytes32"] for r in rows]), np.median([r["bytes16"] for r in rows])
    med = {k: np.median([r[k] for r in rows]) for k in FIELDS[3:8]}
    ok_before = np.median(gain) > 0 and beats >= 0.8 * n and np.abs(to_central).max() <= 0.01
    lines = [
        f"## {dataset} (source {SOURCE}, {BITS} bits, seed {SEED}): {n} sites, each merged "
        f"with the other {n - 1} devices",
        "",
        "| | deployed | own | fleet_before | fleet_after | central |",
        "|---|---|---|---|---|---|",
        "| median accuracy | " + " | ".join(f"{med[k]:.3f}" for k in FIELDS[3:8]) + " |",
        "",
        f"- fleet_before - deployed: median {np.median(gain):+.3f}, min {gain.min():+.3f}; "
        f"fleet_before beats deployed on {beats}/{n} sites ({beats / n:.0%});",
        f"- fleet_before - central: median {np.median(to_central):+.4f}, max |.| "
        f"{np.abs(to_central).max():.4f}; test predictions that differ: "
        f"{sum(r['pred_diff'] for r in rows)} of {sum(r['n_test'] for r in rows)}; largest "
        f"relative difference of the statistics {max(r['stats_diff'] for r in rows):.1e};",
        f"- fleet_after - own: median {np.median(after):+.3f}, min {after.min():+.3f}; "
        f"fleet_after >= own on {holds}/{n} sites ({holds / n:.0%}); at the fleet's full "
        f"weight: median {np.median(pooled):+.3f}, >= own on {int((pooled >= 0).sum())}/{n};",
        f"- bytes a device sends (learnt counts, means, scatter): {b32:,.0f} as float32, "
        f"{b16:,.0f} as float16 (median);",
        f"- user-guard resets over all devices' streams: {sum(r['resets'] for r in rows)};",
        f"- acceptance: before any label, beats deployed at the median and on >= 80% of sites, "
        f"within 1 point of central: {'holds' if ok_before else 'does not hold'}; after the "
        f"site's stream at least as good as its own device: "
        f"{'holds' if holds == n else f'holds on {holds}/{n} sites'}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--datasets", default=None, help="comma-separated (default: hapt, usc-had)")
    args = ap.parse_args()
    datasets = (
        args.datasets.split(",") if args.datasets else ["hapt"] + ["usc-had"] * _uschad_found()
    )
    args.out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict]] = {}
    for dataset in datasets:
        path = args.out / f"sites-{dataset}.json"
        if not path.exists():
            write_json_atomic(path, measure(dataset, args.out / ".cache"))
        rows[dataset] = json.loads(path.read_text())
    with open(args.out / "sites.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, FIELDS)
        writer.writeheader()
        for dataset in datasets:
            for r in rows[dataset]:
                writer.writerow({k: f"{v:.4g}" if isinstance(v, float) else v
                                 for k, v in r.items()})  # fmt: skip
    text = "\n".join(summary(d, rows[d]) for d in datasets)
    (args.out / "fleet.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
