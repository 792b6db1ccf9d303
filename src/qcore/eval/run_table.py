"""The table ``qcore run`` prints: what each results row measured, with units in the
column names (``step_ms``, ``cloud_s``), built from the run's result (the content of
``results.json``)."""

from __future__ import annotations

import textwrap

import numpy as np

# the run table's columns: name, results.json key
RUN_COLUMNS = (
    ("method", "method"),
    ("bits", "bits"),
    ("target_before", "target_acc_before"),
    ("target_after", "target_acc"),
    ("source_before", "source_acc_before"),
    ("source_after", "source_acc"),
    ("target_ece_before", "target_ece_before"),
    ("target_ece_after", "target_ece"),
    ("step_ms", "step_ms"),
    ("cloud_s", "cloud_s"),
    ("device_bytes", "device_bytes"),
)
LABEL_COLUMNS = (("label_fraction", "label_fraction"),)
NEW_CLASS_COLUMNS = (("old_acc", "old_acc"), ("new_recall", "new_recall"),
                     ("windows_to_recall", "windows_to_recall"))  # fmt: skip
CLOUD_TIMES = ("train_s", "quantize_s", "calibrate_s", "cloud_s")  # one per kind of row
RUN_LEGEND = (
    "before: what ships (the device of that method) before the first batch; after: after "
    "the stream (float, ptq, backprop-source: the cloud's models, no stream); target_ece: "
    "expected calibration error of the method's confidence on the target test set (10 "
    "equal-width bins); step_ms: mean "
    "device milliseconds per stream step; cloud_s: cloud seconds of the row (float: "
    "training, ptq: quantization, backprop-source: back-prop on the source, a method: its "
    "preparation), 'cached' when reused from the cache"
)


def _cell(r: dict, key: str, fraction: float) -> str:
    if key == "cloud_s":
        if r.get("cached"):
            return "cached"
        key = next((k for k in CLOUD_TIMES if k in r), key)
    value = fraction if key == "label_fraction" and "steps" in r else r.get(key)
    if key == "bits" and value is None:
        return "float"
    if value is None or isinstance(value, str):
        return "-" if value is None else value
    if isinstance(value, float):
        digits = 1 if key.endswith("_s") else 2 if key.endswith("_ms") else 3
        return f"{value:.{digits}f}" if np.isfinite(value) else "-"
    return str(value)


def run_table(result: dict) -> str:
    """The table ``qcore run`` prints from its ``result``: a row per results row, columns
    :data:`RUN_COLUMNS`, plus the label fraction when the stream had few labels and the
    new-class results when the cloud held classes out; then :data:`RUN_LEGEND`."""
    fraction = float(result["config"].get("label_fraction", 1.0))
    columns = RUN_COLUMNS + (LABEL_COLUMNS if fraction < 1.0 else ())
    if any("new_recall" in r for r in result["results"]):
        columns += NEW_CLASS_COLUMNS
    cells = [[name for name, _ in columns]]
    cells += [[_cell(r, key, fraction) for _, key in columns] for r in result["results"]]
    widths = [max(len(row[j]) for row in cells) for j in range(len(columns))]
    lines = [
        "  ".join(
            c.ljust(w) if j == 0 else c.rjust(w)
            for j, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    return "\n".join([*lines, "", *textwrap.wrap(RUN_LEGEND, 100)])
