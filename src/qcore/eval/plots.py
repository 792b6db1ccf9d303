"""PNG plots of a run (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path


def plot_stream(rows: list[dict], path: Path) -> None:
    """Accuracy over the stream: one panel per bit-width, one colour per method,
    solid = target test set (adaptation), dashed = source test set (forgetting)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        ax.set_title(f"{b} bits")
        ax.set_xlabel("stream step")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
