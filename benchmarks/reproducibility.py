"""What is bit-reproducible when the machine changes: the same run under other CPU kernels.

One small ``qcore run`` (HAPT 1 -> 4, ``--epochs`` epochs, 2/4/8 bits, methods ``none``,
``qcore`` and ``slda``, one thread, no cache) is repeated in fresh processes whose
environment selects other compute kernels, as another machine would:

* ``baseline``: this machine as it is;
* ``again``: the same once more (is a run reproducible at all?);
* ``numpy haswell``: NumPy's OpenBLAS forced to its Haswell (AVX2) kernels
  (``OPENBLAS_CORETYPE=Haswell``) instead of the ones it picks for this CPU;
* ``torch avx2``: PyTorch's vectorised kernels and oneDNN limited to AVX2
  (``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``);
* ``2 threads``: ``--set threads=2`` (torch and BLAS split their work).

For each variant the table says whether the trained float model (its parameters), the
deployed artifacts and every accuracy of ``results.json`` are identical to the baseline's,
and the largest accuracy difference. Prints Markdown.

    .venv/bin/python benchmarks/reproducibility.py [--epochs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = {
    "baseline": ({}, []),
    "again": ({}, []),
    "numpy haswell": ({"OPENBLAS_CORETYPE": "Haswell"}, []),
    "torch avx2": ({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}, []),
    "2 threads": ({}, ["--set", "threads=2"]),
}


def run(out: Path, epochs: int, env: dict[str, str], extra: list[str]) -> None:
    cmd = [
        sys.executable, "-m", "qcore.cli", "run", "--out", str(out), "--quiet",
        "--set", f"epochs={epochs}", "--set", "bits=2,4,8", "--set", "threads=1",
        "--set", "method=none,qcore,slda", *extra,
    ]  # fmt: skip
    subprocess.run(cmd, env={**os.environ, **env}, check=True, capture_output=True)


def float_digest(out: Path) -> str:
    """SHA-256 of the trained float model's parameters (the run's cache entry)."""
    import io

    import torch

    (entry,) = (out / ".cache").glob("float-*.pt")
    state = torch.load(io.BytesIO(entry.read_bytes()), weights_only=True)["model"]
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].numpy().tobytes())
    return h.hexdigest()


def accuracies(out: Path) -> dict[str, float]:
    """Every accuracy of ``results.json``, keyed by method, bits, step and name."""
    found = {}
    for row in json.loads((out / "results.json").read_text())["results"]:
        key = f"{row['method']}/{row['bits']}"
        for name in ("source_acc", "target_acc"):
            found[f"{key}/{name}"] = row[name]
        for s in row.get("steps", []):
            for name in ("task_acc", "source_acc", "target_acc"):
                found[f"{key}/{s['step']}/{name}"] = s[name]
    return found


def artifacts(out: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(out.glob("deployed-*.qcore")):
        h.update(p.read_bytes())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        found = {}
        for name, (env, extra) in VARIANTS.items():
            out = Path(tmp) / name.replace(" ", "-")
            run(out, args.epochs, env, extra)
            found[name] = (float_digest(out), artifacts(out), accuracies(out))
            print(f"ran {name}", file=sys.stderr, flush=True)
    base_float, base_art, base_acc = found["baseline"]
    print(
        "| variant | float model | deployed artifacts | accuracies equal | largest difference |\n"
        "|---|---|---|---|---|"
    )
    for name, (fl, art, acc) in found.items():
        diffs = [abs(acc[k] - base_acc[k]) for k in base_acc if acc[k] == acc[k]]
        equal = sum(acc[k] == base_acc[k] for k in base_acc)
        print(
            f"| {name} | {'same' if fl == base_float else 'differs'} "
            f"| {'same' if art == base_art else 'differ'} | {equal} / {len(base_acc)} "
            f"| {max(diffs):.3f} |"
        )


if __name__ == "__main__":
    main()
