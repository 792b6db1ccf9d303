"""The device step's report as a JSON line."""

from __future__ import annotations

import dataclasses
import json

from qcore.edge.report import DeviceReport


def _report(**changes: object) -> DeviceReport:
    values: dict[str, object] = {}
    for f in dataclasses.fields(DeviceReport):
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
            continue
        values[f.name] = {"predicted": ["a", "b"], "predicted_index": [0, 1]}.get(f.name, 0)
    return DeviceReport(**{**values, **changes})  # type: ignore[arg-type]


def test_the_json_line_is_strict_and_names_classes() -> None:
    line = _report(confidence=float("nan"), latency_ms=float("inf")).to_dict()
    text = json.dumps(line, allow_nan=False)  # raises on NaN or infinity
    back = json.loads(text)
    assert back["confidence"] is None and back["latency_ms"] is None
    assert back["predicted"] == ["a", "b"] and "predicted_index" not in back
