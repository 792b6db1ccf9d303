"""The validation of docs/fleet-privacy.md: private-share candidates on the even-numbered sites.

From the devices of a fleet preset run (:mod:`qcore.eval.fleet_bench`, already computed
under the pair's folder: their held windows' features and labels, their test sets), each
even-numbered subject in turn is the new site and every other subject a device. Per site
and candidate, the merged shares' accuracy on the site's target test set before its labels,
without noise (``NAME_clean``) and at epsilon 4 (``NAME_eps4``), against the unclipped merge
without noise (``fleet_before``). Candidates (:data:`CANDIDATES`):

* ``centred-held``: the centred share (:func:`qcore.edge.share.make_share` with the deployed
  class means as centres), the clip the median of ``|x - μ_y|`` over the source subject's
  held-out windows (the scenario's ``source_test``);
* ``projected``, ``projected-max``: :mod:`qcore.edge.share_forms` in the deployed head's
  discriminant subspace (``r = K - 1``), the clip the median / the largest ``|p|`` over the
  same held-out windows.

The third rule's candidates (:data:`THIRD`, the default): means-only shares
(:mod:`qcore.edge.share_means`) in all ``D`` whitened directions (``means-whitened-k``) or the
``K - 1`` discriminant ones (``means-projected-k``), the clip ``k`` times the median ``|p|``
over the source subject's held-out windows; its references without clip or noise:
``means-only`` and ``means-only-projected`` (:data:`CLEAN_REFERENCES`).

References, for reading only: ``centred`` and ``pooled`` (the shares the fleet preset's
devices wrote: ``share-centred-*`` and ``share-fleet-*``). A device's statistics come from
the windows it holds (no user-guard reset on any stream so far); noise is seeded by the
device's subject number. :func:`pick` applies a rule's decision to the rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qcore.eval.fleet_sites import (
    DELTA,
    Site,
    accuracy,
    centred_held_shares,
    held_out_clip,
    load_site,
    means_art,
    means_clip,
    pair_rows,
    read_meta,
    source_held_out,
)

SECOND = ("centred-held", "projected", "projected-max")
THIRD = tuple(f"means-whitened-{k}" for k in (1, 2, 4)) + tuple(
    f"means-projected-{k}" for k in (2, 4, 8)
)
RULES = {2: SECOND, 3: THIRD}
CLEAN_REFERENCES = ("means-only", "means-only-projected")  # without clip or noise
REFERENCES = {"centred": "centred", "pooled": "fleet"}
EPSILON, TIE = 4.0, 0.005


def parts(name: str) -> int:
    """How many parts a form's share sends (counts, sums and, but for means-only, ``Q``)."""
    return 2 if name.startswith("means-") else 3


def held_out_clips(folder: Path, deployed) -> dict[str, float]:
    """Each candidate's clip from the source subject's held-out windows."""
    from qcore.edge.share_forms import discriminant_subspace, project

    x, y = source_held_out(folder, deployed)
    head, shrink = deployed.head, deployed.device.head_shrinkage
    p_norms = np.linalg.norm(project(x, y, head, discriminant_subspace(head, shrink)), axis=1)
    w_median = means_clip(folder, deployed, 1.0)
    p_median = float(np.median(p_norms))
    return {
        "centred-held": held_out_clip(folder, deployed),
        "projected": p_median,
        "projected-max": float(p_norms.max()),
        **{f"means-whitened-{k}": k * w_median for k in (1, 2, 4)},
        **{f"means-projected-{k}": k * p_median for k in (2, 4, 8)},
        "n_held_out": float(len(y)),
    }


def candidate_art(name: str, deployed, others: list[Site], clip: float, eps: float | None, sha):
    """The merged artifact of candidate ``name`` from the ``others`` devices."""
    from qcore.edge.fleet import merge_shares

    privacy = None if eps is None else (eps, DELTA, clip)
    if name == "centred-held":
        return merge_shares(
            deployed, centred_held_shares(deployed, others, clip, eps, sha), None, sha
        )
    if name.startswith("means-"):
        return means_art(deployed, others, "whitened" in name, clip, privacy, sha)
    return projected_art(deployed, others, clip, privacy, sha)


def projected_art(deployed, others: list[Site], clip: float | None, privacy, sha):
    """The merged artifact of the ``others`` devices' projected shares (``r = K - 1``),
    clipped to ``clip`` (None: unclipped), private under ``privacy`` (None: no noise)."""
    from qcore.edge.fleet import grow_learnt, merge_parts
    from qcore.edge.share_forms import discriminant_subspace, projected_share, projected_stats

    head, classes = deployed.head, deployed.class_names
    sub = discriminant_subspace(head, deployed.device.head_shrinkage)
    shares = [
        projected_share(s.held[0], s.held[1], head, sub, classes, sha, privacy, s.subject, clip)
        for s in others
    ]
    stats = projected_stats(shares, head, sub, classes)
    return merge_parts(deployed, [(grow_learnt(stats, 0), tuple(classes))])


def validate_pair(folder: Path, rule: int = 3) -> list[dict]:
    """One row per even-numbered site of the pair in ``folder``: ``rule``'s candidates (and,
    for the third rule, its references without clip or noise)."""
    from qcore.edge.artifact import load_artifact
    from qcore.edge.fleet import merge_fleet, merge_shares, weigh_as

    meta = read_meta(folder)
    assert meta is not None
    deployed = load_artifact(folder / "deployed.qcore")
    assert deployed.head is not None
    sha, total = meta["sha256"], float(deployed.head.count.sum())
    clips = held_out_clips(folder, deployed)
    sites = [load_site(folder, s) for s in meta["subjects"]]
    rows = []
    for site in sites:
        if site.subject % 2:
            continue
        others = [o for o in sites if o is not site]
        merged = merge_fleet(deployed, [o.state for o in others], None, sha)
        row: dict = {"dataset": meta["config"]["dataset"], "site": site.subject,
                     "fleet_before": accuracy(merged, site.test)[0], **clips}  # fmt: skip
        for ref, form in REFERENCES.items():
            for tag in ("clean", "eps4"):
                art = merge_shares(deployed, [o.shares[f"{form}-{tag}"] for o in others], None, sha)
                row[f"{ref}_{tag}"] = accuracy(weigh_as(art, total), site.test)[0]
        for name in RULES[rule]:
            for eps in (None, EPSILON):
                art = candidate_art(name, deployed, others, clips[name], eps, sha)
                key = f"{name}_{'clean' if eps is None else 'eps4'}"
                row[key] = accuracy(weigh_as(art, total), site.test)[0]
        for name in CLEAN_REFERENCES if rule == 3 else ():
            art = means_art(deployed, others, name == "means-only", None, None, sha)
            row[f"{name}_clean"] = accuracy(weigh_as(art, total), site.test)[0]
        rows.append(row)
    return rows


def gaps(rows: list[dict], name: str, tag: str = "eps4") -> dict[str, float]:
    """Per dataset, the median over its sites of ``NAME_TAG`` - ``fleet_before``."""
    sets = sorted({r["dataset"] for r in rows})
    return {
        d: float(
            np.median([r[f"{name}_{tag}"] - r["fleet_before"] for r in rows if r["dataset"] == d])
        )
        for d in sets
    }


def pick(rows: list[dict], candidates: tuple[str, ...]) -> tuple[str, bool]:
    """A rule's decision: the candidate with the largest minimum ``gap`` over the datasets
    (within :data:`TIE` of the best: fewer parts, then the earlier in ``candidates``), and
    whether it is adopted (its minimum larger than ``centred``'s in the same rows)."""
    mins = {n: min(gaps(rows, n).values()) for n in candidates}
    best = max(mins.values())
    tied = [n for n in candidates if mins[n] >= best - TIE - 1e-9]
    chosen = min(tied, key=lambda n: (parts(n), candidates.index(n)))
    return chosen, mins[chosen] > min(gaps(rows, "centred").values())


def summary_lines(rows: list[dict], candidates: tuple[str, ...] = THIRD) -> list[str]:
    """The decision table: per candidate and reference, the parts sent, ``gap`` per dataset
    (median over sites of epsilon 4 - the unclipped merge without noise; for the references
    without clip or noise, of their accuracy), their minimum, the median accuracies without
    noise / at epsilon 4; then the rule's pick."""
    sets = sorted({r["dataset"] for r in rows})
    head = "| form | parts | " + " | ".join(f"gap {d}" for d in sets) + " | min | "
    head += " | ".join(f"{d} no noise / eps 4" for d in sets) + " |"
    lines = [head, "|" + "---|" * (3 + 2 * len(sets))]
    clean_refs = [n for n in CLEAN_REFERENCES if f"{n}_clean" in rows[0]]
    for name in (*candidates, *REFERENCES, *clean_refs):
        noisy = name not in CLEAN_REFERENCES
        got = list(gaps(rows, name, "eps4" if noisy else "clean").values())
        accs = []
        for d in sets:
            mine = [r for r in rows if r["dataset"] == d]
            clean = float(np.median([r[f"{name}_clean"] for r in mine]))
            eps4 = f"{np.median([r[f'{name}_eps4'] for r in mine]):.3f}" if noisy else "-"
            accs.append(f"{clean:.3f} / {eps4}")
        cells = [str(parts(name))] + [f"{g:+.3f}" for g in got] + [f"{min(got):+.3f}"] + accs
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    chosen, adopted = pick(rows, candidates)
    lines.append(f"pick: {chosen}, {'adopted' if adopted else 'not adopted'}")
    return lines


def projection_gap(folder: Path) -> float:
    """A diagnostic, not a candidate: the median over the even-numbered sites of the
    projected lift without clip or noise minus the unclipped merge (the cost of the
    subspace alone)."""
    from qcore.edge.artifact import load_artifact
    from qcore.edge.fleet import merge_fleet, weigh_as

    meta = read_meta(folder)
    assert meta is not None
    deployed = load_artifact(folder / "deployed.qcore")
    assert deployed.head is not None
    sha = meta["sha256"]
    sites = [load_site(folder, s) for s in meta["subjects"]]
    gaps = []
    for site in (s for s in sites if s.subject % 2 == 0):
        others = [o for o in sites if o is not site]
        art = projected_art(deployed, others, None, None, sha)
        lifted = accuracy(weigh_as(art, float(deployed.head.count.sum())), site.test)[0]
        merged = merge_fleet(deployed, [o.state for o in others], None, sha)
        gaps.append(lifted - accuracy(merged, site.test)[0])
    return float(np.median(gaps))


def central_share(clean: list, head, classes: tuple[str, ...], sha: str, privacy, centred: bool):
    """One share of the fleet: the ``clean`` shares (no noise; ``centred`` or not) pooled
    over the deployed ``head``'s ``classes``, then made private under ``privacy``
    ``(epsilon, delta, clip)`` once (seed 0), as a trusted aggregator, or secure
    aggregation of shares each carrying a part of that noise, would release it for the
    same guarantee per window."""
    from qcore.edge.share import centres, make_share, pooled_stats

    stats = pooled_stats(clean, head, classes)
    centre = centres(head, len(classes)) if centred else None
    return make_share(stats, classes, sha, privacy, 0, centre)


def central_art(form: str, deployed, others: list[Site], clip: float, eps: float, sha):
    """A diagnostic, not a candidate: the merge of the ``others`` devices' clean ``form``
    shares (``fleet``: clipped features; ``centred``) with the noise of ``(eps, DELTA)``
    added once to the fleet's pooled sums (:func:`central_share`) instead of to each."""
    from qcore.edge.fleet import merge_shares

    clean = [o.shares[f"{form}-clean"] for o in others]
    classes = tuple(deployed.class_names)
    one = central_share(clean, deployed.head, classes, sha, (eps, DELTA, clip), form == "centred")
    return merge_shares(deployed, [one], None, sha)


def central_rows(folder: Path) -> list[dict]:
    """Per site (all of them, as the acceptance counts): from the preset's rows
    (:func:`qcore.eval.fleet_sites.pair_rows`) ``fleet_before`` and, for the shares the
    devices wrote (``pooled``, ``centred``), the merge with the noise on each share
    (``NAME_eps4``); then with the noise added once (``NAME_centralE``, epsilon 1, 2, 4, 8)."""
    from qcore.edge.artifact import load_artifact
    from qcore.edge.fleet import weigh_as
    from qcore.eval.fleet_sites import EPSILONS

    meta = read_meta(folder)
    assert meta is not None
    deployed = load_artifact(folder / "deployed.qcore")
    sha, total = meta["sha256"], float(deployed.head.count.sum())
    clips = {"fleet": meta["clip"], "centred": meta["clip_centred"]}
    sites = [load_site(folder, s) for s in meta["subjects"]]
    rows = []
    for site, preset in zip(sites, pair_rows(folder), strict=True):
        others = [o for o in sites if o is not site]
        row: dict = {k: preset[k] for k in ("dataset", "site", "fleet_before")}
        for ref, form in REFERENCES.items():
            row[f"{ref}_eps4"] = preset[f"{form}_eps4"]
            for eps in EPSILONS:
                art = central_art(form, deployed, others, clips[form], float(eps), sha)
                row[f"{ref}_central{eps}"] = accuracy(weigh_as(art, total), site.test)[0]
        rows.append(row)
    return rows
