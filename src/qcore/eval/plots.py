"""PNG plots (matplotlib, headless) of one run and of the benchmark grid.

One run (:mod:`qcore.eval.runner`): :func:`plot_stream` and :func:`plot_reliability`.
The grid (:mod:`qcore.eval.bench`), from the report's tidy rows: ``DIR/stream.png`` (target
accuracy over the stream), ``DIR/bits.png`` (final target accuracy against bit-width),
``DIR/cost.png`` (target accuracy against device time per step and against device
bytes), for grids over many pairs ``DIR/pairs.png`` (the distribution over pairs) and
for grids over label fractions ``DIR/labels.png`` (accuracy against the share of labelled
windows, a row of panels per label policy), written by :func:`write_plots`. A grid of more
than :data:`MAX_PANELS` pairs gets no per-pair plots (stream, bits): its pairs are
summarised by ``pairs.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qcore.eval.metrics import mean_std
from qcore.eval.report import groups, pair_values

MAX_PANELS = 6  # pairs from which the per-pair plots give way to pairs.png


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_stream(rows: list[dict], path: Path, title: str = ""):
    """Accuracy over the stream: one panel per bit-width (titled with ``title``, e.g. the
    dataset and pair), one colour per method, solid = target test set (adaptation),
    dashed = source test set (forgetting), from step 0 (before the first batch) on; the
    y-axis covers every point drawn. Returns the (closed) matplotlib Figure."""
    plt = _pyplot()
    streamed = [r for r in rows if "steps" in r]
    bits = sorted({r["bits"] for r in streamed})
    methods = sorted({r["method"] for r in streamed})
    colours = {m: f"C{i}" for i, m in enumerate(methods)}
    fig, axes = plt.subplots(
        1, max(1, len(bits)), figsize=(4 * max(1, len(bits)), 3.6), sharey=True, squeeze=False
    )
    for ax, b in zip(axes[0], bits, strict=False):
        for row in (r for r in streamed if r["bits"] == b):
            x = [0] + [s["step"] for s in row["steps"]]
            tgt = [row["target_acc_before"]] + [s["target_acc"] for s in row["steps"]]
            src = [row["source_acc_before"]] + [s["source_acc"] for s in row["steps"]]
            c = colours[row["method"]]
            ax.plot(x, tgt, marker="o", ms=3, color=c, label=f"{row['method']} target")
            ax.plot(x, src, linestyle="--", color=c, label=f"{row['method']} source")
        ax.set_title(f"{title}, {b} bits" if title else f"{b} bits", fontsize=9)
        ax.set_xlabel("stream step")
        values = [v for line in ax.get_lines() for v in line.get_ydata()]
        _ylim(ax, values)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig


# the reliability diagram's curves: results key suffix, label, colour; per test set a style
_WHEN = (("_before", "before", "C0"), ("", "after", "C1"))
_SETS = (("target", "-"), ("source", "--"))


def plot_reliability(
    rows: list[dict], path: Path, title: str = "", chosen: dict[int, str] | None = None
):
    """Reliability diagram of one run: one panel per bit-width, for the method ``chosen``
    names at that bit-width (the runner: the device whose artifacts it wrote), else the
    first streamed method with reliability bins; accuracy against mean confidence per
    confidence bin, before the stream (blue) and after it (orange), solid = target test
    set, dashed = source test set, each labelled with its expected calibration error; the
    diagonal is perfect calibration. Returns the (closed) matplotlib Figure."""
    plt = _pyplot()
    chosen = chosen or {}
    shown: dict[int, dict] = {}
    for r in rows:
        if "steps" not in r or not r.get("target_reliability"):
            continue
        if r["bits"] not in shown or r["method"] == chosen.get(r["bits"]):
            shown[r["bits"]] = r
    n = max(1, len(shown))
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.8), squeeze=False)
    for ax, (b, row) in zip(axes[0], sorted(shown.items()), strict=False):
        for suffix, when, colour in _WHEN:
            for name, style in _SETS:
                bins = row.get(f"{name}_reliability{suffix}") or []
                err = row.get(f"{name}_ece{suffix}")
                label = f"{name} {when}" + ("" if err is None else f" (ECE {err:.3f})")
                ax.plot([x[0] for x in bins], [x[1] for x in bins], linestyle=style,
                        marker="o", ms=3, color=colour, label=label)  # fmt: skip
        head = f"{title}, {row['method']}, {b} bits" if title else f"{row['method']}, {b} bits"
        ax.set_title(head, fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    for ax in axes[0]:
        ax.plot([0, 1], [0, 1], color="k", lw=0.8, linestyle=":")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("confidence (mean per bin)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy in the bin")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig


def write_plots(out_dir: Path, rows: list[dict], steps: list[dict]) -> None:
    """The grid's plots under ``out_dir`` (see the module docstring); a plot the rows do
    not call for is removed, so that none describes other cells."""
    few = len({(r["dataset"], r["scenario"]) for r in rows}) <= MAX_PANELS
    wide = bool(pair_values(rows))
    fractions = len({r.get("label_fraction", 1.0) for r in rows}) > 1
    plots = (
        ("stream.png", few, lambda p: plot_grid_stream(rows, steps, p)),
        ("bits.png", few, lambda p: plot_bits(rows, p)),
        ("cost.png", True, lambda p: plot_cost(rows, p)),
        ("pairs.png", wide, lambda p: plot_pairs(rows, p)),
        ("labels.png", fractions, lambda p: plot_labels(rows, p)),
    )
    for name, wanted, draw in plots:
        if wanted:
            draw(out_dir / name)
        else:
            (out_dir / name).unlink(missing_ok=True)


def plot_labels(rows: list[dict], path: Path) -> None:
    """Final target accuracy against the share of labelled windows: one panel per
    (dataset, pair) and label policy (a row of panels per policy), one line per method
    and bit-width (mean over seeds); the x-axis places the fractions evenly, 0 to 1."""
    from qcore.eval.label_tables import policies_of, policy_rows

    plt = _pyplot()
    policies = policies_of(rows)
    panels = sorted({(r["dataset"], r["scenario"]) for r in rows})
    fractions = sorted({r["label_fraction"] for r in rows})
    methods = sorted({r["base_method"] for r in rows})
    colors = _colors(methods)
    bits = sorted({r["bits"] for r in rows})
    widths = dict(zip(bits, (0.8, 1.3, 1.8, 2.3, 2.8), strict=False))
    n = len(policies)
    fig, axes = plt.subplots(n, len(panels), figsize=(4.6 * len(panels), 3.8 * n), squeeze=False)
    where = [(ax, p, pair) for p, row in zip(policies, axes, strict=True)
             for ax, pair in zip(row, panels, strict=True)]  # fmt: skip
    for ax, policy, (d, sc) in where:
        mine = [r for r in policy_rows(rows, policy) if (r["dataset"], r["scenario"]) == (d, sc)]
        sub = groups(mine, ("base_method", "bits", "label_fraction"))
        values = []
        for m in methods:
            for b in bits:
                xs = [i for i, f in enumerate(fractions) if (m, b, f) in sub]
                ys = [float(np.mean([r["target_acc"] for r in sub[(m, b, fractions[i])]]))
                      for i in xs]  # fmt: skip
                if not xs:
                    continue
                label = f"{m}, {b} bits"
                ax.plot(xs, ys, color=colors[m], lw=widths.get(b, 1.0), ms=4, label=label,
                        **family_style(m))  # fmt: skip
                values += ys
        ax.set_xticks(range(len(fractions)), [f"{f:g}" for f in fractions])
        ax.set_xlabel("share of each batch's windows that carry a label")
        ax.set_ylabel("final target accuracy")
        asked = f"\nlabelled windows: {policy}" if n > 1 else ""
        ax.set_title(f"{d} {sc}: final target accuracy (mean over seeds){asked}", fontsize=9)
        _ylim(ax, values)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(6, len(labels)), fontsize=7)
    fig.text(0.5, 0.005, FAMILIES + "; thicker lines: more bits", ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.03 / n, 1, 1 - 0.14 / n))
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_pairs(rows: list[dict], path: Path) -> None:
    """Per (dataset, bits) with many pairs: final target accuracy (left) and its gain over
    ``none`` (right), one box per method over the pairs with every pair as a dot."""
    plt = _pyplot()
    tables = pair_values(rows)
    fig, axes = plt.subplots(len(tables), 2, figsize=(11, 3.6 * len(tables)), squeeze=False)
    colors = _colors(list({r["method"] for r in rows}))
    for i, ((d, b), table) in enumerate(tables.items()):
        methods = sorted({k.split("|")[0] for k in table["target"]})
        pairs = {tuple(k.split("|")[1].split("->")) for k in table["target"]}
        sources = ",".join(sorted({p[0] for p in pairs}))
        for j, (kind, label) in enumerate(
            (("target", "final target accuracy"), ("gain", "gain over none"))
        ):
            ax = axes[i][j]
            shown = [m for m in methods if not (kind == "gain" and m == "none")]
            data = [[v for k, v in table[kind].items() if k.split("|")[0] == m and np.isfinite(v)]
                    for m in shown]  # fmt: skip
            ax.boxplot(data, showfliers=False, widths=0.5)
            rng = np.random.default_rng(0)  # horizontal jitter of the dots only
            for x, (m, vals) in enumerate(zip(shown, data, strict=True), start=1):
                style = family_style(m)
                ax.scatter(
                    x + rng.uniform(-0.15, 0.15, len(vals)), vals, s=16, alpha=0.8,
                    color=colors[m], marker=style["marker"] or "^",
                )  # fmt: skip
            ax.set_xticks(range(1, len(shown) + 1), shown, fontsize=8)
            if kind == "gain":
                ax.axhline(0.0, color="k", lw=0.8)
            ax.set_ylabel(label)
            ax.set_title(f"{d} {sources} -> {len(pairs)} targets, {b} bits: {label}", fontsize=9)
            ax.grid(alpha=0.3, axis="y")
    caption = (
        "one dot per pair; boxes: quartiles and median; markers: circles = back-prop on the "
        "device, squares = back-prop-free, triangles = none"
    )
    fig.text(0.5, 0.005, caption, ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _colors(methods: list[str]) -> dict[str, object]:
    """Distinct colours: the 10 strong colours of tab20 first, then their light twins."""
    plt = _pyplot()
    cmap = plt.get_cmap("tab20")
    return {m: cmap((2 * i) % 20 + (2 * i) // 20) for i, m in enumerate(sorted(methods))}


def family_style(method: str) -> dict[str, object]:
    """Line style and marker by family: back-prop on the device (solid, circles),
    back-prop-free (dashed, squares), no calibration (dotted, no marker)."""
    method = method.split("@")[0]  # "slda@0.1": slda with few labels
    if method == "none":
        return {"linestyle": ":", "marker": None}
    if method in _backprop():
        return {"linestyle": "-", "marker": "o"}
    return {"linestyle": "--", "marker": "s"}


def _backprop() -> set[str]:
    """The methods registered as back-propagating (importing them all fills the registry)."""
    import qcore.methods.all  # noqa: F401
    from qcore.methods.registry import BACKPROP

    return BACKPROP


def _ylim(ax, values: list[float]) -> None:
    """A y-axis that shows the differences: from just below the lowest value to 1."""
    finite = [v for v in values if v is not None and np.isfinite(v)]
    low = min(finite, default=0.0)
    ax.set_ylim(max(0.0, low - 0.05), 1.01)


FAMILIES = "line style: solid = back-prop on the device, dashed = back-prop-free, dotted = none"


def plot_grid_stream(rows: list[dict], steps: list[dict], path: Path) -> None:
    """Target test accuracy over the stream (mean over seeds): one panel per
    (dataset, scenario) row and bit-width column, one line per method."""
    plt = _pyplot()
    panels = sorted({(r["dataset"], r["scenario"]) for r in rows})
    bits = sorted({r["bits"] for r in rows})
    colors = _colors(list({r["method"] for r in rows}))
    n_r, n_c = max(1, len(panels)), max(1, len(bits))
    fig, axes = plt.subplots(n_r, n_c, figsize=(4 * n_c, 3 * n_r), squeeze=False)
    before = groups(rows, ("dataset", "scenario", "bits", "method"))
    by_step = groups(steps, ("dataset", "scenario", "bits", "method"))
    plotted: dict[int, list[float]] = {}
    for (d, sc, b, m), g in sorted(before.items()):
        ax = axes[panels.index((d, sc)), bits.index(b)]
        per_step = groups(by_step.get((d, sc, b, m), []), ("step",))
        xs = [0] + sorted(k[0] for k in per_step)
        ys = [np.mean([r["target_acc_before"] for r in g])]
        ys += [np.mean([s["target_acc"] for s in per_step[(x,)]]) for x in xs[1:]]
        ax.plot(xs, ys, color=colors[m], label=m, lw=1.2, ms=3, **family_style(m))
        ax.set_title(f"{d} {sc}, {b} bits: target accuracy (mean over seeds)", fontsize=9)
        plotted.setdefault(id(ax), []).extend(ys)
    for ax in axes.flat:
        _ylim(ax, plotted.get(id(ax), []))
        ax.grid(alpha=0.3)
        ax.set_xlabel("stream step", fontsize=8)
        ax.set_ylabel("target accuracy", fontsize=8)
    _legend(fig, axes)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _legend(fig, axes) -> None:
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=min(7, len(labels)), fontsize=8)
        fig.text(0.5, 0.005, FAMILIES, ha="center", fontsize=7)
        fig.tight_layout(rect=(0, 0.02, 1, 0.92))


def plot_bits(rows: list[dict], path: Path) -> None:
    """Final target accuracy against bit-width, mean ± std over seeds, per scenario."""
    plt = _pyplot()
    panels = sorted({(r["dataset"], r["scenario"]) for r in rows})
    colors = _colors(list({r["method"] for r in rows}))
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5 * max(1, len(panels)), 3.5))
    axes = np.atleast_1d(axes)
    for i, (d, sc) in enumerate(panels):
        plotted: list[float] = []
        sub = [r for r in rows if (r["dataset"], r["scenario"]) == (d, sc)]
        for m, g in sorted(groups(sub, ("method",)).items()):
            by_bits = groups(g, ("bits",))
            xs = sorted(k[0] for k in by_bits)
            stats = [mean_std([r["target_acc"] for r in by_bits[(x,)]]) for x in xs]
            ax = axes[i]
            ax.errorbar(
                xs, [s[0] for s in stats], [s[1] for s in stats], color=colors[m[0]],
                label=m[0], ms=3, capsize=2, lw=1, **family_style(m[0]),
            )  # fmt: skip
            plotted.extend(s[0] for s in stats)
        axes[i].set_title(f"{d} {sc}: final target accuracy (mean ± std over seeds)", fontsize=9)
        axes[i].set_xlabel("bits")
        axes[i].set_ylabel("final target accuracy")
        _ylim(axes[i], plotted)
        axes[i].grid(alpha=0.3)
    _legend(fig, axes)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_cost(rows: list[dict], path: Path) -> None:
    """Final target accuracy against device seconds per step and against device bytes:
    one point per (method, bits), averaged over datasets, scenarios and seeds."""
    plt = _pyplot()
    colors = _colors(list({r["method"] for r in rows}))
    bits = sorted({r["bits"] for r in rows})
    markers = dict(zip(bits, "os^Dv<>p*h", strict=False))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    accs = []
    for (m, b), g in sorted(groups(rows, ("method", "bits")).items()):
        acc = float(np.mean([r["target_acc"] for r in g]))
        accs.append(acc)
        face = colors[m] if m.split("@")[0] in _backprop() else "none"
        kw = {"edgecolors": colors[m], "facecolors": face, "marker": markers.get(b, "o"), "s": 28}
        axes[0].scatter(np.mean([r["step_seconds"] for r in g]), acc, **kw)
        axes[1].scatter(np.mean([r["device_bytes"] for r in g]), acc, **kw)
    pooled = "mean over every pair and seed"
    titles = (
        f"accuracy against device time ({pooled})",
        f"accuracy against device bytes ({pooled})",
    )
    labels = ("device seconds per step", "device bytes")
    for ax, label, title in zip(axes, labels, titles, strict=True):
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("final target accuracy")
        ax.set_title(title, fontsize=9)
        _ylim(ax, accs)
        ax.grid(alpha=0.3, which="both")
    handles = [
        plt.Line2D([], [], color=c, marker="o", ls="", label=m) for m, c in colors.items()
    ] + [
        plt.Line2D([], [], color="k", marker=markers.get(b, "o"), ls="", label=f"{b} bits")
        for b in bits
    ]
    fig.legend(handles=handles, loc="upper center", ncol=8, fontsize=8)
    fig.text(0.5, 0.005, "filled = back-prop on the device, hollow = back-prop-free", ha="center",
             fontsize=7)  # fmt: skip
    fig.tight_layout(rect=(0, 0.03, 1, 0.86))
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
