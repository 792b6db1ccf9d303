"""Dependencies point one way: core <- coreset <- edge <- cloud <- methods <- eval <- cli.

Every ``import`` of a ``qcore`` module in ``src/qcore`` (at module level or inside a
function) is read from the source; a module may import its own package or a lower layer,
never a higher one, and the module graph has no cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "qcore"
# layer of each top-level part of the package: imports go to lower layers (or the same part)
LAYERS = {
    "errors": 0,
    "threads": 0,
    "core": 1,
    "device_config": 1.5,  # the device settings, which config builds on
    "config": 2,
    "data": 2,
    "coreset": 3,
    "edge": 4,
    "cloud": 5,
    "methods": 6,
    "eval": 7,
    "cli": 8,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """``qcore`` modules imported anywhere in ``path`` (``from a import b`` gives ``a.b``
    when ``a.b`` is a module, else ``a``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("qcore")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qcore"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in MODULES else node.module)
    return out


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}
GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _part(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def test_every_part_has_a_layer():
    assert {_part(m) for m in MODULES} - {"__init__"} <= set(LAYERS)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    if module == "qcore":
        return
    layer = LAYERS[_part(module)]
    up = [
        m
        for m in GRAPH[module]
        if m != "qcore" and _part(m) != _part(module) and LAYERS[_part(m)] >= layer
    ]
    assert not up, f"{module} imports {up}, which are not below it"


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(GRAPH.get(m, ())):
            if n not in MODULES:
                continue
            assert state.get(n) != 1, f"import cycle: {' -> '.join([*path, m, n])}"
            if n not in state:
                visit(n, [*path, m])
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m, [])


def test_the_walk_sees_imports_inside_functions():
    """The checker must be able to fail: a function-level import is an edge too."""
    assert "qcore.cloud.pipeline" in GRAPH["qcore.eval.runner"] or any(
        "qcore.cloud" in m for m in GRAPH["qcore.eval.runner"]
    )
    assert "qcore.methods.all" in GRAPH["qcore.eval.grid"]  # imported inside a function


def loaded_by(statements: str, prefixes: tuple[str, ...]) -> list[str]:
    """The modules starting with ``prefixes`` that a fresh interpreter has loaded after
    running ``statements`` (which may assert on ``sys.modules`` themselves)."""
    code = (
        f"import sys\n{statements}\nprint([m for m in sys.modules if m.startswith({prefixes!r})])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return ast.literal_eval(out.stdout.strip())


def test_importing_the_config_loads_no_edge_and_no_torch():
    assert loaded_by("import qcore.config", ("qcore.edge", "torch")) == []


def test_the_public_names_load_on_first_use_and_the_edge_ones_load_no_torch():
    statements = (
        "import qcore\n"
        "assert [m for m in sys.modules if m.startswith('qcore.')] == ['qcore.errors']\n"
        "from qcore import Device, DeviceConfig, load_artifact\n"
        "from qcore.edge import predict"
    )
    assert loaded_by(statements, ("torch", "qcore.cloud")) == []
