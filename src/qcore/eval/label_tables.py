"""``labels.md``: final target accuracy against the share of labelled windows, per label
policy (which windows got the labels, :mod:`qcore.eval.label_requests`).

A row of the report (:func:`qcore.eval.report.collect`) carries its ``label_fraction`` and
``label_policy``. At fractions 0 and 1 no policy chooses anything (none or every window
carries its label): those rows belong to every policy (:func:`policy_rows`).
"""

from __future__ import annotations

import numpy as np

from qcore.config import LABEL_POLICIES
from qcore.eval.metrics import groups

MIN_FULL_GAIN = 0.02  # a cell whose full-label gain over none is smaller keeps no share


def policies_of(rows: list[dict]) -> list[str]:
    """The label policies of the rows with few labels, in :data:`LABEL_POLICIES`' order
    (``["random"]`` when none chose: fractions 0 and 1 alone)."""
    found = {r.get("label_policy", "random") for r in rows if 0.0 < r["label_fraction"] < 1.0}
    return [p for p in LABEL_POLICIES if p in found] or ["random"]


def policy_rows(rows: list[dict], policy: str) -> list[dict]:
    """The rows of ``policy``: its own, and those at fractions 0 and 1 (every policy's)."""
    return [
        r
        for r in rows
        if r["label_fraction"] in (0.0, 1.0) or r.get("label_policy", "random") == policy
    ]


def kept_shares(rows: list[dict], method: str) -> dict[float, list[float]]:
    """Per label fraction, per cell (dataset, pair, bit-width, seed) of ``rows`` (one
    policy's): the share of ``method``'s full-label gain over ``none`` it keeps,
    ``(acc_f - none_f) / (acc_1 - none_1)`` on final target accuracy; cells whose
    full-label gain is under :data:`MIN_FULL_GAIN` are left out."""
    acc = {k: g[0]["target_acc"] for k, g in groups(
        rows, ("dataset", "scenario", "bits", "seed", "base_method", "label_fraction")
    ).items()}  # fmt: skip
    out: dict[float, list[float]] = {}
    for (d, sc, b, seed, m, f), a in sorted(acc.items()):
        full = acc.get((d, sc, b, seed, m, 1.0), np.nan) - acc.get(
            (d, sc, b, seed, "none", 1.0), np.nan
        )
        none = acc.get((d, sc, b, seed, "none", f), np.nan)
        if m == method and np.isfinite(full) and full >= MIN_FULL_GAIN and np.isfinite(none):
            out.setdefault(f, []).append((a - none) / full)
    return out


def _group_tables(rows: list[dict], fractions: list[float], policies: list[str]) -> list[str]:
    """Per dataset, pair and bit-width: a row per method and policy, a column per fraction
    (mean over seeds), then the gain each keeps."""
    out = []
    head = " | ".join(f"{f:g}" for f in fractions)
    for (d, sc, b), rs in sorted(groups(rows, ("dataset", "scenario", "bits")).items()):
        methods = sorted({r["base_method"] for r in rs})
        out.append(
            f"## {d} {sc}, {b} bits\n\n| method | policy | {head} |\n"
            f"|---|---|{'---|' * len(fractions)}"
        )
        kept_lines = []
        for p in policies:
            by = groups(policy_rows(rs, p), ("base_method", "label_fraction"))
            acc = {k: float(np.mean([r["target_acc"] for r in g])) for k, g in by.items()}
            for m in methods:
                cells = " | ".join(f"{acc[m, f]:.3f}" if (m, f) in acc else "-" for f in fractions)
                if m != "none" or p == policies[0]:  # none learns nothing: one row
                    shown = "any" if m == "none" and len(policies) > 1 else p
                    out.append(f"| {m} | {shown} | {cells} |")
                full = acc.get((m, 1.0), np.nan) - acc.get(("none", 1.0), np.nan)
                if m == "none" or not np.isfinite(full) or full <= 0:
                    continue
                kept = [
                    (acc.get((m, f), np.nan) - acc.get(("none", f), np.nan)) / full
                    for f in fractions
                ]
                shares = " | ".join("-" if not np.isfinite(k) else f"{100 * k:.0f}%" for k in kept)
                kept_lines.append(f"| {m}: gain kept | {p} | {shares} |")
        out += kept_lines + [""]
    return out


def _mean(values: list) -> str:
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    return f"{np.mean(vals):.3f}" if vals else "-"


def _overall(rows: list[dict], fractions: list[float], policies: list[str]) -> list[str]:
    """Per method, policy and fraction below 1: the mean over cells of the gain kept
    (:func:`kept_shares`), and the mean final target and source accuracy and classes of
    the stream never given a label."""
    out = [
        "## Per label policy, mean over pairs, bit-widths and seeds\n\n"
        f"Gain kept: mean over cells (pair, bit-width, seed) of the share of the method's "
        f"full-label gain over `none` it keeps (cells with a full-label gain under "
        f"{MIN_FULL_GAIN} left out); unlabelled classes: classes of the stream of which no "
        "window carried a label (mean over cells).\n\n"
        "| method | policy | fraction | gain kept | cells | target | source "
        "| unlabelled classes |\n|---|---|---|---|---|---|---|---|"
    ]
    methods = sorted({r["base_method"] for r in rows} - {"none"})
    for m in methods:
        for p in policies:
            mine = policy_rows(rows, p)
            shares = kept_shares(mine, m)
            by = groups([r for r in mine if r["base_method"] == m], ("label_fraction",))
            for f in (f for f in fractions if f < 1.0 and (f,) in by):
                g, s = by[(f,)], shares.get(f, [])
                kept = f"{100 * np.mean(s):.0f}%" if s else "-"
                out.append(
                    f"| {m} | {p} | {f:g} | {kept} | {len(s)} "
                    f"| {_mean([r['target_acc'] for r in g])} "
                    f"| {_mean([r['source_acc'] for r in g])} "
                    f"| {_mean([r.get('classes_never_labelled') for r in g])} |"
                )
    return out + [""]


def labels_markdown(rows: list[dict]) -> str:
    """The text of ``labels.md`` when the rows hold streams with few labels: per dataset,
    pair and bit-width, a row per method and label policy and a column per label fraction
    (final target accuracy, mean over seeds), then for every method the share of its
    full-label gain over ``none`` it keeps at each fraction; then per method, policy and
    fraction that share and the accuracies over all cells. Empty otherwise."""
    fractions = sorted({r["label_fraction"] for r in rows}, reverse=True)
    if fractions == [1.0] or not fractions:
        return ""
    policies = policies_of(rows)
    intro = (
        "# Few labels: final target accuracy against the share of labelled windows\n\n"
        "Mean over seeds. Kept: the method's gain over `none` at that fraction as a share of "
        "its gain with every label (both against `none` at the same fraction). Policy: which "
        "windows carried the labels (at fractions 0 and 1 every policy's row is the same "
        "cells).\n"
    )
    return "\n".join(
        [intro, *_group_tables(rows, fractions, policies), *_overall(rows, fractions, policies)]
    )
