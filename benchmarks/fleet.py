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

**Privacy curve.** Every device streams a second time with ``share_clip = C`` (each window's
pooled features scaled to L2 norm at most ``C`` before they join its statistics). ``C`` is
fixed per dataset before any run by one rule: the median L2 norm of the deployed model's
pooled features over the source subject's training windows (``clip``); nothing is tuned on
the sites. Each device sends a share (:func:`qcore.edge.share.make_share` of its learnt
part, noise seeded by its subject number), and the new site's merged artifact
(:func:`qcore.edge.fleet.merge_shares`, then :func:`qcore.edge.fleet.weigh_as` as ``qcore
fleet merge`` does by default; before the site's labels the weight changes no prediction)
is scored on the site's target test set: ``fleet_clipped`` without noise, ``fleet_eps1``,
``fleet_eps2``, ``fleet_eps4``, ``fleet_eps8`` private at that epsilon, delta ``1e-5``
(``clip_resets``: the user guard's resets over the clipped streams). Clipping alone
changes the statistics (the windows' features are shrunk, the deployed ones are not), so
``fleet_clipped`` is reported apart from the unclipped ``fleet_before``.

**FedAvg baseline.** A linear softmax head on the deployed model's pooled features,
initialised from the deployed streaming head's weights and bias
(:func:`qcore.edge.backbone.solve_head`) and trained by FedAvg over the other devices
(their labelled windows, the ones their states hold): each round every device runs one
local epoch of plain SGD (minibatches of 32, its own shuffle) on the softmax cross-entropy,
and the server averages the weights and biases by window count. The step is ``lr = m /
L`` with ``L`` the largest eigenvalue of the source training windows' second moment of
``[x, 1]`` (``1 / L`` is a safe step for this loss) and ``m`` in ``LR_MULTS``: all four are
reported, as the smallest barely moves a closed-form head whose logits are on the scale of
Mahalanobis distances, and picking the best afterwards is picking on the sites (so the best
row flatters FedAvg). ``fedavg_mM_rR``: accuracy on the new site's target test set after
``R`` rounds (``R = 0``: the deployed head, ``fedavg_r0``). Bytes a device sends and
receives: ``R x 2 x (K D + K) x 4`` (weights and bias as float32, down and up each round),
against the merge's one ``bytes32`` upload.

Rows go to ``OUT/sites.csv`` (per dataset, also ``OUT/sites-DATASET.json``, so a dataset
already measured is not measured again) and a summary against the acceptance of issue 26
to ``OUT/fleet.md``. Each site's features (its held windows', its test windows') are
computed once.

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
from qcore.edge.backbone import solve_head  # noqa: E402
from qcore.edge.device import Device  # noqa: E402
from qcore.edge.fleet import (  # noqa: E402
    grow_learnt,
    learnt_part,
    merge_fleet,
    merge_parts,
    merge_shares,
    weigh_as,
)
from qcore.edge.head import HeadStats, batch_stats, combine  # noqa: E402
from qcore.edge.infer import forward_features  # noqa: E402
from qcore.edge.share import (  # noqa: E402
    centres,
    clip_norms,
    make_share,
    noise_multiplier,
    pooled_stats,
)
from qcore.eval.grid import _uschad_found, one_to_all  # noqa: E402
from qcore.eval.runner import run  # noqa: E402

BITS, SEED, SOURCE = 4, 0, 1
DELTA, EPSILONS = 1e-5, (1, 2, 4, 8)
ROUNDS, LR_MULTS, BATCH = (1, 5, 20), (1, 100, 10_000, 1_000_000), 32
FEDAVG = tuple(f"fedavg_m{m:g}_r{r}" for m in LR_MULTS for r in ROUNDS)
FIELDS = (
    "dataset", "site", "n_test", "deployed", "own", "fleet_before", "fleet_after", "central",
    "fleet_after_pooled", "pred_diff", "stats_diff", "bytes32", "bytes16", "resets",
    "clip", "clip_resets", "fleet_clipped", *(f"fleet_eps{e}" for e in EPSILONS),
    "fedavg_r0", *FEDAVG, "fedavg_bytes_round",
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


def fedavg(
    weight: np.ndarray,
    bias: np.ndarray,
    clients: list[tuple[np.ndarray, np.ndarray]],
    lr: float,
    seed: int,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """FedAvg of a linear softmax head from ``weight`` ``(K, D)`` and ``bias``: per round,
    one local epoch of SGD on each client's (features, labels), averaged by window count;
    the global head after each round of ``ROUNDS``."""
    w, b = weight.astype(np.float64), bias.astype(np.float64)
    share = np.array([len(y) for _, y in clients], dtype=np.float64)
    share /= share.sum()
    out = {}
    for r in range(1, max(ROUNDS) + 1):
        local_w, local_b = [], []
        for k, (X, y) in enumerate(clients):
            cw, cb = w.copy(), b.copy()
            order = np.random.default_rng([seed, r, k]).permutation(len(y))
            for i in range(0, len(y), BATCH):
                xb, yb = X[order[i : i + BATCH]], y[order[i : i + BATCH]]
                z = xb @ cw.T + cb
                p = np.exp(z - z.max(axis=1, keepdims=True))
                p /= p.sum(axis=1, keepdims=True)
                p[np.arange(len(yb)), yb] -= 1.0  # d(cross-entropy)/d(logits)
                cw -= lr * (p.T @ xb) / len(yb)
                cb -= lr * p.sum(axis=0) / len(yb)
            local_w.append(cw)
            local_b.append(cb)
        w, b = np.tensordot(share, np.array(local_w), 1), share @ np.array(local_b)
        if r in ROUNDS:
            out[r] = (w.copy(), b.copy())
    return out


def linear_accuracy(w: np.ndarray, b: np.ndarray, test: tuple[np.ndarray, np.ndarray]) -> float:
    return float((np.argmax(test[0] @ w.T + b, axis=1) == test[1]).mean())


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
    # the rules fixed before the runs, from the source subject's training windows alone
    source = make_scenario(ds, SOURCE, subjects[0], cfg.n_batches, cfg.test_fraction, SEED)
    feats0 = forward_features(deployed.model, source.source_train.X)[1].astype(np.float64)
    clip = float(np.median(np.linalg.norm(feats0, axis=1)))
    aug = np.hstack([feats0, np.ones((len(feats0), 1))])
    smooth = float(np.linalg.eigvalsh(aug.T @ aug / len(aug)).max())
    clipped_dep = replace(deployed, device=replace(deployed.device, share_clip=clip))
    clipped = [one_site(clipped_dep, ds, cfg, t) for t in subjects]
    shares: dict[float | None, list] = {}
    for eps in (None, *EPSILONS):
        privacy = None if eps is None else (float(eps), DELTA, clip)
        shares[eps] = [
            make_share(learnt_part(deployed, c.state), c.state.class_names, sha, privacy,
                       seed=c.subject)
            for c in clipped
        ]  # fmt: skip
    print(f"{dataset}: clip {clip:.3f}, devices streamed clipped, shares made "
          f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    solved = solve_head(deployed.head, deployed.device)
    tests = {
        s.subject: (forward_features(deployed.model, s.test[0])[1].astype(np.float64), s.test[1])
        for s in sites
    }
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
        private = {}
        for eps, made in shares.items():
            kept = [sh for sh, c in zip(made, clipped, strict=True) if c.subject != site.subject]
            art = merge_shares(deployed, kept, None, sha)
            art = weigh_as(art, float(deployed.head.count.sum()))
            private["fleet_clipped" if eps is None else f"fleet_eps{eps}"] = accuracy(
                art, site.test
            )[0]
        clients = [(s.held[0].astype(np.float64), s.held[1]) for s in others]
        fed = {}
        for m in LR_MULTS:
            for r, (w, b) in fedavg(solved.weight, solved.bias, clients, m / smooth, SEED).items():
                fed[f"fedavg_m{m:g}_r{r}"] = linear_accuracy(w, b, tests[site.subject])
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
            "clip": clip,
            "clip_resets": next(c.resets for c in clipped if c.subject == site.subject),
            **private,
            "fedavg_r0": linear_accuracy(solved.weight, solved.bias, tests[site.subject]),
            **fed,
            "fedavg_bytes_round": 2 * 4 * (solved.weight.size + solved.bias.size),
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    print(f"{dataset}: done ({time.perf_counter() - t0:.0f} s)")
    return rows


CANDIDATES = ("plain", "pooled", "means", "centred", "centred-means")


def validate_shares(dataset: str, cache: Path) -> list[dict]:
    """The private-share candidates of docs/results.md ("Private shares: the rule fixed
    before the runs") on the even-numbered subjects as new sites, at epsilon 4: per site
    and candidate the merge's accuracy without noise and at epsilon 4, against the
    unclipped merge without noise. A device's clipped statistics are the deployed ones
    plus ``batch_stats`` of its held windows' clipped features (what its stream gives when
    its guard never resets; ``resets`` says so)."""
    deployed, sha, cfg = deploy(dataset, cache)
    assert deployed.head is not None
    ds = load_dataset(dataset, cfg.data_path, seed=SEED)
    subjects = [t for _, _, t in one_to_all(dataset, SOURCE)]
    sites = [one_site(deployed, ds, cfg, t) for t in subjects]
    source = make_scenario(ds, SOURCE, subjects[0], cfg.n_batches, cfg.test_fraction, SEED)
    feats0 = forward_features(deployed.model, source.source_train.X)[1].astype(np.float64)
    mu = deployed.head.mean.astype(np.float64)
    k, classes = deployed.head.n_classes, deployed.class_names
    clips = {
        False: float(np.median(np.linalg.norm(feats0, axis=1))),
        True: float(np.median(np.linalg.norm(feats0 - mu[source.source_train.y], axis=1))),
    }
    total = float(deployed.head.count.sum())
    rows = []
    for site in sites:
        if site.subject % 2:
            continue
        others = [s for s in sites if s is not site]
        merged = merge_fleet(deployed, [s.state for s in others], None, sha)
        row = {"dataset": dataset, "site": site.subject,
               "fleet_before": accuracy(merged, site.test)[0],
               "resets": sum(s.resets for s in others), "clip": clips[False],
               "clip_centred": clips[True]}  # fmt: skip
        for name in CANDIDATES:
            centred = name.startswith("centred")
            clip = clips[centred]
            for eps in (None, 4.0):
                privacy = None if eps is None else (eps, DELTA, clip)
                shares = []
                for s in others:
                    x, y = s.held
                    at = mu[y] if centred else None
                    part = batch_stats(clip_norms(x, clip, at), y, k)
                    shares.append(make_share(part, classes, sha, privacy, s.subject,
                                             centres(deployed.head, k) if centred else None,
                                             second=not name.endswith("means")))  # fmt: skip
                if name == "plain":
                    parts = [(grow_learnt(pooled_stats([sh], deployed.head, classes), 0), classes)
                             for sh in shares]  # fmt: skip
                    art = merge_parts(deployed, parts)
                else:
                    art = merge_shares(deployed, shares, None, sha)
                key = f"{name}_{'clean' if eps is None else 'eps4'}"
                row[key] = accuracy(weigh_as(art, total), site.test)[0]
        rows.append(row)
        print(json.dumps(row), flush=True)
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
    return "\n".join(lines + privacy_lines(rows) + fedavg_lines(rows)) + "\n"


def privacy_lines(rows: list[dict]) -> list[str]:
    clip = rows[0]["clip"]
    cols = ["fleet_before", "fleet_clipped", *(f"fleet_eps{e}" for e in EPSILONS[::-1])]
    med = {k: float(np.median([r[k] for r in rows])) for k in cols}
    sigma = {e: noise_multiplier(e, DELTA) * np.sqrt(3.0) for e in EPSILONS}  # on a count
    at4 = med["fleet_eps4"]
    ok = at4 >= med["fleet_before"] - 0.02
    return [
        "",
        f"### Privacy: shares of devices that learnt with share_clip = {clip:.3f} (the median "
        f"feature norm of the source training windows), delta {DELTA:g}",
        "",
        "| | unclipped, no noise | clipped, no noise | "
        + " | ".join(f"epsilon {e}" for e in EPSILONS[::-1])
        + " |",
        "|---|---|---|" + "---|" * len(EPSILONS),
        "| median accuracy | " + " | ".join(f"{med[k]:.3f}" for k in cols) + " |",
        "| noise std: count / sum / second moment | 0 | 0 | "
        + " | ".join(
            f"{sigma[e]:.1f} / {sigma[e] * clip:.0f} / {sigma[e] * clip**2:.0f}"
            for e in EPSILONS[::-1]
        )
        + " |",
        "",
        f"- clipping alone: median {med['fleet_clipped'] - med['fleet_before']:+.3f} against "
        f"the unclipped merge; user-guard resets over the clipped streams: "
        f"{sum(r['clip_resets'] for r in rows)};",
        f"- acceptance: at epsilon 4 the median target accuracy ({at4:.3f}) within 2 points of "
        f"the merge without noise ({med['fleet_before']:.3f}): "
        f"{'holds' if ok else 'does not hold'} ({at4 - med['fleet_before']:+.3f}; against "
        f"the clipped merge without noise {at4 - med['fleet_clipped']:+.3f}).",
    ]


def fedavg_lines(rows: list[dict]) -> list[str]:
    merge = float(np.median([r["fleet_before"] for r in rows]))
    per_round = rows[0]["fedavg_bytes_round"]
    lines = [
        "",
        "### FedAvg of a linear softmax head (from the deployed head; SGD, 1 local epoch, "
        f"batch {BATCH}, lr = m / L), before the site's labels",
        "",
        "| m | " + " | ".join(f"R = {r}" for r in ROUNDS) + " |",
        "|---|" + "---|" * len(ROUNDS),
    ]
    for m in LR_MULTS:
        accs = [np.median([r[f"fedavg_m{m:g}_r{k}"] for r in rows]) for k in ROUNDS]
        lines.append(f"| {m:g} | " + " | ".join(f"{a:.3f}" for a in accs) + " |")
    lines += [
        "| bytes per device (down + up) | "
        + " | ".join(f"{k * per_round:,}" for k in ROUNDS)
        + " |",
        "",
        f"- R = 0 (the deployed head as a linear map): median "
        f"{np.median([r['fedavg_r0'] for r in rows]):.3f} (deployed: "
        f"{np.median([r['deployed'] for r in rows]):.3f});",
        f"- one-round merge: median {merge:.3f}, {np.median([r['bytes32'] for r in rows]):,.0f} "
        f"bytes up once (float32; the merged statistics down once, about as many).",
    ]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--datasets", default=None, help="comma-separated (default: hapt, usc-had)")
    ap.add_argument(
        "--validate",
        action="store_true",
        help="the private-share candidates on the validation sites only",
    )
    args = ap.parse_args()
    datasets = (
        args.datasets.split(",") if args.datasets else ["hapt"] + ["usc-had"] * _uschad_found()
    )
    args.out.mkdir(parents=True, exist_ok=True)
    if args.validate:
        for dataset in datasets:
            got = validate_shares(dataset, args.out / ".cache")
            write_json_atomic(args.out / f"validate-{dataset}.json", got)
            med = {c: float(np.median([r[f"{c}_eps4"] - r["fleet_before"] for r in got]))
                   for c in CANDIDATES}  # fmt: skip
            print(dataset, json.dumps(med))
        return
    rows: dict[str, list[dict]] = {}
    for dataset in datasets:
        path = args.out / f"sites-{dataset}.json"
        if not path.exists() or set(FIELDS) - set(json.loads(path.read_text())[0]):
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
