"""The C runtime's memory, part by part, and how it grows with the model's shape.

For each shape (channels, classes, filters, depth, window length) an untrained InceptionTime
(seeded, BatchNorms as trained ones would leave them) is quantized at each bit-width and
exported with :func:`qcore.edge.c_export.export_c`; the sizes come from the exporter's own
accounting and the C compiler:

* RAM: the arena (``QC_ARENA_BYTES``), split into the scratch (activations of one window,
  or the float64 solve, whichever is larger) and the head (counts, means, weights, the
  scatter's lower triangle), plus the firmware's input window (``4 C T``); a stack of
  about 0.8 kB comes on top (the Cortex-M4 check measures it: docs/mcu-cortex-m4.md);
* flash: the constant arrays (packed weights, scales, zero points, folded BatchNorms, the
  normaliser, the shipped head statistics) and the runtime's code (``text`` of
  ``qcore_rt.o`` built by ``arm-none-eabi-gcc -mcpu=cortex-m4 -mthumb -mfloat-abi=hard
  -mfpu=fpv4-sp-d16 -O2`` when that compiler is found, else the host gcc's, marked ``*``).

Sizes do not depend on the weights' values, so an untrained model gives the trained one's.

    .venv/bin/python benchmarks/mcu_budget.py
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "edge"))
import edge_kit  # noqa: E402

from qcore.cloud.export import to_qmodel  # noqa: E402
from qcore.cloud.quantize import quantize_model  # noqa: E402
from qcore.config import DeviceConfig  # noqa: E402
from qcore.edge import head as H  # noqa: E402
from qcore.edge.artifact import Artifact  # noqa: E402
from qcore.edge.c_export import EXTRA_CLASSES, arena_bytes, dimensions, export_c  # noqa: E402
from qcore.edge.infer import forward_features  # noqa: E402

SHAPES = {  # name: (channels, classes, filters, depth, window)
    "default (HAPT)": (6, 6, 16, 3, 128),
    "32 filters": (6, 6, 32, 3, 128),
    "8 filters": (6, 6, 8, 3, 128),
    "depth 6": (6, 6, 16, 6, 128),
    "3 channels": (3, 6, 16, 3, 128),
    "window 256": (6, 6, 16, 3, 256),
    "12 classes": (6, 12, 16, 3, 128),
    "USC-HAD (window 500, 12 classes)": (6, 12, 16, 3, 500),
}
BITS = (2, 4, 8)
ARM = ["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]


def artifact(shape: tuple[int, ...], bits: int) -> Artifact:
    c, k, f, depth, t = shape
    X = np.random.default_rng(0).normal(0, 1, (24, c, t)).astype(np.float32)
    model = edge_kit.random_bn_model(c, k, f, depth, seed=0)
    qm = to_qmodel(quantize_model(model, bits, X, 0))
    names = tuple(f"c{i}" for i in range(k))
    device = DeviceConfig(head="slda", flip_steps=0)
    art = Artifact(qm, None, None, np.zeros(c), np.ones(c), names, {"window_length": t}, 0, device)
    feats = forward_features(qm, X)[1]
    return replace(art, head=H.batch_stats(feats, np.arange(24) % k, k))


def code_bytes(folder: Path) -> tuple[int, bool]:
    """``text`` of the runtime object: (bytes, built for the Cortex-M4)."""
    arm = shutil.which(ARM[0]) is not None
    cc = ARM if arm else ["gcc"]
    obj = folder / "rt.o"
    subprocess.run([*cc, "-std=c99", "-O2", "-ffp-contract=off", "-c", "-o", str(obj),
                    str(folder / "qcore_rt.c")], check=True)  # fmt: skip
    size = "arm-none-eabi-size" if arm else "size"
    out = subprocess.run([size, str(obj)], check=True, capture_output=True, text=True).stdout
    return int(out.splitlines()[1].split()[0]), arm


def main() -> None:
    torch.set_num_threads(1)
    print("| shape (C, K, F, depth, T) | bits | scratch | head | window | RAM | constants | code "
          "| flash |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name, shape in SHAPES.items():
        for bits in BITS:
            art = artifact(shape, bits)
            with tempfile.TemporaryDirectory() as tmp:
                report = export_c(art, tmp)
                code, arm = code_bytes(Path(tmp))
            assert art.head is not None
            dims = dimensions(art, art.head, EXTRA_CLASSES)
            arena = int(report["arena_bytes"])
            assert arena == arena_bytes(dims)
            d, kmax = dims["FEATURES"], dims["MAX_CLASSES"]
            head = 4 * (2 * kmax + 2 * kmax * d + d * (d + 1) // 2)
            window = 4 * shape[0] * shape[4]
            const = int(report["const_bytes"])
            print(
                f"| {name} {shape} | {bits} | {arena - head:,} | {head:,} | {window:,} | "
                f"{arena + window:,} | {const:,} | {code:,}{'' if arm else '*'} | "
                f"{const + code:,} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
