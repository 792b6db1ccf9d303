"""``qcore mcu check``: the exported C runtime (``qcore export --format c``) built for the
host or for a Cortex-M4, streamed through the same batches as the NumPy device, and
compared with it.

The check firmware (package data under ``mcu_firmware/``) calls only the ``qcore_rt.h``
API: ``fw_main.c`` reads records (a label and one raw window, or the end of a batch) and
writes, per window, the prediction, both heads' logits, the pooled features and the
counter ticks of one prediction; per batch, the ticks of its head updates and of the
solve; at the end the head statistics and the stack high-water mark. It builds

* for the ``host`` with ``gcc`` (``fw_host.c``: stdio files, ``CLOCK_MONOTONIC``
  nanoseconds), and
* for the ``cortex-m4`` (QEMU's ``mps2-an386``, Cortex-M4F, FPU on) with
  ``arm-none-eabi-gcc`` (``startup.S``, ``mps2_an386.ld``, ``fw_mcu.c``: semihosting
  files, the CMSDK timer 0, a painted stack), run under ``qemu-system-arm -icount
  shift=0``: every instruction advances virtual time by 1 ns, so the 25 MHz timer ticks
  once per 40 instructions. The firmware times a loop of known length first
  (``fw_count_loop``: 2 instructions per iteration); the check derives instructions per
  tick from it and refuses counts when it is off. Instructions are not cycles: a real
  Cortex-M4 spends more than one cycle on loads, branches, divisions and double-precision
  arithmetic (software on an FPU without doubles), so the times at 80 MHz are lower bounds.

The NumPy side is :class:`qcore.edge.device.Device` with what the C runtime implements:
the artifact's head (the streaming head for ``head=slda``), no backbone calibration
(``flip_steps=0``, ``bn_mode=frozen``), learning from every labelled batch
(``policy=every``), no user guard, no pseudo-labels, no label requests, no clipping, and
new classes read from text labels. Each batch is predicted before it is learnt on both
sides; the C adds the batch's windows one at a time and solves once per batch, the
device adds the batch at once (the same statistics up to float rounding). Compared:
predictions (agreement, and every window whose NumPy top-two logits differ by more than
``1e-3`` of the largest logit must agree: the C sums in another order, so rounding can
move a logit by far less than that), logits and features (largest difference relative to
the largest value), head statistics (same), memory from the ELF and timings.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qcore.edge.artifact import Artifact, load_artifact
from qcore.edge.batches import folder_batches, load_batch
from qcore.edge.device import Device
from qcore.edge.head import UNSEEN
from qcore.edge.head import logits as head_logits
from qcore.edge.infer import forward_features
from qcore.edge.mcu_build import (
    MARGIN,
    NO_LABEL,
    Output,
    build,
    counts,
    dev_X,
    memory,
    parse,
    records,
    run_firmware,
    tools,
)
from qcore.errors import QCoreError

# ------------------------------------------------------------------- the NumPy side


def reference_device(art: Artifact, allow_new_classes: bool) -> Device:
    """The NumPy device doing what the C runtime does (see the module docstring)."""
    cfg = art.device.replace(
        flip_steps=0, bn_mode="frozen", policy="every", reset_window=0,
        pseudo_threshold=None, ask_fraction=None, share_clip=None,
    )  # fmt: skip
    return Device(art, cfg, allow_new_classes=allow_new_classes)


@dataclass
class Reference:
    """The NumPy device's view of the stream: per window its prediction and the logits of
    the head it predicts with (float64, ``UNSEEN`` where a class is not predicted yet),
    the model head's logits and the pooled features; the labels as indices; the final
    head statistics (None for a device predicting with the model's own head); the device;
    how many classes the artifact had before the stream."""

    pred: np.ndarray
    logits: list[np.ndarray]
    model_logits: np.ndarray
    features: np.ndarray
    labels: list[np.ndarray]
    stats: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    device: Device
    deployed_classes: int


def reference(art: Artifact, batches: Sequence[tuple[np.ndarray, np.ndarray | None]]) -> Reference:
    """Stream ``batches`` (raw windows, labels as the device reads them, or None) through
    :func:`reference_device`."""
    text = any(y is not None and y.dtype.kind in "US" for _, y in batches)
    dev = reference_device(art, allow_new_classes=text)
    preds: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    model_logits: list[np.ndarray] = []
    features: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for X, y in batches:
        Xv, idx, _ = dev.validate(X, y)
        ml, feats = forward_features(dev.art.model, dev.normalize(Xv))
        scores = ml if dev.head is None else head_logits(dev.head.weight, dev.head.bias, feats)
        report = dev.step(X, y)
        pred = np.asarray(report.predicted_index, dtype=np.int64)
        if not np.array_equal(pred, scores.argmax(1)):
            raise QCoreError("the NumPy device predicted other classes than its own logits")
        preds.append(pred)
        logits.extend(np.asarray(s, dtype=np.float64) for s in scores)
        model_logits.append(ml)
        features.append(feats)
        labels.append(np.full(len(Xv), NO_LABEL, np.int64) if idx is None else idx)
    head = dev.art.head
    stats = None if dev.head is None or head is None else (head.count, head.mean, head.scatter)
    return Reference(
        np.concatenate(preds), logits, np.concatenate(model_logits),
        np.concatenate(features), labels, stats, dev, len(art.class_names),
    )  # fmt: skip


# ---------------------------------------------------------------------- the check


def read_batches(stream: str | Path) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """``(name, X, y or None)`` of every batch in a folder (as ``qcore device`` reads it);
    a bad batch is an error here: a check compares whole streams."""
    out = []
    for name, payload in folder_batches(Path(stream)):
        if isinstance(payload, QCoreError):
            raise QCoreError(f"batch {name}: {payload}")
        X, y = load_batch(payload, name)
        out.append((name, X, y))
    if not out:
        raise QCoreError(f"{stream} holds no .npz batches")
    return out


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    """Largest absolute difference relative to the largest absolute wanted value."""
    scale = float(np.abs(want).max()) if want.size else 0.0
    return float(np.abs(got - want).max()) / scale if scale > 0 else float(np.abs(got).max())


def agreement(got: np.ndarray, want: np.ndarray, logits: Sequence[np.ndarray]) -> dict[str, Any]:
    """Share of equal predictions; whether every window with a clear NumPy margin (top
    two logits more than :data:`MARGIN` of the largest logit apart) agrees."""
    seen = [v[v > UNSEEN / 2] for v in logits]
    scale = max((float(np.abs(v).max()) for v in seen if v.size), default=1.0)
    margins = np.array([np.diff(np.sort(v)[-2:])[0] if v.size > 1 else np.inf for v in seen])
    clear = margins > MARGIN * scale
    same = got == want
    return {
        "windows": int(len(got)),
        "agree": float(same.mean()) if len(got) else 1.0,
        "disagree": int((~same).sum()),
        "clear": int(clear.sum()),
        "clear_disagree": int((~same & clear).sum()),
    }


def _logit_diff(got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> float:
    worst, scale = 0.0, 0.0
    for g, w in zip(got, want, strict=True):
        # a class the C added earlier in the batch is UNSEEN until the batch is learnt
        g, extra = g[: len(w)], g[len(w) :]
        seen = w > UNSEEN / 2
        if (
            len(g) != len(w)
            or (extra > UNSEEN / 2).any()
            or not np.array_equal(g > UNSEEN / 2, seen)
        ):
            return float("inf")
        if seen.any():
            worst = max(worst, float(np.abs(g[seen] - w[seen]).max()))
            scale = max(scale, float(np.abs(w[seen]).max()))
    return worst / scale if scale > 0 else worst


def _numpy_timing(dev: Device, X: np.ndarray, repeats: int = 3) -> dict[str, float]:
    """Milliseconds per window of the NumPy device's prediction, one window at a time
    and the whole batch at once (best of ``repeats``)."""
    one = min(X.shape[0], 16)

    def best(fn) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    single = best(lambda: [dev.predict(X[i : i + 1]) for i in range(one)]) / one
    batched = best(lambda: dev.predict(X)) / X.shape[0]
    return {"numpy_ms_batch1": 1e3 * single, "numpy_ms_batched": 1e3 * batched,
            "numpy_batch": int(X.shape[0])}  # fmt: skip


def compare(ref: Reference, out: Output) -> dict[str, Any]:
    """Agreement of the C run with the NumPy device (see the module docstring)."""
    n = len(ref.pred)
    if len(out.pred) != n:
        raise QCoreError(f"the C run predicted {len(out.pred)} windows of {n}")
    uses_head = ref.device.head is not None
    c_logits = out.head_logits if uses_head else out.model_logits
    got = np.array(out.pred)
    per_batch, start = [], 0
    for lab in ref.labels:
        stop = start + len(lab)
        a = agreement(got[start:stop], ref.pred[start:stop], ref.logits[start:stop])
        row = {k: a[k] for k in ("windows", "agree", "clear_disagree")}
        # predictions of classes the stream added, on each side
        row["added_c"] = int((got[start:stop] >= ref.deployed_classes).sum())
        row["added_numpy"] = int((ref.pred[start:stop] >= ref.deployed_classes).sum())
        per_batch.append(row)
        start = stop
    res: dict[str, Any] = {
        "predictions": agreement(got, ref.pred, ref.logits),
        "per_batch": per_batch,
        "logits_rel_diff": _logit_diff(c_logits, ref.logits),
        "model_logits_rel_diff": _rel(np.array(out.model_logits), ref.model_logits),
        "features_rel_diff": _rel(np.array(out.features), ref.features),
        "head_stats_rel_diff": None,
    }
    if ref.stats is not None and out.stats is not None:
        diffs = []
        for got, want in zip(out.stats, ref.stats, strict=True):
            if got.shape != want.shape:
                diffs.append(float("inf"))
            else:
                diffs.append(_rel(got.astype(np.float64), want.astype(np.float64)))
        res["head_stats_rel_diff"] = max(diffs)
    return res


def check(
    export_dir: str | Path,
    stream: str | Path | Sequence[tuple[np.ndarray, np.ndarray | None]],
    target: str = "host",
    *,
    artifact: str | Path | Artifact | None = None,
    timing: bool = True,
    timeout: float = 3600.0,
) -> dict[str, Any]:
    """Build the runtime in ``export_dir`` for ``target``, stream the batches of
    ``stream`` (a folder of ``.npz`` batches, or ``(X, y)`` pairs) through it and
    through the NumPy device, and report agreement, memory and counts (a dict, JSON-ready).

    ``artifact``: the artifact that was exported (default: ``export_dir/model.qcore``)."""
    tools(target)
    folder = Path(export_dir)
    if artifact is None:
        artifact = folder / "model.qcore"
        if not artifact.is_file():
            raise QCoreError(
                f"{folder} holds no model.qcore: give the exported artifact (--artifact)"
            )
    art = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
    if isinstance(stream, (str, Path)):
        batches = [(X, y) for _, X, y in read_batches(stream)]
    else:
        batches = list(stream)
    ref = reference(art, batches)
    windows = [(dev_X(X), lab) for (X, _), lab in zip(batches, ref.labels, strict=True)]
    with tempfile.TemporaryDirectory(prefix="qcore-mcu-build-") as tmp:
        program = build(folder, tmp, target)
        mem = memory(program) if target == "cortex-m4" else None
        data = run_firmware(program, records(windows), target, timeout)
    qm = art.model
    out = parse(data, qm.n_classes, 4 * qm.filters)
    res: dict[str, Any] = {
        "target": target,
        "export": str(folder),
        "bits": qm.bits,
        "batches": len(batches),
        "windows": len(ref.pred),
        "learnt": int(sum(int((lab >= 0).sum()) for lab in ref.labels)),
        "classes": len(ref.device.art.class_names),
        **compare(ref, out),
    }
    if mem is not None:
        res["memory"] = {"flash": mem.flash, "ram_static": mem.ram_static, "arena": mem.arena,
                         "stack": out.stack, "ram": mem.ram_static + out.stack,
                         "sections": mem.sections}  # fmt: skip
        res["counts"] = counts(out)
    else:
        res.update(_host_times(out, art, batches, timing))
    return res


def _host_times(out: Output, art: Artifact, batches: list, timing: bool) -> dict[str, Any]:
    """A host build's milliseconds per window and per learnt batch, and with ``timing``
    the NumPy device's on the first labelled batch (a stream batch's size), else the
    first."""
    learnt = [b for b in out.learnt if b[0] > 0]
    res: dict[str, Any] = {
        "host_ms_per_window": 1e-6 * float(np.mean(out.ticks)) if out.ticks else None,
        "host_ms_per_learnt_batch": (
            1e-6 * float(np.mean([b[1] + b[2] for b in learnt])) if learnt else None
        ),
    }
    if timing:
        X = next((X for X, y in batches if y is not None), batches[0][0])
        res.update(_numpy_timing(reference_device(art, False), X))
    return res


def passed(res: dict[str, Any], min_agree: float = 0.995, stats_tol: float = 1e-4) -> bool:
    """Whether a check meets the acceptance: >= ``min_agree`` of the predictions, every
    clear one, head statistics within ``stats_tol`` relative (where there are any)."""
    p = res["predictions"]
    stats = res["head_stats_rel_diff"]
    return bool(
        p["agree"] >= min_agree
        and p["clear_disagree"] == 0
        and (stats is None or stats <= stats_tol)
    )
