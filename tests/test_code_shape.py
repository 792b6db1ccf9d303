"""The code stays small enough to read: no module in ``src/qcore`` over 400 lines and no
function in ``src/qcore/edge`` (what ships to a device) over 60 lines.

A function's length counts from its ``def`` line (decorators excluded) to its last line,
docstring included, as ``ast`` reports them.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "qcore"
MAX_MODULE_LINES = 400
MAX_EDGE_FUNCTION_LINES = 60


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def long_functions(path: Path, limit: int, root: Path = SRC.parent) -> list[str]:
    """``path:line name (n lines)`` for each function of ``path`` over ``limit`` lines."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for f in _functions(tree):
        n = (f.end_lineno or f.lineno) - f.lineno + 1
        if n > limit:
            out.append(f"{path.relative_to(root)}:{f.lineno} {f.name} ({n} lines)")
    return out


def test_no_module_over_400_lines() -> None:
    sizes = {p: len(p.read_text().splitlines()) for p in sorted(SRC.rglob("*.py"))}
    long = [
        f"{p.relative_to(SRC.parent)} ({n} lines)" for p, n in sizes.items() if n > MAX_MODULE_LINES
    ]
    assert not long, "modules over 400 lines: " + ", ".join(long)


def test_no_edge_function_over_60_lines() -> None:
    long = [
        s
        for p in sorted((SRC / "edge").rglob("*.py"))
        for s in long_functions(p, MAX_EDGE_FUNCTION_LINES)
    ]
    assert not long, "edge functions over 60 lines: " + ", ".join(long)


def test_the_checker_counts_lines(tmp_path: Path) -> None:
    """The counter itself: a 61-line function is caught, a 60-line one is not."""
    body = "\n".join(f"    x{i} = {i}" for i in range(59))
    (tmp_path / "f.py").write_text(f"def ok():\n{body}\n\n\ndef long():\n{body}\n    return 1\n")
    found = long_functions(tmp_path / "f.py", MAX_EDGE_FUNCTION_LINES, root=tmp_path)
    assert len(found) == 1 and "long (61 lines)" in found[0]
