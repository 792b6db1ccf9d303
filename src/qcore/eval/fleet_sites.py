"""The rows of the ``fleet`` preset: each new site merged from the other devices of its
fleet (:mod:`qcore.eval.fleet_bench` runs the devices; its docstring says what each column
measures), and the FedAvg baseline on the same windows. The columns of the private forms
the devices do not write are made here from each device's held windows: ``centred-held_*``
(the second rule's pick, clip ``clip_held``) and ``means-whitened-4_*`` (the third rule's,
:func:`means_art`, clip ``clip_means``; docs/fleet-privacy.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from qcore.core.fileio import write_json_atomic

DELTA, EPSILONS = 1e-5, (1, 2, 4, 8)
FORMS = {
    "fleet": "clipped devices (counts, sums, second moment)",
    "centred": "centred (first rule's pick)",
    "centred-held": "centred, held-out clip (second rule's pick, not adopted)",
    "means-whitened-4": "means-only, whitened (third rule's pick, adopted: chosen)",
}
MEANS_K = 4  # means-whitened-4's clip: 4 x the median whitened |x - μ_y| of the held-out windows
FILE_FORMS = ("fleet", "centred")  # the forms whose shares the devices write
ROUNDS, LR_MULTS, BATCH = (1, 5, 20), (1, 100, 10_000, 1_000_000), 32
FEDAVG = tuple(f"fedavg_m{m:g}_r{r}" for m in LR_MULTS for r in ROUNDS)
PRIVATE = tuple(f"{f}_{e}" for f in FORMS for e in ("clipped", *(f"eps{e}" for e in EPSILONS)))
FIELDS = (
    "dataset", "site", "n_test", "deployed", "own", "fleet_before", "fleet_after", "central",
    "fleet_after_pooled", "pred_diff", "stats_diff", "bytes32", "bytes16", "resets",
    "clip", "clip_centred", "clip_held", "clip_means", "clip_resets", *PRIVATE, "fedavg_r0",
    *FEDAVG, "fedavg_bytes_round",
)  # fmt: skip


def read_meta(folder: Path) -> dict | None:
    """The ``deployed.json`` of a pair folder, or None before its deploy task ended."""
    try:
        return json.loads((folder / "deployed.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


@dataclass
class Site:
    """What one device wrote, loaded for the report."""

    subject: int
    state: Any  # Artifact
    shares: dict[str, Any]  # "FORM-E" -> Share
    stream: list[tuple[np.ndarray, np.ndarray]]
    held: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    test_feats: np.ndarray
    resets: int
    clip_resets: int


def load_site(folder: Path, subject: int) -> Site:
    from qcore.edge.share import load_share
    from qcore.edge.state import load_state

    mine = folder / "devices" / str(subject)
    info = json.loads((mine / "device.json").read_text())
    with np.load(mine / "data.npz", allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    cuts = np.cumsum(data["sizes"])[:-1]
    stream = list(
        zip(np.split(data["stream_X"], cuts), np.split(data["stream_y"], cuts), strict=True)
    )
    shares = {
        f"{form}-{tag}": load_share(mine / f"share-{form}-{tag}.npz")
        for form in FILE_FORMS
        for tag in ("clean", *(f"eps{e}" for e in EPSILONS))
    }
    return Site(
        subject, load_state(mine / "state.qcore"), shares, stream,
        (data["held"], data["held_y"]), (data["test_X"], data["test_y"]),
        data["test_feats"].astype(np.float64), info["resets"], info["clip_resets"],
    )  # fmt: skip


def source_held_out(folder: Path, deployed) -> tuple[np.ndarray, np.ndarray]:
    """The deployed model's pooled features (float64) and labels of the source subject's
    held-out windows (the scenario's ``source_test``: neither trained the model nor fitted
    its head statistics)."""
    from qcore.config import RunConfig
    from qcore.data.registry import load_dataset
    from qcore.data.scenario import make_scenario
    from qcore.edge.infer import forward_features

    meta = read_meta(folder)
    assert meta is not None
    cfg = RunConfig.from_dict(meta["config"])
    ds = load_dataset(cfg.dataset, cfg.data_path, seed=cfg.seed)
    held = make_scenario(
        ds, cfg.source, cfg.target, cfg.n_batches, cfg.test_fraction, cfg.seed
    ).source_test
    return forward_features(deployed.model, held.X)[1].astype(np.float64), held.y


def held_out_clip(folder: Path, deployed) -> float:
    """``centred-held``'s clip (docs/fleet-privacy.md): the median of ``|x - μ_y|`` over the
    source subject's held-out windows, ``μ`` the deployed class means."""
    x, y = source_held_out(folder, deployed)
    return float(np.median(np.linalg.norm(x - deployed.head.mean.astype(np.float64)[y], axis=1)))


def means_clip(folder: Path, deployed, k: float = MEANS_K) -> float:
    """``means-whitened-k``'s clip (docs/fleet-privacy.md, the third rule): ``k`` times the
    median of ``|Σ^(-1/2) (x - μ_y)|`` over the source subject's held-out windows."""
    from qcore.edge.share_forms import discriminant_subspace, project

    x, y = source_held_out(folder, deployed)
    head = deployed.head
    wide = discriminant_subspace(head, deployed.device.head_shrinkage, head.n_features)
    return k * float(np.median(np.linalg.norm(project(x, y, head, wide), axis=1)))


def means_art(deployed, others: list[Site], whitened: bool, clip: float | None, privacy, sha):
    """The merged artifact of the ``others`` devices' means-only shares
    (:mod:`qcore.edge.share_means`) in all whitened directions (``whitened``) or the ``K -
    1`` discriminant ones, each from the device's held windows, clipped to ``clip`` (None:
    unclipped), private under ``privacy`` (None: no noise; noise seeded by the subject)."""
    from qcore.edge.fleet import grow_learnt, merge_parts
    from qcore.edge.share_forms import discriminant_subspace
    from qcore.edge.share_means import means_share, means_stats

    head, classes = deployed.head, deployed.class_names
    rank = head.n_features if whitened else None
    sub = discriminant_subspace(head, deployed.device.head_shrinkage, rank)
    shares = [
        means_share(s.held[0], s.held[1], head, sub, classes, sha, privacy, s.subject, clip)
        for s in others
    ]
    stats = means_stats(shares, head, sub, classes)
    return merge_parts(deployed, [(grow_learnt(stats, 0), tuple(classes))])


def centred_held_shares(deployed, others: list[Site], clip: float, eps, sha: str) -> list:
    """The ``centred-held`` shares of the ``others`` devices: each held window's deviation
    from the deployed mean of its class clipped to ``clip``, made private at ``eps`` (None:
    no noise), noise seeded by the device's subject."""
    from qcore.edge.head import batch_stats
    from qcore.edge.share import centres, clip_norms, make_share

    head, k = deployed.head, deployed.head.n_classes
    mu, privacy = head.mean.astype(np.float64), None if eps is None else (eps, DELTA, clip)
    return [
        make_share(batch_stats(clip_norms(s.held[0], clip, mu[s.held[1]]), s.held[1], k),
                   deployed.class_names, sha, privacy, s.subject, centres(head, k))
        for s in others
    ]  # fmt: skip


def accuracy(art, test: tuple[np.ndarray, np.ndarray], deployed=None) -> tuple[float, np.ndarray]:
    from qcore.edge.device import Device

    pred = Device(art, deployed=deployed).predict(test[0], normalized=True)
    return float((pred == test[1]).mean()), pred


def fedavg(
    weight: np.ndarray,
    bias: np.ndarray,
    clients: list[tuple[np.ndarray, np.ndarray]],
    lr: float,
    seed: int,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """FedAvg of a linear softmax head from ``weight`` ``(K, D)`` and ``bias``: per round,
    one local epoch of SGD on each client's (features, labels), averaged by window count;
    the global head after each round of :data:`ROUNDS`."""
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


def linear_accuracy(w: np.ndarray, b: np.ndarray, feats: np.ndarray, y: np.ndarray) -> float:
    return float((np.argmax(feats @ w.T + b, axis=1) == y).mean())


def stats_diff(a, b) -> float:
    """Largest difference of two heads' statistics, relative to each part's scale."""
    out = 0.0
    for part in ("count", "mean", "scatter"):
        x, z = getattr(a, part).astype(np.float64), getattr(b, part).astype(np.float64)
        out = max(out, float(np.abs(x - z).max() / max(1.0, np.abs(z).max())))
    return out


def site_row(deployed, meta: dict, site: Site, others: list[Site]) -> dict:
    """The report's row of new site ``site`` merged from the ``others`` devices."""
    from qcore.edge.backbone import solve_head
    from qcore.edge.device import Device
    from qcore.edge.fleet import learnt_part, merge_fleet, merge_shares, weigh_as
    from qcore.edge.head import batch_stats, combine

    sha, total = meta["sha256"], float(deployed.head.count.sum())
    merged = merge_fleet(deployed, [s.state for s in others], None, sha)
    feats = np.concatenate([s.held[0] for s in others])
    labels = np.concatenate([s.held[1] for s in others])
    central = replace(
        deployed, head=combine(deployed.head, batch_stats(feats, labels, deployed.head.n_classes))
    )
    prior = weigh_as(merged, total)
    fleet_before, pred_before = accuracy(merged, site.test)
    central_acc, pred_central = accuracy(central, site.test)

    def after(start) -> float:
        dev = Device(start)
        for X, y in site.stream:
            dev.step(X, y, normalized=True)
        return accuracy(dev.art, site.test, start)[0]

    private = {}
    for form in FORMS:
        for tag in ("clean", *(f"eps{e}" for e in EPSILONS)):
            eps = None if tag == "clean" else float(tag[3:])
            if form == "means-whitened-4":
                privacy = None if eps is None else (eps, DELTA, meta["clip_means"])
                art = means_art(deployed, others, True, meta["clip_means"], privacy, sha)
            elif form == "centred-held":
                shares = centred_held_shares(deployed, others, meta["clip_held"], eps, sha)
                art = merge_shares(deployed, shares, None, sha)
            else:
                art = merge_shares(deployed, [s.shares[f"{form}-{tag}"] for s in others], None, sha)
            key = f"{form}_{'clipped' if tag == 'clean' else tag}"
            private[key] = accuracy(weigh_as(art, total), site.test)[0]
    solved = solve_head(deployed.head, deployed.device)
    clients = [(s.held[0].astype(np.float64), s.held[1]) for s in others]
    fed = {}
    for m in LR_MULTS:
        for r, (w, b) in fedavg(solved.weight, solved.bias, clients, m / meta["smooth"], 0).items():
            fed[f"fedavg_m{m:g}_r{r}"] = linear_accuracy(w, b, site.test_feats, site.test[1])
    part = learnt_part(deployed, site.state)
    assert merged.head is not None and central.head is not None
    return {
        "dataset": meta["config"]["dataset"], "site": site.subject, "n_test": len(site.test[1]),
        "deployed": accuracy(deployed, site.test)[0],
        "own": accuracy(site.state, site.test, deployed)[0],
        "fleet_before": fleet_before, "fleet_after": after(prior), "central": central_acc,
        "fleet_after_pooled": after(merged),
        "pred_diff": int((pred_before != pred_central).sum()),
        "stats_diff": stats_diff(merged.head, central.head),
        "bytes32": part.nbytes, "bytes16": part.nbytes // 2, "resets": site.resets,
        "clip": meta["clip"], "clip_centred": meta["clip_centred"], "clip_held": meta["clip_held"],
        "clip_means": meta["clip_means"],
        "clip_resets": site.clip_resets, **private,
        "fedavg_r0": linear_accuracy(solved.weight, solved.bias, site.test_feats, site.test[1]),
        **fed, "fedavg_bytes_round": 2 * 4 * (solved.weight.size + solved.bias.size),
    }  # fmt: skip


def pair_rows(folder: Path) -> list[dict]:
    """Every site's row of the pair in ``folder`` (all its devices done), cached in
    ``sites.json`` for the same devices and deployed artifact."""
    from qcore.edge.artifact import load_artifact

    meta = read_meta(folder)
    assert meta is not None
    key = {"deployed": meta["sha256"], "subjects": meta["subjects"], "fields": list(FIELDS)}
    cached = folder / "sites.json"
    if cached.is_file():
        got = json.loads(cached.read_text())
        if got.get("key") == key:
            return got["rows"]
    deployed = load_artifact(folder / "deployed.qcore")
    meta = {
        **meta,
        "clip_held": held_out_clip(folder, deployed),
        "clip_means": means_clip(folder, deployed),
    }
    sites = [load_site(folder, s) for s in meta["subjects"]]
    rows = [site_row(deployed, meta, s, [o for o in sites if o is not s]) for s in sites]
    write_json_atomic(cached, {"key": key, "rows": rows})
    return rows
