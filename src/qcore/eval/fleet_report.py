"""The report of the ``fleet`` preset: ``sites.csv``, ``fleet.md`` (the tables against
issue 26's acceptance) and ``fleet.png`` (the privacy curve), from the rows of
:mod:`qcore.eval.fleet_sites`."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from qcore.eval.fleet_sites import BATCH, DELTA, EPSILONS, FIELDS, FORMS, LR_MULTS, ROUNDS


def write_fleet_report(out: Path, rows: list[dict]) -> None:
    """``sites.csv``, ``fleet.md`` and ``fleet.png`` of ``rows`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "sites.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in r.items()})
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    by = {d: [r for r in rows if r["dataset"] == d] for d in datasets}
    (out / "fleet.md").write_text("\n".join(summary(d, by[d]) for d in datasets))
    plot_privacy(by, out / "fleet.png")


def _median(rows: list[dict], key: str) -> float:
    return float(np.median([r[key] for r in rows]))


def summary(dataset: str, rows: list[dict]) -> str:
    n = len(rows)
    gain = np.array([r["fleet_before"] - r["deployed"] for r in rows])
    to_central = np.array([r["fleet_before"] - r["central"] for r in rows])
    after = np.array([r["fleet_after"] - r["own"] for r in rows])
    pooled = np.array([r["fleet_after_pooled"] - r["own"] for r in rows])
    beats, holds = int((gain > 0).sum()), int((after >= 0).sum())
    cols = ("deployed", "own", "fleet_before", "fleet_after", "central")
    ok_before = np.median(gain) > 0 and beats >= 0.8 * n and np.abs(to_central).max() <= 0.01
    lines = [
        f"## {dataset}: {n} sites, each merged with the other {n - 1} devices",
        "",
        "| | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
        "| median accuracy | " + " | ".join(f"{_median(rows, k):.3f}" for k in cols) + " |",
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
        f"- bytes a device sends (learnt counts, means, scatter): "
        f"{_median(rows, 'bytes32'):,.0f} as float32, {_median(rows, 'bytes16'):,.0f} as "
        "float16 (median);",
        f"- user-guard resets over all devices' streams: {sum(r['resets'] for r in rows)};",
        f"- acceptance: before any label, beats deployed at the median and on >= 80% of sites, "
        f"within 1 point of central: {'holds' if ok_before else 'does not hold'}; after the "
        f"site's stream at least as good as its own device: "
        f"{'holds' if holds == n else f'holds on {holds}/{n} sites'}.",
    ]
    return "\n".join(lines + privacy_lines(rows) + fedavg_lines(rows)) + "\n"


def privacy_lines(rows: list[dict]) -> list[str]:
    base = _median(rows, "fleet_before")
    lines = [
        "",
        f"### Privacy (delta {DELTA:g}; clips: C = {rows[0]['clip']:.3f}, centred C_c = "
        f"{rows[0]['clip_centred']:.3f}, held-out centred C_h = {rows[0]['clip_held']:.3f}, "
        f"means-only whitened C_m = {rows[0]['clip_means']:.3f}); "
        f"merge without noise, unclipped: {base:.3f}",
        "",
        "| share | clipped, no noise | "
        + " | ".join(f"epsilon {e}" for e in EPSILONS[::-1])
        + " | epsilon 4 - unclipped merge |",
        "|---|---|" + "---|" * len(EPSILONS) + "---|",
    ]
    for form, label in FORMS.items():
        cols = [f"{form}_clipped", *(f"{form}_eps{e}" for e in EPSILONS[::-1])]
        gap = float(np.median([r[f"{form}_eps4"] - r["fleet_before"] for r in rows]))
        lines.append(
            f"| {label} | " + " | ".join(f"{_median(rows, k):.3f}" for k in cols)
            + f" | {gap:+.3f} (median of differences) |"
        )  # fmt: skip
    best = max(_median(rows, f"{f}_eps4") for f in FORMS)
    lines += [
        "",
        f"- user-guard resets over the clipped streams: {sum(r['clip_resets'] for r in rows)};",
        f"- acceptance: at epsilon 4 the median target accuracy within 2 points of the merge "
        f"without noise ({base:.3f}): {'holds' if best >= base - 0.02 else 'does not hold'} "
        f"(best form {best:.3f}).",
    ]
    return lines


def fedavg_lines(rows: list[dict]) -> list[str]:
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
        accs = [_median(rows, f"fedavg_m{m:g}_r{k}") for k in ROUNDS]
        lines.append(f"| {m:g} | " + " | ".join(f"{a:.3f}" for a in accs) + " |")
    lines += [
        "| bytes per device (down + up) | "
        + " | ".join(f"{k * per_round:,}" for k in ROUNDS)
        + " |",
        "",
        f"- R = 0 (the deployed head as a linear map): median {_median(rows, 'fedavg_r0'):.3f} "
        f"(deployed: {_median(rows, 'deployed'):.3f});",
        f"- one-round merge: median {_median(rows, 'fleet_before'):.3f}, "
        f"{_median(rows, 'bytes32'):,.0f} bytes up once (float32; the merged statistics down "
        "once, about as many).",
    ]
    return lines


def plot_privacy(by: dict[str, list[dict]], path: Path) -> None:
    """Median accuracy against epsilon per dataset and share form, with the deployed
    model, the merge without noise and the central head as lines."""
    from qcore.eval.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, max(1, len(by)), figsize=(5 * max(1, len(by)), 3.6), squeeze=False)
    for ax, (dataset, rows) in zip(axes[0], by.items(), strict=False):
        for form, label in FORMS.items():
            ax.plot(EPSILONS, [_median(rows, f"{form}_eps{e}") for e in EPSILONS], "o-",
                    label=label)  # fmt: skip
        for key, style in (("fleet_before", "k--"), ("central", "k:"), ("deployed", "r-.")):
            ax.axhline(_median(rows, key), linestyle=style[1:], color=style[0], label=key)
        ax.set_xscale("log", base=2)
        ax.set_xticks(EPSILONS, [str(e) for e in EPSILONS])
        ax.set_xlabel("epsilon (delta 1e-5)")
        ax.set_ylabel("median target accuracy, new site")
        ax.set_title(f"{dataset}: {len(rows)} sites")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
