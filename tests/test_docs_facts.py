"""Facts the docs repeat are checked against the code: the streaming head's size, the
device settings, the bench presets, the benchmark scripts and the committed quick grid.

Each test reads the sentence that states the fact and compares it with what the code
gives, so a new setting, preset or script, or a changed size, fails here until the
docs say it.
"""

from __future__ import annotations

import csv
import re
from dataclasses import fields
from pathlib import Path

from qcore.config import DeviceConfig
from qcore.edge.head import empty_stats

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _docs() -> dict[str, str]:
    paths = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    paths += sorted((ROOT / "src" / "qcore").rglob("*.py"))
    return {str(p.relative_to(ROOT)): p.read_text() for p in paths}


def _backticked(text: str) -> set[str]:
    return set(re.findall(r"`([\w.]+)`", text))


def test_head_size_claims_match_the_statistics() -> None:
    """Every "N bytes for 6 classes and 64 features" is what 6 x 64 statistics take."""
    size = empty_stats(6, 64).nbytes
    claim = re.compile(r"([\d,]+)\s+bytes\s+for\s+6\s+classes\s+and\s+64\s+features")
    found = [
        (where, int(m.group(1).replace(",", "")))
        for where, text in _docs().items()
        for m in claim.finditer(text)
    ]
    assert len(found) >= 4, f"expected the claim in README, method, reliability, head: {found}"
    assert all(n == size for _, n in found), f"the statistics take {size} bytes: {found}"


def test_readme_lists_every_device_setting() -> None:
    m = re.search(r"for the device\s+settings \((.*?)\);", README, re.S)
    assert m, "README: the sentence listing the device settings is missing"
    assert _backticked(m.group(1)) == {f.name for f in fields(DeviceConfig)}


def test_readme_lists_every_preset() -> None:
    from qcore.eval.grid import PRESETS

    m = re.search(r"`qcore bench --preset ([\w|]+)`", README)
    assert m, "README: the `qcore bench --preset a|b|...` line is missing"
    assert m.group(1).split("|") == list(PRESETS)


def test_readme_lists_every_benchmark_script() -> None:
    m = re.search(r"\*\*Benchmarks\*\*(.*?)(?:\n- |\n\n|\Z)", README, re.S)
    assert m, "README: the Benchmarks bullet of Development is missing"
    listed = {s for s in _backticked(m.group(1)) if s.endswith(".py")}
    assert listed == {p.name for p in (ROOT / "benchmarks").glob("*.py")}


def test_committed_quick_grid_is_the_whole_preset() -> None:
    """docs/bench-quick holds one row per pair, seed, bit-width and method of the preset."""
    from qcore.eval.grid import preset

    grid = preset("quick")
    cells = len(grid.pairs) * len(grid.seeds) * len(grid.base.bits)
    expected = cells * len(grid.base.methods)
    with open(ROOT / "docs" / "bench-quick" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == expected
    assert {r["method"] for r in rows} == set(grid.base.methods)
