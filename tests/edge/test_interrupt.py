"""Ctrl-C and SIGTERM end `qcore device` with one line, exit 130 / 143, state intact."""

from __future__ import annotations

import signal
import subprocess
import sys

import edge_kit as B
import pytest

from qcore.edge.state import load_state

CLI = [sys.executable, "-m", "qcore.cli", "device"]


SIGNALS = [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]


def _default_signals() -> None:
    """In the child before exec: Ctrl-C as in a terminal. A suite started in the
    background by a shell ignores SIGINT, and Python keeps an inherited SIG_IGN."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(("sig", "code", "word"), SIGNALS)
def test_a_signal_between_batches_ends_cleanly(tiny_model, tiny_xy, tmp_path, sig, code, word):
    X, y = tiny_xy
    art_path, _, batches = B.artifact_and_stream(tiny_model, X, y, tmp_path, 1, seed=3)
    state = tmp_path / "state.qcore"
    proc = subprocess.Popen(
        [*CLI, str(art_path), "--stream", "-", "--state", str(state)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_default_signals,
    )
    assert proc.stdin is not None and proc.stdout is not None
    payload = B.npz_bytes(X=batches[0][0], y=batches[0][1])
    proc.stdin.write(len(payload).to_bytes(8, "little") + payload)
    proc.stdin.flush()
    first = proc.stdout.readline()  # the first step is done and saved; it waits for more
    assert b'"step": 1' in first
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    lines = err.decode().strip().splitlines()
    assert lines[-1] == f"qcore: {word}" and "Traceback" not in err.decode()
    assert load_state(state).step == 1  # the saved state is whole
