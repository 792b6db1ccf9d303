"""Device state persistence: always the previous or the new complete state."""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from qcore.cloud.export import to_qmodel
from qcore.cloud.quantize import quantize_model
from qcore.coreset.core import Core
from qcore.edge.artifact import Artifact, build_artifact, encode_artifact, save_artifact
from qcore.edge.state import (
    ARTIFACT_KEY,
    bind_state,
    load_state,
    remove_stale_temps,
    resume_or_start,
    save_state,
)
from qcore.errors import QCoreError

torch.set_num_threads(1)


class Norm:
    mean = np.zeros(3, dtype=np.float32)
    std = np.ones(3, dtype=np.float32)


@pytest.fixture(scope="module")
def art(tiny_model, tiny_xy) -> Artifact:
    X, y = tiny_xy
    qm = to_qmodel(quantize_model(tiny_model, 3, X, 0))
    core = Core(X[:8], y[:8], np.ones(8, np.int64), np.full(8, -1, np.int64))
    return build_artifact(qm, core, None, Norm(), ("a", "b", "c"), {"seed": 0})


def at_step(art: Artifact, step: int) -> Artifact:
    return Artifact(
        art.model,
        art.core,
        art.flipnet,
        art.normalizer_mean,
        art.normalizer_std,
        art.class_names,
        art.config,
        step,
    )


def test_save_load_round_trip_mode_0600(art: Artifact, tmp_path: Path) -> None:
    path = tmp_path / "state.qcore"
    save_state(path, at_step(art, 3))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    back = load_state(path)
    assert back.step == 3 and encode_artifact(back) == path.read_bytes()


def test_replacement_is_old_or_new_never_partial(
    art: Artifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.qcore"
    save_state(path, at_step(art, 1))
    old = path.read_bytes()
    real_fsync = os.fsync
    calls = {"n": 0}

    def crash_on_data_fsync(fd: int) -> None:  # dies after writing, before the rename
        calls["n"] += 1
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", crash_on_data_fsync)
    with pytest.raises(QCoreError, match="cannot save state"):
        save_state(path, at_step(art, 2))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert calls["n"] == 1
    assert path.read_bytes() == old and load_state(path).step == 1
    assert [p.name for p in tmp_path.iterdir()] == ["state.qcore"]
    save_state(path, at_step(art, 2))
    assert load_state(path).step == 2


def test_stale_temps_removed_and_resume_prefers_state(art: Artifact, tmp_path: Path) -> None:
    shipped = tmp_path / "model.qcore"
    state = tmp_path / "state.qcore"
    save_artifact(shipped, art)
    resumed_art, resumed = resume_or_start(state, shipped)
    assert not resumed and resumed_art.step == 0
    save_state(state, at_step(art, 5))
    crash_leftover = tmp_path / ".state.qcore.abc123.tmp"
    crash_leftover.write_bytes(b"partial")
    unrelated = tmp_path / ".other.qcore.abc.tmp"
    unrelated.write_bytes(b"keep")
    resumed_art, resumed = resume_or_start(state, shipped)
    assert resumed and resumed_art.step == 5
    assert not crash_leftover.exists() and unrelated.exists()
    assert remove_stale_temps(state) == 0


def test_corrupt_state_is_an_error_not_a_silent_restart(art: Artifact, tmp_path: Path) -> None:
    shipped = tmp_path / "model.qcore"
    state = tmp_path / "state.qcore"
    save_artifact(shipped, art)
    save_state(state, at_step(art, 4))
    data = bytearray(state.read_bytes())
    data[-1] ^= 0xFF
    state.write_bytes(bytes(data))
    with pytest.raises(QCoreError, match="corrupt"):
        resume_or_start(state, shipped)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(QCoreError, match="does not exist"):
        load_state(tmp_path / "none.qcore")
    with pytest.raises(QCoreError, match="does not exist"):
        resume_or_start(tmp_path / "none.qcore", tmp_path / "nothing.qcore")


def test_a_save_syncs_the_state_then_the_folder_after_the_rename(
    art: Artifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # without the folder's fsync a power cut can undo the rename: the state steps back
    path = tmp_path / "state.qcore"
    save_state(path, at_step(art, 1))
    old = path.read_bytes()
    real_fsync, real_open = os.fsync, os.open
    synced: list[tuple[str, bytes]] = []  # (what the descriptor is, what path held then)
    opened_folders: list[int] = []

    def fsync(fd: int) -> None:
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        synced.append((kind, path.read_bytes()))
        real_fsync(fd)

    def open_(p, flags, *args, **kwargs) -> int:
        if Path(p) == tmp_path:
            opened_folders.append(flags)
        return real_open(p, flags, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "open", open_)
    save_state(path, at_step(art, 2))
    new = path.read_bytes()
    assert new != old and load_state(path).step == 2
    assert synced == [("file", old), ("folder", new)]
    assert len(opened_folders) == 1


def test_a_failed_save_names_the_state_and_the_reason(
    art: Artifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(src, dst) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(
        QCoreError, match=r"^cannot save state .*s\.qcore: No space left on device$"
    ):
        save_state(tmp_path / "s.qcore", art)

    def failed(src, dst) -> None:  # an OSError without errno and strerror
        raise OSError("boom")

    monkeypatch.setattr(os, "replace", failed)
    with pytest.raises(QCoreError, match=r"^cannot save state .*s\.qcore: boom$"):
        save_state(tmp_path / "s.qcore", art)
    assert list(tmp_path.iterdir()) == []


def test_stale_temps_are_counted_and_one_that_vanishes_is_no_error(
    art: Artifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state.qcore"
    for tag in ("a1", "b2", "c3"):
        (tmp_path / f".state.qcore.{tag}.tmp").write_bytes(b"partial")
    assert remove_stale_temps(state) == 3 and list(tmp_path.iterdir()) == []
    for tag in ("a1", "b2"):
        (tmp_path / f".state.qcore.{tag}.tmp").write_bytes(b"partial")
    real_unlink = Path.unlink

    def raced(self: Path, *args, **kwargs) -> None:  # another cleaner got there first
        real_unlink(self, *args, **kwargs)
        if self.name == ".state.qcore.a1.tmp":
            raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(Path, "unlink", raced)
    assert remove_stale_temps(state) == 1 and list(tmp_path.iterdir()) == []


def test_a_fresh_start_uses_the_artifact_object_it_was_given(art: Artifact, tmp_path: Path):
    started, resumed = resume_or_start(tmp_path / "state.qcore", art)
    assert started is art and not resumed


SHA_A, SHA_B = "a" * 52 + "0123456789ab", "b" * 64


def test_a_state_is_bound_to_the_artifact_it_grew_from(art: Artifact) -> None:
    assert ARTIFACT_KEY == "artifact_sha256"
    fresh = bind_state(art, SHA_A, "model.qcore", "state.qcore", resumed=False)
    assert fresh.runtime == {**art.runtime, ARTIFACT_KEY: SHA_A}
    again = bind_state(fresh, SHA_A, "model.qcore", "state.qcore")  # resumed, same artifact
    assert again.runtime[ARTIFACT_KEY] == SHA_A and again.model is art.model
    with pytest.raises(QCoreError) as err:
        bind_state(fresh, SHA_B, "other.qcore", "state.qcore")
    assert str(err.value) == (
        "state state.qcore grew from another artifact (SHA-256 aaaaaaaaaaaa...), not "
        "other.qcore (bbbbbbbbbbbb...): give the artifact it started from, or a new state file"
    )
    # a calibrated state shipped as an artifact starts new states from itself
    shipped = bind_state(fresh, SHA_B, "other.qcore", "new.qcore", resumed=False)
    assert shipped.runtime[ARTIFACT_KEY] == SHA_B
    # a state saved before states were bound is accepted and bound now
    unbound = replace(art, runtime={"resets": 2})
    bound = bind_state(unbound, SHA_B, "model.qcore", "state.qcore")
    assert bound.runtime == {"resets": 2, ARTIFACT_KEY: SHA_B} and unbound.runtime == {"resets": 2}
