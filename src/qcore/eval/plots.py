"""PNG plots of a run (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path


def plot_stream(rows: list[dict], path: Path) -> None:
    """Target and source test accuracy over the stream, one line pair per streamed row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for row in rows:
        if "steps" not in row:
            continue
        steps = [0] + [s["step"] for s in row["steps"]]
        label = f"{row['method']} {row['bits']}b"
        tgt = [row["target_acc_before"]] + [s["target_acc"] for s in row["steps"]]
        src = [row["source_acc_before"]] + [s["source_acc"] for s in row["steps"]]
        (line,) = ax.plot(steps, tgt, marker="o", label=f"{label} target")
        ax.plot(steps, src, linestyle="--", color=line.get_color(), label=f"{label} source")
    ax.set_xlabel("stream step")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
