"""The public names: importable from ``qcore`` and ``qcore.edge``, documented, lazy."""

from __future__ import annotations

import subprocess
import sys

import pytest

import qcore
import qcore.edge


@pytest.mark.parametrize("package", [qcore, qcore.edge])
def test_every_public_name_resolves_and_is_documented(package) -> None:
    listed = set(package.__all__) - {"QCoreError", "__version__"}
    assert listed == set(package._PUBLIC)
    for name in listed:
        value = getattr(package, name)
        assert value.__module__ == package._PUBLIC[name], name
        assert value.__doc__ and len(value.__doc__.strip()) > 20, f"{name} has no docstring"
    assert listed <= set(dir(package))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        package.nope  # noqa: B018


def test_edge_names_are_the_packages_and_load_no_torch() -> None:
    assert qcore.Device is qcore.edge.Device and qcore.Artifact is qcore.edge.Artifact
    code = (
        "import sys\n"
        "import qcore\n"
        "assert [m for m in sys.modules if m.startswith('qcore.')] == ['qcore.errors']\n"
        "from qcore import Device, DeviceConfig, load_artifact\n"
        "from qcore.edge import predict\n"
        "print([m for m in sys.modules if m.startswith(('torch', 'qcore.cloud'))])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
