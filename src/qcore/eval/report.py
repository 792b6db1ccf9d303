"""The benchmark report: tidy rows from the finished cells, CSV files and Markdown tables.

From the cells' ``results.json`` the report writes:

* ``DIR/results.csv``: one tidy row per (dataset, scenario, bits, method, seed);
* ``DIR/stream.csv``: one row per stream step of each of those;
* ``DIR/results.md``: mean ± std over seeds per dataset / scenario / bits / method;
* ``DIR/summary.md``: per (dataset, scenario) a row per method and a column per bit-width;
* ``DIR/flips.md``, only when ``qcore`` rows carry them: the flip network's held-out
  agreement with its teacher, and how often the device's guarded flip passes moved codes
  over the stream (:mod:`qcore.eval.flip_tables`);
* ``DIR/pairs.md``, only when a dataset has at least :data:`MIN_PAIRS` pairs: per method
  the distribution over pairs of the final target accuracy and of its gain over ``none``
  (quantiles, pairs gaining and losing), and the cells' wall times;
* ``DIR/labels.md`` (:mod:`qcore.eval.label_tables`, per label policy) and
  ``DIR/newclass.md``, only for grids over label fractions or classes held out of the cloud.

Older results.json files (``NaN`` for a missing value, ``seconds`` and ``cloud_seconds``)
read like current ones (``null``, ``step_ms``, ``cloud_s``); their rows lack the
calibration (:data:`CALIBRATION`), which the tables leave empty (``-`` in Markdown). The
plots drawn from the same rows are in :mod:`qcore.eval.plots`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from qcore.config import RunConfig
from qcore.eval.flip_tables import flips_markdown
from qcore.eval.grid import cell_dir
from qcore.eval.label_tables import labels_markdown
from qcore.eval.metrics import groups, mean_std

# how well the method's confidence is calibrated (qcore.eval.calibration); None in rows
# of results.json files written before the runner measured it
CALIBRATION = ("target_ece_before", "target_ece", "source_ece_before", "source_ece",
               "target_auroc_before", "target_auroc_novelty_before",
               "target_auroc_margin_before")  # fmt: skip
CSV_COLUMNS = (
    "dataset",
    "scenario",
    "source",
    "target",
    "bits",
    "method",
    "base_method",
    "label_fraction",
    "label_policy",
    "seed",
    "target_acc",
    "source_acc",
    "target_acc_before",
    "source_acc_before",
    *CALIBRATION,
    "step_seconds",
    "cloud_seconds",
    "device_bytes",
    "classes_never_labelled",
)
STREAM_COLUMNS = (
    "dataset",
    "scenario",
    "bits",
    "method",
    "seed",
    "step",
    "target_acc",
    "source_acc",
    "task_acc",
    "seconds",
)
ACCURACIES = ("target_acc", "source_acc", "target_acc_before", "source_acc_before")
NEW_CLASS_KEYS = ("old_acc", "new_recall", "windows_to_recall")  # rows with held-out classes
MIN_PAIRS = 3  # pairs of one dataset and bit-width from which pairs.md is written
QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
# per stream step of a flip method: codes moved in the step, and whether the device's
# guard then rolled the step back (its flips discarded); read by :mod:`qcore.eval.flip_tables`
FLIP_STEP_KEYS = ("flips", "rolled_back")


def collect(out_dir: Path, cells: list[RunConfig]) -> tuple[list[dict], list[dict]]:
    """Tidy rows (one per streamed method and bit-width) and per-step rows of ``cells``.

    A row keeps its method's ``flipnet`` report and a step its :data:`FLIP_STEP_KEYS`
    where the results have them; the CSV files leave them out.
    """
    rows, steps = [], []
    for cfg in cells:
        res = json.loads((cell_dir(out_dir, cfg) / "results.json").read_text())
        held = f" new {cfg.new_classes}" if cfg.new_classes else ""
        key = {
            "dataset": cfg.dataset,
            "scenario": f"{cfg.source}->{cfg.target}{held}",
            "source": cfg.source,
            "target": cfg.target,
        }
        fraction = float(res["config"].get("label_fraction", 1.0))
        policy = str(res["config"].get("label_policy", "random"))
        for r in res["results"]:
            if "steps" not in r:
                continue
            # a stream with few labels is another row of its method: "slda@0.1", and
            # "slda@0.1/margin" where a policy other than random chose the labelled windows
            name = r["method"] if fraction == 1.0 else f"{r['method']}@{fraction:g}"
            if policy != "random" and 0.0 < fraction < 1.0:
                name += f"/{policy}"
            rows.append(
                {
                    **key,
                    "bits": r["bits"],
                    "method": name,
                    "base_method": r["method"],
                    "label_fraction": fraction,
                    "label_policy": policy,
                    "seed": cfg.seed,
                    **{k: _number(r[k]) for k in ACCURACIES},
                    **{k: _optional(r.get(k)) for k in CALIBRATION},
                    **_timings(r),
                    "device_bytes": r["device_bytes"],
                    "classes_never_labelled": r.get("classes_never_labelled"),
                    "cell_seconds": _number(res.get("wall_s", res.get("seconds"))),
                    **{k: _number(r[k]) for k in NEW_CLASS_KEYS[:2] if k in r},
                    **({"windows_to_recall": r["windows_to_recall"]} if "new_recall" in r else {}),
                    "trained": not res["results"][0].get("cached", False),
                    **({"flipnet": r["flipnet"]} if "flipnet" in r else {}),
                }
            )
            for s in r["steps"]:
                steps.append(
                    {
                        "dataset": cfg.dataset,
                        "scenario": key["scenario"],
                        "bits": r["bits"],
                        "method": name,
                        "seed": cfg.seed,
                        **{k: s[k] for k in STREAM_COLUMNS[5:]},
                        **{k: s[k] for k in FLIP_STEP_KEYS if k in s},
                    }
                )
    return rows, steps


def _number(value) -> float:
    """A number read from results.json, whose ``null`` (strict JSON) or ``NaN`` (older
    files) both stand for a value that could not be measured: NaN."""
    return float("nan") if value is None else float(value)


def _optional(value) -> float | None:
    """A value results.json may lack or hold as ``null``: None (an empty CSV cell)."""
    return None if value is None else float(value)


def _timings(r: dict) -> dict[str, float]:
    """A streamed row's device seconds per step and cloud seconds, from ``step_ms`` and
    ``cloud_s`` (older results.json: ``seconds`` and ``cloud_seconds``)."""
    step = r["step_ms"] / 1000 if "step_ms" in r else r["seconds"]
    return {"step_seconds": step, "cloud_seconds": r.get("cloud_s", r.get("cloud_seconds"))}


def _write_csv(path: Path, rows: list[dict], columns: tuple[str, ...]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _fmt(values: list, digits: int = 3) -> str:
    """Mean ± std of the values measured (None and NaN left out); "-" when none was."""
    m, s = mean_std([np.nan if v is None else v for v in values])
    return "-" if np.isnan(m) else f"{m:.{digits}f} ± {s:.{digits}f}"


def markdown_table(rows: list[dict]) -> str:
    """Mean ± std over seeds per dataset / scenario / bits / method (Markdown): the
    accuracies, the expected calibration errors and the target AUROCs (confidence, distance
    margin) before the stream ("-" where no seed measured it), the device's time and bytes."""
    head = (
        "| dataset | scenario | bits | method | seeds | target before | target after "
        "| source before | source after | target ECE before | target ECE after "
        "| source ECE after | target AUROC before | margin AUROC before | s / step "
        "| device bytes |\n"
        f"|{'---|' * 16}\n"
    )
    lines = []
    for (d, sc, b, m), g in sorted(groups(rows, ("dataset", "scenario", "bits", "method")).items()):
        col = {k: [r.get(k) for r in g] for k in CSV_COLUMNS[CSV_COLUMNS.index("target_acc") :]}
        lines.append(
            f"| {d} | {sc} | {b} | {m} | {len(g)} | {_fmt(col['target_acc_before'])} "
            f"| {_fmt(col['target_acc'])} | {_fmt(col['source_acc_before'])} "
            f"| {_fmt(col['source_acc'])} | {_fmt(col['target_ece_before'])} "
            f"| {_fmt(col['target_ece'])} | {_fmt(col['source_ece'])} "
            f"| {_fmt(col['target_auroc_before'])} "
            f"| {_fmt(col['target_auroc_margin_before'])} | {_fmt(col['step_seconds'])} "
            f"| {int(np.mean(col['device_bytes']))} |"
        )
    return head + "\n".join(lines) + "\n"


def _short(values: list[float]) -> str:
    m, s = mean_std(values)
    return f"{m:.2f} ± {s:.2f}"


def summary_table(rows: list[dict]) -> str:
    """One Markdown table per (dataset, scenario): a row per method, a column per
    bit-width holding final target / source accuracy (mean ± std over seeds), then the
    device seconds per step (mean over bit-widths) and the device bytes (range over them)."""
    out = []
    for (d, sc), rs in sorted(groups(rows, ("dataset", "scenario")).items()):
        bits = sorted({r["bits"] for r in rs})
        seeds = sorted({r["seed"] for r in rs})
        out.append(
            f"**{d} {sc}** (seeds {', '.join(map(str, seeds))}; each cell: target / source "
            "accuracy after the stream)\n\n"
            f"| method | {' | '.join(f'{b} bits' for b in bits)} | s / step | device bytes |\n"
            f"|---|{'---|' * len(bits)}---|---|"
        )
        by = groups(rs, ("method", "bits"))
        for m in sorted({r["method"] for r in rs}):
            cells = []
            for b in bits:
                g = by.get((m, b), [])
                tgt, src = [r["target_acc"] for r in g], [r["source_acc"] for r in g]
                cells.append(f"{_short(tgt)} / {_short(src)}" if g else "-")
            g_all = [r for b in bits for r in by.get((m, b), [])]
            nbytes = [r["device_bytes"] for r in g_all]
            span = f"{min(nbytes):,}" + (f"-{max(nbytes):,}" if max(nbytes) != min(nbytes) else "")
            secs = np.mean([r["step_seconds"] for r in g_all])
            out.append(f"| {m} | {' | '.join(cells)} | {secs:.3f} | {span} |")
        out.append("")
    return "\n".join(out)


def pair_values(rows: list[dict]) -> dict[tuple, dict[str, dict[str, float]]]:
    """Per (dataset, bits) with at least :data:`MIN_PAIRS` pairs: per method, per pair,
    the final target accuracy and its gain over ``none`` on the same pair (means over
    seeds; the gain is NaN where ``none`` did not run)."""
    out: dict[tuple, dict[str, dict[str, float]]] = {}
    plain = [r for r in rows if "new_recall" not in r]  # held-out classes are not pairs
    for (d, b), rs in sorted(groups(plain, ("dataset", "bits")).items()):
        if len({r["scenario"] for r in rs}) < MIN_PAIRS:
            continue
        mean = {k: float(np.mean([r["target_acc"] for r in g]))
                for k, g in groups(rs, ("method", "scenario")).items()}  # fmt: skip
        table: dict[str, dict[str, float]] = {"target": {}, "gain": {}}
        for (m, sc), acc in mean.items():
            table["target"][f"{m}|{sc}"] = acc
            table["gain"][f"{m}|{sc}"] = acc - mean.get(("none", sc), float("nan"))
        out[(d, b)] = table
    return out


def _quantiles(values: list[float]) -> str:
    return " | ".join(f"{q:.3f}" for q in np.quantile(values, QUANTILES))


def pairs_markdown(rows: list[dict]) -> str:
    """The text of ``pairs.md`` (see the module docstring); empty when no dataset has
    :data:`MIN_PAIRS` pairs at one bit-width."""
    tables = pair_values(rows)
    if not tables:
        return ""
    parts = [
        "# Over pairs: final target accuracy and gain over `none`\n\n"
        "One value per source -> target pair (mean over its seeds); quantiles over the "
        "pairs. Gain: the method's final target accuracy minus `none`'s on the same pair; "
        "gains / losses count pairs with a gain above / below 0.005.\n"
    ]
    for (d, b), table in tables.items():
        methods = sorted({k.split("|")[0] for k in table["target"]})
        n_pairs = len({k.split("|")[1] for k in table["target"]})
        parts.append(
            f"## {d}, {b} bits, {n_pairs} pairs\n\n"
            "| method | target: min | 25% | median | 75% | max "
            "| gain: min | 25% | median | 75% | max | gains | losses |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        )
        for m in methods:
            tgt = [v for k, v in table["target"].items() if k.split("|")[0] == m]
            gain = [v for k, v in table["gain"].items() if k.split("|")[0] == m]
            gain = [g for g in gain if np.isfinite(g)]
            g_text = _quantiles(gain) if gain else " | ".join("-" for _ in QUANTILES)
            ups = sum(g > 0.005 for g in gain)
            downs = sum(g < -0.005 for g in gain)
            parts.append(f"| {m} | {_quantiles(tgt)} | {g_text} | {ups} | {downs} |")
        cells = {(r["scenario"], r["seed"]): r for r in rows if (r["dataset"], r["bits"]) == (d, b)}
        secs = [r["cell_seconds"] for r in cells.values() if np.isfinite(r["cell_seconds"])]
        fresh = [r["cell_seconds"] for r in cells.values() if r["trained"]]
        if secs:
            parts.append(
                f"\nCell wall time (one worker, one thread; every method of the cell): median "
                f"{np.median(secs):.1f} s, range {min(secs):.1f}-{max(secs):.1f} s over "
                f"{len(secs)} cells; {len(fresh)} of them trained the float model, the "
                "others reused it from the grid's cache."
            )
        parts.append("")
    return "\n".join(parts)


def newclass_markdown(rows: list[dict]) -> str:
    """The text of ``newclass.md`` when rows hold classes the cloud never saw: per pair,
    held-out class and bit-width, each method's accuracy on the target's old classes,
    its recall of the new class after the stream, and the labelled windows of it given
    when its recall first reached 0.8 (mean over seeds); empty otherwise."""
    held = [r for r in rows if "new_recall" in r]
    if not held:
        return ""
    out = [
        "# New classes: a class held out of the cloud, learnt on the device\n\n"
        "Old: target test accuracy on the classes the cloud saw (for `none`, the deployed "
        "model's); recall: of the held-out class on the target test set after the stream; "
        "windows: labelled windows of it the method had been given when that recall first "
        "reached 0.8 (- never). Mean over seeds.\n\n"
        "| dataset | pair, class held out | bits | method | old | old - none's old | recall | "
        "windows |\n|---|---|---|---|---|---|---|---|"
    ]
    by = groups(held, ("dataset", "scenario", "bits", "method"))
    for (d, sc, b, m), g in sorted(by.items()):
        old = float(np.mean([r["old_acc"] for r in g]))
        ref = by.get((d, sc, b, "none"))
        drop = f"{old - np.mean([r['old_acc'] for r in ref]):+.3f}" if ref else "-"
        hits = [r["windows_to_recall"] for r in g]
        windows = "-" if any(h is None for h in hits) else f"{np.mean(hits):.0f}"
        recall = float(np.mean([r["new_recall"] for r in g]))
        out.append(f"| {d} | {sc} | {b} | {m} | {old:.3f} | {drop} | {recall:.3f} | {windows} |")
    return "\n".join(out) + "\n"


def write_report(out_dir: Path, rows: list[dict], steps: list[dict]) -> None:
    """``results.csv``, ``stream.csv``, ``results.md``, ``summary.md`` and, when the rows
    call for them, ``flips.md``, ``pairs.md``, ``labels.md`` and ``newclass.md`` (removed
    otherwise, so that none ever describes other cells)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(out_dir / "results.csv", rows, CSV_COLUMNS)
    _write_csv(out_dir / "stream.csv", steps, STREAM_COLUMNS)
    (out_dir / "results.md").write_text(
        "# Benchmark: mean ± std over seeds\n\n"
        "Accuracies on the test sets before (deployed model) and after the stream; ECE: "
        "expected calibration error of the method's confidence (10 equal-width bins); "
        "target AUROC before: how well that confidence tells the wrong target predictions "
        "before the stream from the right ones (-: not measured); margin AUROC before: the "
        "same for the device's distance margin (streaming head only); s / step: device "
        "seconds per calibration step; device bytes: model + buffers.\n\n" + markdown_table(rows)
    )
    (out_dir / "summary.md").write_text(summary_table(rows))
    extras = (
        ("flips.md", flips_markdown(rows, steps)),
        ("pairs.md", pairs_markdown(rows)),
        ("labels.md", labels_markdown(rows)),
        ("newclass.md", newclass_markdown(rows)),
    )
    for name, text in extras:
        if text:
            (out_dir / name).write_text(text)
        else:
            (out_dir / name).unlink(missing_ok=True)
