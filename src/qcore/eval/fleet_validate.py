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

References, for reading only: ``centred`` and ``pooled`` (the shares the fleet preset's
devices wrote: ``share-centred-*`` and ``share-fleet-*``). A device's statistics come from
the windows it holds (no user-guard reset on any stream so far); noise is seeded by the
device's subject number.
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
    read_meta,
    source_held_out,
)

CANDIDATES = ("centred-held", "projected", "projected-max")
REFERENCES = {"centred": "centred", "pooled": "fleet"}
EPSILON = 4.0


def held_out_clips(folder: Path, deployed) -> dict[str, float]:
    """Each candidate's clip from the source subject's held-out windows."""
    from qcore.edge.share_forms import discriminant_subspace, project

    x, y = source_held_out(folder, deployed)
    head = deployed.head
    sub = discriminant_subspace(head, deployed.device.head_shrinkage)
    p_norms = np.linalg.norm(project(x, y, head, sub), axis=1)
    return {
        "centred-held": held_out_clip(folder, deployed),
        "projected": float(np.median(p_norms)),
        "projected-max": float(p_norms.max()),
        "n_held_out": float(len(y)),
    }


def candidate_art(name: str, deployed, others: list[Site], clip: float, eps: float | None, sha):
    """The merged artifact of candidate ``name`` from the ``others`` devices."""
    from qcore.edge.fleet import merge_shares

    if name == "centred-held":
        return merge_shares(
            deployed, centred_held_shares(deployed, others, clip, eps, sha), None, sha
        )
    return projected_art(deployed, others, clip, None if eps is None else (eps, DELTA, clip), sha)


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


def validate_pair(folder: Path) -> list[dict]:
    """One row per even-numbered site of the pair in ``folder``."""
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
        for name in CANDIDATES:
            for eps in (None, EPSILON):
                art = candidate_art(name, deployed, others, clips[name], eps, sha)
                key = f"{name}_{'clean' if eps is None else 'eps4'}"
                row[key] = accuracy(weigh_as(art, total), site.test)[0]
        rows.append(row)
    return rows


def summary_lines(rows: list[dict]) -> list[str]:
    """The decision table: per candidate and reference, the parts sent, ``gap`` per dataset
    (median over sites of epsilon 4 - the unclipped merge without noise), their minimum, and
    the median accuracies without noise / at epsilon 4."""
    sets = sorted({r["dataset"] for r in rows})
    head = "| form | " + " | ".join(f"gap {d}" for d in sets) + " | min | "
    head += " | ".join(f"{d} no noise / eps 4" for d in sets) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(sets))]
    for name in (*CANDIDATES, *REFERENCES):
        gaps, accs = [], []
        for d in sets:
            mine = [r for r in rows if r["dataset"] == d]
            gaps.append(float(np.median([r[f"{name}_eps4"] - r["fleet_before"] for r in mine])))
            clean, eps4 = (np.median([r[f"{name}_{t}"] for r in mine]) for t in ("clean", "eps4"))
            accs.append(f"{clean:.3f} / {eps4:.3f}")
        cells = [f"{g:+.3f}" for g in gaps] + [f"{min(gaps):+.3f}"] + accs
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
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
