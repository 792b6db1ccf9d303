"""Files written whole or not at all (qcore.core.fileio)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from qcore.core.fileio import (
    finite_json,
    read_regular_file,
    write_atomic,
    write_json_atomic,
)
from qcore.errors import QCoreError


class SyncLog:
    """Records, in order, every fsync (what the descriptor is, what ``path`` held at that
    moment), every rename and every opening and closing of a folder; the real functions
    still run."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
        self.events: list[tuple] = []
        self.path = path
        real_fsync, real_replace, real_open, real_close = os.fsync, os.replace, os.open, os.close

        def fsync(fd: int) -> None:
            st = os.fstat(fd)
            held = self.path.read_bytes() if self.path.exists() else None
            self.events.append(("fsync", stat.S_ISDIR(st.st_mode), st.st_ino, held))
            real_fsync(fd)

        def replace(src, dst) -> None:
            self.events.append(("replace", Path(src), Path(dst)))
            real_replace(src, dst)

        folder_fds: set[int] = set()

        def open_(p, flags, *args, **kwargs) -> int:  # logs the opening of a folder
            fd = real_open(p, flags, *args, **kwargs)
            if os.path.isdir(p):
                folder_fds.add(fd)
                self.events.append(("open", Path(p), flags, fd))
            return fd

        def close(fd: int) -> None:
            if fd in folder_fds:
                self.events.append(("close", fd))
            real_close(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "open", open_)
        monkeypatch.setattr(os, "close", close)

    def kinds(self) -> list[str]:
        return [e[0] for e in self.events]


def test_write_atomic_syncs_the_data_renames_then_syncs_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.qcore"
    path.write_bytes(b"old")
    log = SyncLog(monkeypatch, path)
    write_atomic(path, b"new")
    assert log.kinds() == ["fsync", "replace", "open", "fsync", "close"]
    (_, data_is_dir, data_ino, held_at_data_sync) = log.events[0]
    # the data reaches the disk while path still holds the old content
    assert not data_is_dir and held_at_data_sync == b"old"
    # the temporary file in the same folder, named .NAME.*.tmp, is what gets renamed
    _, tmp, dst = log.events[1]
    assert dst == path and tmp.parent == tmp_path
    assert tmp.name.startswith(".state.qcore.") and tmp.name.endswith(".tmp")
    assert path.stat().st_ino == data_ino  # the synced file is the one now at path
    # then the folder itself is opened read-only as a directory and synced, after the rename
    _, opened, flags, fd = log.events[2]
    assert opened == tmp_path
    assert flags & (os.O_WRONLY | os.O_RDWR) == 0
    assert flags & getattr(os, "O_DIRECTORY", 0) == getattr(os, "O_DIRECTORY", 0)
    _, folder_is_dir, folder_ino, held_at_folder_sync = log.events[3]
    assert folder_is_dir and folder_ino == tmp_path.stat().st_ino
    assert held_at_folder_sync == b"new"
    assert log.events[4] == ("close", fd)
    assert path.read_bytes() == b"new" and sorted(tmp_path.iterdir()) == [path]


def test_write_atomic_mode_defaults_to_private(tmp_path: Path) -> None:
    write_atomic(tmp_path / "a", b"x")
    write_atomic(tmp_path / "b", b"x", mode=0o640)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o640


def test_a_failed_rename_keeps_the_old_file_and_removes_the_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.qcore"
    path.write_bytes(b"old")

    def full_disk(src, dst) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [path]


def test_an_interrupted_write_removes_the_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "state.qcore", b"new")
    assert list(tmp_path.iterdir()) == []


def test_write_atomic_needs_an_existing_folder(tmp_path: Path) -> None:
    with pytest.raises(QCoreError, match=r"folder .*missing does not exist"):
        write_atomic(tmp_path / "missing" / "state.qcore", b"x")


def test_a_folder_that_cannot_be_opened_or_synced_is_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # platforms without directory handles (os.open fails), file systems that refuse a
    # directory fsync: the write itself has succeeded and stands
    real_fsync, real_close = os.fsync, os.close
    closed: list[int] = []

    def no_dir_fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")
        real_fsync(fd)

    def close(fd: int) -> None:
        closed.append(fd)
        real_close(fd)

    monkeypatch.setattr(os, "fsync", no_dir_fsync)
    monkeypatch.setattr(os, "close", close)
    write_atomic(tmp_path / "a", b"1")
    assert (tmp_path / "a").read_bytes() == b"1" and len(closed) == 1

    real_open = os.open

    def no_dir_handles(p, flags, *args, **kwargs) -> int:
        if os.path.isdir(p):
            raise PermissionError(13, "Permission denied")
        return real_open(p, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_dir_handles)
    write_atomic(tmp_path / "b", b"2")
    assert (tmp_path / "b").read_bytes() == b"2" and len(closed) == 1


def test_write_json_atomic_creates_folders_and_writes_strict_indented_json(
    tmp_path: Path,
) -> None:
    path = tmp_path / "deep" / "er" / "results.json"
    data = {"acc": [0.5, float("nan")], "t": (1, float("inf")), "n": {"x": -float("inf")}}
    write_json_atomic(path, data)
    text = path.read_text("utf-8")
    assert text == json.dumps({"acc": [0.5, None], "t": [1, None], "n": {"x": None}}, indent=2)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    write_json_atomic(path.parent / "again.json", [1])  # the folder exists now: no error
    assert json.loads((path.parent / "again.json").read_text("utf-8")) == [1]
    with pytest.raises(ValueError, match="not JSON compliant"):  # never a bare NaN key
        write_json_atomic(tmp_path / "key.json", {float("nan"): 1})
    assert not (tmp_path / "key.json").exists()


def test_finite_json_replaces_only_non_finite_floats() -> None:
    data = {"a": [1, 2.5, np.float64("nan"), "nan", None, True], "b": {"c": (float("-inf"),)}}
    assert finite_json(data) == {"a": [1, 2.5, None, "nan", None, True], "b": {"c": [None]}}


def test_read_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "model.qcore"
    path.write_bytes(b"\x00data")
    assert read_regular_file(path) == b"\x00data"
    with pytest.raises(QCoreError, match=r"^results .*nothing\.json does not exist$"):
        read_regular_file(tmp_path / "nothing.json", "results")
    with pytest.raises(QCoreError, match=r"^artifact .* is not a regular file$"):
        read_regular_file(tmp_path)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(QCoreError, match="state .*pipe is not a regular file"):
        read_regular_file(fifo, "state")


def test_a_file_that_cannot_be_read_is_an_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.qcore"
    path.write_bytes(b"x")
    real_stat = Path.stat

    def stat_denied(self: Path, *args, **kwargs):
        if self.name == "locked.qcore":
            raise PermissionError(13, "Permission denied")
        return real_stat(self, *args, **kwargs)

    def open_denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "stat", stat_denied)
    with pytest.raises(QCoreError, match=r"^cannot read state .*locked.qcore: Permission denied$"):
        read_regular_file(tmp_path / "locked.qcore", "state")
    monkeypatch.setattr("builtins.open", open_denied)
    with pytest.raises(
        QCoreError, match=r"^cannot read artifact .*model.qcore: Permission denied$"
    ):
        read_regular_file(path)


def test_without_o_directory_the_folder_is_opened_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "O_DIRECTORY", raising=False)
    log = SyncLog(monkeypatch, tmp_path / "state.qcore")
    write_atomic(tmp_path / "state.qcore", b"new")
    opened = [e for e in log.events if e[0] == "open"]
    assert [(e[1], e[2]) for e in opened] == [(tmp_path, os.O_RDONLY)]
    assert log.kinds()[-2:] == ["fsync", "close"] and log.events[-2][1]  # the folder synced


def test_the_original_error_survives_a_temporary_already_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def rename_lost(src, dst) -> None:  # the temporary vanished, then the rename failed
        os.unlink(src)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", rename_lost)
    with pytest.raises(OSError, match="Input/output error"):
        write_atomic(tmp_path / "state.qcore", b"new")
    assert list(tmp_path.iterdir()) == []
