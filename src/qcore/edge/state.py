"""The device's running state on disk: the artifact it runs, rewritten after every step.

The state file uses the artifact format (:mod:`qcore.edge.artifact`), so a state can be
inspected, exported or shipped like any artifact. Persistence is crash-safe: every save
goes through :func:`qcore.core.fileio.write_atomic` (temporary file in the same
folder, fsync, atomic rename, fsync of the folder), so ``path`` always holds either the
previous or the new complete state, never a mixture. The only trace a crash can leave
is a temporary ``.NAME.*.tmp`` file beside the state, which :func:`remove_stale_temps`
clears before a device resumes.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

from qcore.core.fileio import write_atomic
from qcore.edge.artifact import Artifact, encode_artifact, load_artifact
from qcore.errors import QCoreError


def save_state(path: str | Path, art: Artifact) -> None:
    """Atomically replace the state at ``path`` by ``art`` (mode 0o600)."""
    data = encode_artifact(art)  # encode first: a bad artifact never touches the file
    try:
        write_atomic(path, data)
    except OSError as exc:
        raise QCoreError(f"cannot save state {path}: {exc.strerror or exc}") from None


def load_state(path: str | Path) -> Artifact:
    """The state saved at ``path``, fully verified (see :func:`load_artifact`)."""
    return load_artifact(path)


def remove_stale_temps(path: str | Path) -> int:
    """Delete temporary files a crashed save of ``path`` left behind; return how many.

    Only names of the exact form ``.NAME.*.tmp`` that :func:`write_atomic` creates for
    this ``path`` are touched. Call it when no other process writes the same state.
    """
    path = Path(path)
    removed = 0
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed += 1
    return removed


def resume_or_start(
    state_path: str | Path, artifact: str | Path | Artifact
) -> tuple[Artifact, bool]:
    """The saved state if ``state_path`` exists, else the shipped artifact (its path, or
    the artifact already read); and which one.

    Returns ``(artifact, resumed)``. A corrupt state is an error, not a silent restart:
    falling back to the shipped artifact would discard calibration without saying so.
    """
    state_path = Path(state_path)
    remove_stale_temps(state_path)
    if state_path.exists():
        return load_state(state_path), True
    return (artifact if isinstance(artifact, Artifact) else load_artifact(artifact)), False


ARTIFACT_KEY = "artifact_sha256"  # runtime: the SHA-256 of the artifact the state grew from


def bind_state(
    art: Artifact, sha256: str, artifact: str | Path, state: str | Path, *, resumed: bool = True
) -> Artifact:
    """``art`` (a shipped artifact, ``resumed=False``, or a resumed state) bound to the
    artifact file whose SHA-256 is ``sha256``: a fresh start records it, whatever ``art``
    itself grew from (a calibrated state shipped as an artifact starts new states from
    itself); a resumed state must carry the same one (a state grown from another model is
    an error naming both files). A state saved before states were bound is accepted and
    bound now."""
    grew_from = art.runtime.get(ARTIFACT_KEY) if resumed else None
    if grew_from is not None and grew_from != sha256:
        raise QCoreError(
            f"state {state} grew from another artifact (SHA-256 {grew_from[:12]}...), "
            f"not {artifact} ({sha256[:12]}...): give the artifact it started from, or a "
            "new state file"
        )
    return replace(art, runtime={**art.runtime, ARTIFACT_KEY: sha256})
