"""The benchmark grid behind ``qcore bench``: datasets x scenarios x bits x methods x seeds.

One *cell* is one ``(dataset, source -> target, seed, bit-width)``: a single :func:`run`
with every method (they share the deployed model). The float training is deterministic, so
it is repeated per bit-width rather than shared: a few minutes more per grid, and cells
small enough (tens of minutes on HAPT, longer on USC-HAD) that a grid of many hours
resumes across interrupted sessions. Cells run in parallel worker processes (``spawn``: a
script calling :func:`run_bench` needs the ``if __name__ == "__main__":`` guard; each
worker runs one thread in torch and in NumPy's BLAS, see :mod:`qcore.threads`) and writes
``DIR/cells/<dataset>-<source>-<target>-s<seed>-b<bits>/results.json``; a cell whose
results are complete and were made with the same settings is never recomputed, so an
interrupted grid resumes where it stopped. From the cells the grid writes:

* ``DIR/results.csv``: one tidy row per (dataset, scenario, bits, method, seed);
* ``DIR/stream.csv``: one row per stream step of each of those;
* ``DIR/results.md``: mean ± std over seeds per dataset / scenario / bits / method;
* ``DIR/stream.png`` (target accuracy over the stream), ``DIR/bits.png`` (final target
  accuracy against bit-width) and ``DIR/cost.png`` (target accuracy against device time
  per step and against device bytes).

Presets: ``quick`` is synthetic data, two domain pairs, seeds 0 and 1, bits 2/4/8, a
tiny model and every method (a few minutes on 2 cores). ``full`` is HAPT 1->4 plus USC-HAD
1->11 when its files are found, bits 2/3/4/5/8, seeds 0/1/2, the default model and every
method: 30 cells of several (HAPT) to tens of (USC-HAD) minutes each, many hours on 2 cores
(``pairs=hapt:1:25,...`` adds pairs; ``benchmarks/method.py`` covers more pairs for QCore).
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qcore.config import RunConfig, parse_overrides
from qcore.errors import QCoreError
from qcore.eval.metrics import mean_std

PRESETS = ("quick", "full")
CSV_COLUMNS = (
    "dataset",
    "scenario",
    "source",
    "target",
    "bits",
    "method",
    "seed",
    "target_acc",
    "source_acc",
    "target_acc_before",
    "source_acc_before",
    "step_seconds",
    "cloud_seconds",
    "device_bytes",
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
# set per cell by the grid: a --set for them would be silently overwritten
_GRID_OWNED = ("dataset", "source", "target", "seed")

Pair = tuple[str, int, int]


@dataclass(frozen=True)
class Grid:
    """Settings shared by every cell (``base``), the domain pairs and the seeds."""

    base: RunConfig
    pairs: tuple[Pair, ...]
    seeds: tuple[int, ...]

    def cells(self) -> list[RunConfig]:
        """One validated config per (pair, seed, bit-width), in that nesting order."""
        return [
            self.base.replace(dataset=d, source=s, target=t, seed=seed, bits=(b,))
            for d, s, t in self.pairs
            for seed in self.seeds
            for b in self.base.bits
        ]


def cell_dir(out_dir: Path, cfg: RunConfig) -> Path:
    bits = "-".join(str(b) for b in cfg.bits)
    return out_dir / "cells" / f"{cfg.dataset}-{cfg.source}-{cfg.target}-s{cfg.seed}-b{bits}"


def all_methods() -> str:
    """Every registered method, comma-separated, sorted by name."""
    from qcore.eval.methods import available

    return ",".join(sorted(available()))


def _uschad_found() -> bool:
    from qcore.data.uschad import find_uschad_root

    try:
        find_uschad_root()
    except QCoreError:
        return False
    return True


def preset(name: str) -> Grid:
    """The ``quick`` or ``full`` grid (see the module docstring)."""
    if name == "quick":
        base = RunConfig(
            dataset="synthetic",
            source=0,
            target=1,
            bits=(2, 4, 8),
            filters=4,
            depth=3,
            epochs=5,
            core_size=10,
            method=all_methods(),
            threads=1,
        )
        return Grid(base, (("synthetic", 0, 1), ("synthetic", 2, 3)), (0, 1))
    if name == "full":
        base = RunConfig(bits=(2, 3, 4, 5, 8), method=all_methods(), threads=1)
        pairs: tuple[Pair, ...] = (("hapt", 1, 4),)
        if _uschad_found():
            pairs += (("usc-had", 1, 11),)
        return Grid(base, pairs, (0, 1, 2))
    raise QCoreError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")


def _parse_pairs(text: str) -> tuple[Pair, ...]:
    pairs = []
    for item in text.split(","):
        parts = item.strip().split(":")
        try:
            if len(parts) != 3:
                raise ValueError
            pairs.append((parts[0], int(parts[1]), int(parts[2])))
        except ValueError:
            raise QCoreError(
                f"setting pairs: {item.strip()!r} is not dataset:source:target"
            ) from None
    if not pairs:
        raise QCoreError("setting pairs needs at least one dataset:source:target")
    return tuple(pairs)


def _parse_seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise QCoreError(f"setting seeds: cannot read {text!r} as integers") from None
    if not seeds:
        raise QCoreError("setting seeds needs at least one seed")
    return seeds


def make_grid(name: str = "quick", overrides: list[str] | tuple[str, ...] = ()) -> Grid:
    """A preset changed by ``key=value`` overrides.

    ``pairs=dataset:source:target,...`` and ``seeds=0,1,...`` change the grid; any other
    key is a :class:`RunConfig` setting for every cell (``bits=2,4``, ``method=none,er``,
    ``epochs=2``, ...). ``dataset``/``source``/``target``/``seed`` belong to the grid.
    """
    grid = preset(name)
    sets = parse_overrides(list(overrides))
    for key in _GRID_OWNED:
        if key in sets:
            raise QCoreError(
                f"setting {key} is set per cell by the grid: use pairs=dataset:source:target,"
                " ... or seeds=0,1,... instead"
            )
    pairs = _parse_pairs(sets.pop("pairs")) if "pairs" in sets else grid.pairs
    seeds = _parse_seeds(sets.pop("seeds")) if "seeds" in sets else grid.seeds
    data = {**grid.base.to_dict(), **sets}
    grid = Grid(RunConfig.from_dict(data), pairs, seeds)
    grid.cells()  # validate every cell (e.g. source == target) before anything runs
    return grid


def _is_done(path: Path, cfg: RunConfig) -> bool:
    """Complete results (``scenario`` is written last) made with exactly ``cfg``."""
    if not path.is_file():
        return False
    try:
        res = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return "scenario" in res and res.get("config") == cfg.to_dict()


def _init_worker() -> None:
    from qcore.threads import limit_threads

    limit_threads(1)


def _run_cell(cfg_dict: dict, out: str) -> float:
    """Worker entry point: run one cell, return its wall time in seconds."""
    from qcore.eval.runner import run

    t0 = time.perf_counter()
    run(RunConfig.from_dict(cfg_dict), out)
    return time.perf_counter() - t0


@dataclass(frozen=True)
class BenchResult:
    n_cells: int
    n_computed: int
    seconds: float
    rows: list[dict]
    failed: tuple[str, ...]


def run_bench(
    grid: Grid,
    out_dir: str | Path,
    workers: int = 1,
    progress: bool = True,
    compute: bool = True,
) -> BenchResult:
    """Run the missing cells of ``grid`` under ``out_dir``, then write tables and plots.

    A failing cell does not stop the others; the outputs cover the finished cells and
    a :class:`QCoreError` naming the failures is raised at the end. With ``compute=False``
    nothing runs: the outputs cover the cells already finished.
    """
    from tqdm.auto import tqdm

    if workers < 1:
        raise QCoreError(f"workers must be >= 1, got {workers}")
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    cells = grid.cells()
    todo = [c for c in cells if not _is_done(cell_dir(out_dir, c) / "results.json", c)]
    if not compute:
        todo = []
    failed: list[str] = []
    if todo:
        ctx = multiprocessing.get_context("spawn")  # no forked torch thread state
        n = min(workers, len(todo))
        with ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker) as pool:
            futures = {
                pool.submit(_run_cell, c.to_dict(), str(cell_dir(out_dir, c))): c for c in todo
            }
            bar = tqdm(
                total=len(cells), initial=len(cells) - len(todo), desc="cells", disable=not progress
            )
            with bar:
                for fut in as_completed(futures):
                    c = futures[fut]
                    name = cell_dir(out_dir, c).name
                    try:
                        secs = fut.result()
                        bar.set_postfix_str(f"{name} {secs:.0f}s")
                    except Exception as exc:  # report, keep the other cells going
                        failed.append(f"{name}: {type(exc).__name__}: {exc}")
                        remote = str(exc.__cause__ or "")  # the worker's traceback
                        bar.write(f"cell {name} failed: {type(exc).__name__}: {exc}{remote}")
                    bar.update()
    done = [c for c in cells if _is_done(cell_dir(out_dir, c) / "results.json", c)]
    rows, steps = collect(out_dir, done)
    write_outputs(out_dir, rows, steps)
    result = BenchResult(
        len(cells), len(todo) - len(failed), time.perf_counter() - t0, rows, tuple(failed)
    )
    if failed:
        raise QCoreError(f"{len(failed)} cell(s) failed: " + "; ".join(failed))
    return result


def collect(out_dir: Path, cells: list[RunConfig]) -> tuple[list[dict], list[dict]]:
    """Tidy rows (one per streamed method and bit-width) and per-step rows of ``cells``."""
    rows, steps = [], []
    for cfg in cells:
        res = json.loads((cell_dir(out_dir, cfg) / "results.json").read_text())
        key = {
            "dataset": cfg.dataset,
            "scenario": f"{cfg.source}->{cfg.target}",
            "source": cfg.source,
            "target": cfg.target,
        }
        for r in res["results"]:
            if "steps" not in r:
                continue
            rows.append(
                {
                    **key,
                    "bits": r["bits"],
                    "method": r["method"],
                    "seed": cfg.seed,
                    "target_acc": r["target_acc"],
                    "source_acc": r["source_acc"],
                    "target_acc_before": r["target_acc_before"],
                    "source_acc_before": r["source_acc_before"],
                    "step_seconds": r["seconds"],
                    "cloud_seconds": r["cloud_seconds"],
                    "device_bytes": r["device_bytes"],
                }
            )
            for s in r["steps"]:
                steps.append(
                    {
                        "dataset": cfg.dataset,
                        "scenario": key["scenario"],
                        "bits": r["bits"],
                        "method": r["method"],
                        "seed": cfg.seed,
                        **{k: s[k] for k in STREAM_COLUMNS[5:]},
                    }
                )
    return rows, steps


def _write_csv(path: Path, rows: list[dict], columns: tuple[str, ...]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _groups(rows: list[dict], keys: tuple[str, ...]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        out[tuple(r[k] for k in keys)].append(r)
    return dict(out)


def _fmt(values: list[float], digits: int = 3) -> str:
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def markdown_table(rows: list[dict]) -> str:
    """Mean ± std over seeds per dataset / scenario / bits / method (Markdown)."""
    head = (
        "| dataset | scenario | bits | method | seeds | target before | target after "
        "| source before | source after | s / step | device bytes |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    groups = _groups(rows, ("dataset", "scenario", "bits", "method"))
    for (d, sc, b, m), g in sorted(groups.items()):
        col = {k: [r[k] for r in g] for k in CSV_COLUMNS[7:]}
        lines.append(
            f"| {d} | {sc} | {b} | {m} | {len(g)} | {_fmt(col['target_acc_before'])} "
            f"| {_fmt(col['target_acc'])} | {_fmt(col['source_acc_before'])} "
            f"| {_fmt(col['source_acc'])} | {_fmt(col['step_seconds'])} "
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
    for (d, sc), rs in sorted(_groups(rows, ("dataset", "scenario")).items()):
        bits = sorted({r["bits"] for r in rs})
        seeds = sorted({r["seed"] for r in rs})
        out.append(
            f"**{d} {sc}** (seeds {', '.join(map(str, seeds))}; each cell: target / source "
            "accuracy after the stream)\n\n"
            f"| method | {' | '.join(f'{b} bits' for b in bits)} | s / step | device bytes |\n"
            f"|---|{'---|' * len(bits)}---|---|"
        )
        by = _groups(rs, ("method", "bits"))
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


def write_outputs(out_dir: Path, rows: list[dict], steps: list[dict]) -> None:
    """``results.csv``, ``stream.csv``, ``results.md``, ``summary.md`` and the three PNGs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(out_dir / "results.csv", rows, CSV_COLUMNS)
    _write_csv(out_dir / "stream.csv", steps, STREAM_COLUMNS)
    (out_dir / "results.md").write_text(
        "# Benchmark: mean ± std over seeds\n\n"
        "Accuracies on the test sets before (deployed model) and after the stream; "
        "s / step: device seconds per calibration step; device bytes: model + buffers.\n\n"
        + markdown_table(rows)
    )
    (out_dir / "summary.md").write_text(summary_table(rows))
    plot_stream(rows, steps, out_dir / "stream.png")
    plot_bits(rows, out_dir / "bits.png")
    plot_cost(rows, out_dir / "cost.png")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(methods: list[str]) -> dict[str, object]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab20")
    return {m: cmap(i % 20) for i, m in enumerate(sorted(methods))}


def plot_stream(rows: list[dict], steps: list[dict], path: Path) -> None:
    """Target test accuracy over the stream (mean over seeds): one panel per
    (dataset, scenario) row and bit-width column, one line per method."""
    plt = _pyplot()
    panels = sorted({(r["dataset"], r["scenario"]) for r in rows})
    bits = sorted({r["bits"] for r in rows})
    colors = _colors(list({r["method"] for r in rows}))
    n_r, n_c = max(1, len(panels)), max(1, len(bits))
    fig, axes = plt.subplots(n_r, n_c, figsize=(4 * n_c, 3 * n_r), squeeze=False)
    before = _groups(rows, ("dataset", "scenario", "bits", "method"))
    by_step = _groups(steps, ("dataset", "scenario", "bits", "method"))
    for (d, sc, b, m), g in sorted(before.items()):
        ax = axes[panels.index((d, sc)), bits.index(b)]
        per_step = _groups(by_step.get((d, sc, b, m), []), ("step",))
        xs = [0] + sorted(k[0] for k in per_step)
        ys = [np.mean([r["target_acc_before"] for r in g])]
        ys += [np.mean([s["target_acc"] for s in per_step[(x,)]]) for x in xs[1:]]
        ax.plot(xs, ys, color=colors[m], label=m, lw=1.2)
        ax.set_title(f"{d} {sc}, {b} bits", fontsize=9)
    for ax in axes.flat:
        ax.set_ylim(0, 1.02)
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
        fig.tight_layout(rect=(0, 0, 1, 0.92))


def plot_bits(rows: list[dict], path: Path) -> None:
    """Final target accuracy against bit-width, mean ± std over seeds, per scenario."""
    plt = _pyplot()
    panels = sorted({(r["dataset"], r["scenario"]) for r in rows})
    colors = _colors(list({r["method"] for r in rows}))
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5 * max(1, len(panels)), 3.5))
    axes = np.atleast_1d(axes)
    for i, (d, sc) in enumerate(panels):
        sub = [r for r in rows if (r["dataset"], r["scenario"]) == (d, sc)]
        for m, g in sorted(_groups(sub, ("method",)).items()):
            by_bits = _groups(g, ("bits",))
            xs = sorted(k[0] for k in by_bits)
            stats = [mean_std([r["target_acc"] for r in by_bits[(x,)]]) for x in xs]
            ax = axes[i]
            ax.errorbar(
                xs, [s[0] for s in stats], [s[1] for s in stats], color=colors[m[0]],
                label=m[0], marker="o", ms=3, capsize=2, lw=1,
            )  # fmt: skip
        axes[i].set_title(f"{d} {sc}", fontsize=9)
        axes[i].set_xlabel("bits")
        axes[i].set_ylabel("final target accuracy")
        axes[i].set_ylim(0, 1.02)
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
    for (m, b), g in sorted(_groups(rows, ("method", "bits")).items()):
        acc = float(np.mean([r["target_acc"] for r in g]))
        kw = {"color": colors[m], "marker": markers.get(b, "o"), "s": 28}
        axes[0].scatter(np.mean([r["step_seconds"] for r in g]), acc, **kw)
        axes[1].scatter(np.mean([r["device_bytes"] for r in g]), acc, **kw)
    for ax, label in zip(axes, ("device seconds per step", "device bytes"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("final target accuracy")
        ax.grid(alpha=0.3, which="both")
    handles = [
        plt.Line2D([], [], color=c, marker="o", ls="", label=m) for m, c in colors.items()
    ] + [
        plt.Line2D([], [], color="k", marker=markers.get(b, "o"), ls="", label=f"{b} bits")
        for b in bits
    ]
    fig.legend(handles=handles, loc="upper center", ncol=8, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.86))
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
