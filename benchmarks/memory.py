"""Peak memory of a device process: predicting a batch against calibrating on it.

For each input shape the loaders produce (HAPT 6 x 128, USC-HAD 6 x 500) and a 1 x 500
input (one channel, long windows), an artifact is built from an untrained InceptionTime
(16 filters, depth 3, 6 classes) quantized to 4 bits, a core of 20 windows, a flip
network and head statistics; weights and data are seeded random numbers, which is all
memory depends on. Then three fresh NumPy-only processes each load the artifact and
handle one batch of 64 windows:

* ``predict``: ``Device.predict``;
* ``qcore``: ``Device.step`` with the paper's recipe (BatchNorm re-estimated on core +
  batch, 3 guarded flip passes, rollback guard, core update);
* ``slda``: ``Device.step`` with the streaming head alone (the default device).

Each process reports its peak resident set size (``VmHWM``); the table gives them and
the ratio of each step to prediction. A bare ``python -c "import numpy"`` is printed for
scale. Single-threaded, like a small device.

    .venv/bin/python benchmarks/memory.py [--batch 64]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from qcore.cloud.export import to_qmodel  # noqa: E402
from qcore.cloud.model import InceptionTime  # noqa: E402
from qcore.cloud.quantize import quantize_model  # noqa: E402
from qcore.config import DeviceConfig  # noqa: E402
from qcore.coreset.core import Core  # noqa: E402
from qcore.edge.artifact import build_artifact, save_artifact  # noqa: E402
from qcore.edge.flip import N_FEATURES, FlipNet  # noqa: E402
from qcore.edge.head import batch_stats  # noqa: E402
from qcore.edge.infer import forward_features  # noqa: E402

SHAPES = (("HAPT", 6, 128), ("USC-HAD", 6, 500), ("1 channel", 1, 500))
CLASSES, FILTERS, DEPTH, CORE, BITS, SEED = 6, 16, 3, 20, 4, 0

# One device process: load the artifact, handle one batch, print its own peak RSS.
CHILD = """
import json, sys
import numpy as np
from qcore.config import DeviceConfig
from qcore.edge.artifact import load_artifact
from qcore.edge.device import Device
from qcore.edge.report import peak_rss_bytes
art = load_artifact(sys.argv[1])
with np.load(sys.argv[2]) as f:
    X, y = f["X"], f["y"]
mode = sys.argv[3]
loaded = peak_rss_bytes()
if mode == "predict":
    Device(art, DeviceConfig(flip_steps=0, bn_mode="frozen")).predict(X)
elif mode == "qcore":
    Device(art, DeviceConfig()).step(X, y)
else:
    Device(art, DeviceConfig(head="slda", flip_steps=0, bn_mode="frozen")).step(X, y)
print(json.dumps({"loaded": loaded, "peak": peak_rss_bytes()}))
"""


class _Norm:
    def __init__(self, c: int) -> None:
        self.mean = np.zeros(c, np.float32)
        self.std = np.ones(c, np.float32)


def make_case(folder: Path, c: int, t: int, batch: int) -> tuple[Path, Path]:
    """A seeded artifact for ``c x t`` windows and one labelled batch, as files."""
    rng = np.random.default_rng(SEED)
    torch.manual_seed(SEED)
    model = InceptionTime(c, CLASSES, FILTERS, DEPTH).eval()
    X = rng.standard_normal((CORE + batch, c, t)).astype(np.float32)
    y = rng.integers(0, CLASSES, len(X))
    qm = to_qmodel(quantize_model(model, BITS, X, SEED))
    feedback = {
        name: rng.standard_normal((CLASSES, layer.weight.shape[0])).astype(np.float32)
        for name, layer in qm.layers.items()
    }
    hidden = 8
    net = FlipNet(
        feedback,
        rng.standard_normal((N_FEATURES, hidden)).astype(np.float32),
        np.zeros(hidden, np.float32),
        rng.standard_normal((hidden, 3)).astype(np.float32),
        np.zeros(3, np.float32),
        0.0,
    )
    core = Core(X[:CORE], y[:CORE], np.ones(CORE, np.int64), np.full(CORE, -1, np.int64))
    head = batch_stats(forward_features(qm, X[:CORE])[1], y[:CORE], CLASSES)
    names = tuple(str(k) for k in range(CLASSES))
    art = build_artifact(qm, core, net, _Norm(c), names, {}, device=DeviceConfig(), head=head)
    art_path, batch_path = folder / f"{c}x{t}.qcore", folder / f"{c}x{t}-batch.npz"
    save_artifact(art_path, art)
    np.savez(batch_path, X=X[CORE:], y=y[CORE:])
    return art_path, batch_path


def peak(art: Path, batch: Path, mode: str) -> dict[str, int]:
    cmd = [sys.executable, "-c", CHILD, str(art), str(batch), mode]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="windows per batch")
    args = parser.parse_args()
    torch.set_num_threads(1)
    mib = 1 / 2**20
    bare = subprocess.run(
        [sys.executable, "-c", "import numpy; print(open('/proc/self/status').read())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    numpy_peak = next(int(x.split()[1]) for x in bare.splitlines() if x.startswith("VmHWM"))
    print(f"python -c 'import numpy': peak {numpy_peak / 1024:.0f} MiB; batch {args.batch}\n")
    print(
        "| input | loaded | predict | qcore step | slda step | qcore / predict "
        "| slda / predict |\n|---|---|---|---|---|---|---|"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name, c, t in SHAPES:
            art, batch = make_case(Path(tmp), c, t, args.batch)
            p, q, s = (peak(art, batch, m) for m in ("predict", "qcore", "slda"))
            print(
                f"| {name} {c} x {t} | {p['loaded'] * mib:.0f} MiB | {p['peak'] * mib:.0f} MiB "
                f"| {q['peak'] * mib:.0f} MiB | {s['peak'] * mib:.0f} MiB "
                f"| {q['peak'] / p['peak']:.2f} | {s['peak'] / p['peak']:.2f} |"
            )


if __name__ == "__main__":
    main()
