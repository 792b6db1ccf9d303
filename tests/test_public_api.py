"""The public names: importable from ``qcore`` and ``qcore.edge``, documented (that they
load lazily, without torch, is checked beside the other import checks, test_imports.py)."""

from __future__ import annotations

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


def test_the_edge_names_are_the_packages() -> None:
    assert qcore.Device is qcore.edge.Device and qcore.Artifact is qcore.edge.Artifact
