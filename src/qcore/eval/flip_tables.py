"""QCore's flip tables (``flips.md`` of the benchmark report): the flip network's held-out
agreement with its teacher, and how often the device's guarded flip passes moved codes
over the stream, from the report's tidy rows (:func:`qcore.eval.report.collect`)."""

from __future__ import annotations

import numpy as np

from qcore.eval.metrics import groups

QCORE = "qcore"  # the method whose rows feed the flip tables


def _qcore_rows(rows: list[dict]) -> dict[tuple, list[dict]]:
    """The ``qcore`` rows with a flip-network report, by (dataset, scenario, bits)."""
    reps = [r for r in rows if r["method"] == QCORE and "flipnet" in r]
    return groups(reps, ("dataset", "scenario", "bits"))


def _avg(reports: list[dict], who: str, key: str) -> str:
    """Mean of ``report[who][key]`` over flip-network reports, 3 decimals."""
    return f"{np.mean([r[who][key] for r in reports]):.3f}"


def flipnet_table(rows: list[dict]) -> str:
    """Held-out agreement of the flip network with its teacher, mean over seeds, per
    dataset / scenario / bits (Markdown); empty when no ``qcore`` row has the report."""
    by = _qcore_rows(rows)
    if not by:
        return ""
    arp = ("agreement", "flip_recall", "flip_precision")
    lines = [
        "| dataset | scenario | bits | teacher moves | flip net: agreement / recall / precision "
        "| all-zero: agreement | random, same sparsity: agreement / recall / precision |",
        "|---|---|---|---|---|---|---|",
    ]
    for (d, sc, b), g in sorted(by.items()):
        reps = [r["flipnet"] for r in g]
        moved = np.mean([r["teacher_flip_rate"] for r in reps])
        lines.append(
            f"| {d} | {sc} | {b} | {100 * moved:.1f}% "
            f"| {' / '.join(_avg(reps, 'flipnet', k) for k in arp)} "
            f"| {_avg(reps, 'all_zero', 'agreement')} "
            f"| {' / '.join(_avg(reps, 'random', k) for k in arp)} |"
        )
    return "\n".join(lines) + "\n"


def flip_activity_table(rows: list[dict], steps: list[dict]) -> str:
    """How the device's guarded flip passes behaved over the stream, all seeds pooled:
    per dataset / scenario / bits, the steps with accepted flips (codes moved and the step
    not rolled back) out of all steps that report ``flips``, and the codes moved per such
    step as % of the model's codes (Markdown); empty when no ``qcore`` step reports
    ``flips``. The model's codes are those the ``flipnet`` report counted, per held-out
    teacher round of the runner's :class:`qcore.cloud.pipeline.FlipTraining`."""
    by = _qcore_rows(rows)
    if not by:
        return ""
    from qcore.cloud.pipeline import FlipTraining

    held_out = FlipTraining().held_out
    by_step = groups(steps, ("dataset", "scenario", "bits", "method", "seed"))
    activity: dict[tuple, list[tuple[int, list[float]]]] = {}
    for key, g in by.items():
        for r in g:
            ss = by_step.get((*key, QCORE, r["seed"]), [])
            flips = [0 if s.get("rolled_back") else s["flips"] for s in ss if "flips" in s]
            n_codes = r["flipnet"]["n_weights"] // held_out
            if flips and n_codes > 0:
                activity.setdefault(key, []).append((n_codes, flips))
    if not activity:
        return ""
    lines = [
        "| dataset | scenario | bits | steps with accepted flips | code moves per such step, "
        "summed over its passes, as % of the model's codes: mean (range) |",
        "|---|---|---|---|---|",
    ]
    for (d, sc, b), runs in sorted(activity.items()):
        moved = [100 * f / n for n, flips in runs for f in flips if f > 0]
        n_steps = sum(len(flips) for _, flips in runs)
        share = f"{np.mean(moved):.0f}% ({min(moved):.0f}-{max(moved):.0f}%)" if moved else "-"
        lines.append(f"| {d} | {sc} | {b} | {len(moved)} / {n_steps} | {share} |")
    return "\n".join(lines) + "\n"


def flips_markdown(rows: list[dict], steps: list[dict]) -> str:
    """The text of ``flips.md``: the two flip tables that have rows; empty if neither."""
    agreement, activity = flipnet_table(rows), flip_activity_table(rows, steps)
    if not agreement and not activity:
        return ""
    parts = ["# QCore's flips\n"]
    if agreement:
        parts.append(
            "Flip network against its teacher on the held-out teacher rounds (mean over "
            "seeds); teacher moves: share of codes the teacher moved.\n\n" + agreement
        )
    if activity:
        parts.append(
            "Device flips over the stream, all seeds pooled; a step the device's guard "
            "rolled back counts as a step without accepted flips.\n\n" + activity
        )
    return "\n".join(parts)
