"""A device killed (SIGKILL) at random moments never leaves a broken or mixed state.

Runs the real command (``python -m qcore.cli device``) on a stream folder many times,
killing it after a random delay, and resumes each time from what is on disk. After every
kill the state file must load and hold exactly the start state or a complete later step
of the chain the device goes through, consistent with the lines it printed; leftover
temporary files must be cleared on resume and never be taken for the state.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import edge_kit as B  # tests/edge/edge_kit.py (tests/edge is on sys.path: see pyproject)
import numpy as np
import pytest
import torch

from qcore.edge.artifact import encode_artifact
from qcore.edge.state import load_state

torch.set_num_threads(1)


# The stand-alone edge entry point: NumPy only, no torch on this path.
CLI = [sys.executable, "-m", "qcore.cli", "device"]
N_BATCHES = 24  # long enough that a good share of random kills lands while it persists
MIN_TRIALS = 24
MAX_TRIALS = 60
MIN_MID = 10  # kills that must land mid-stream
MIN_EARLY = 2  # kills that must land before the first save


def _temps(state: Path) -> set[str]:
    """Names of the temporary files a save of ``state`` creates (``.NAME.*.tmp``)."""
    return {p.name for p in state.parent.glob(f".{state.name}.*.tmp")}


def _lines(out: bytes) -> list[dict]:
    text = out.decode()
    assert text == "" or text.endswith("\n"), f"a printed line was cut: {text[-200:]!r}"
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture(scope="module")
def setup(tiny_model, tiny_xy, tmp_path_factory):
    """(artifact path, stream folder, its batches in processing order)."""
    X, y = tiny_xy
    folder = tmp_path_factory.mktemp("kill")
    return B.artifact_and_stream(tiny_model, X, y, folder, N_BATCHES, seed=11)


def _timed_run(cmd: list[str]) -> tuple[float, float, list[dict]]:
    """(seconds to the first printed line, seconds to exit, lines) of one full run."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    t_first = time.perf_counter() - t0
    out, err = proc.communicate(timeout=120)
    t_total = time.perf_counter() - t0
    assert proc.returncode == 0, err.decode()
    return t_first, t_total, _lines(first + out)


def test_sigkill_at_random_moments_leaves_previous_or_new_step(setup, tmp_path):
    art_path, stream, batches = setup
    names = [f"{k:03d}.npz" for k in range(N_BATCHES)]

    # One uninterrupted run: the timing the kill delays are drawn over, and a reference.
    timing_state = tmp_path / "timing" / "state.qcore"
    timing_state.parent.mkdir()
    t_first, t_total, lines = _timed_run(
        [*CLI, str(art_path), "--stream", str(stream), "--state", str(timing_state)]
    )
    assert [r["step"] for r in lines] == list(range(1, N_BATCHES + 1))
    dev = B.cli_device(art_path)
    for Xb, yb in batches:
        dev.step(Xb, yb)
    assert timing_state.read_bytes() == encode_artifact(dev.art)

    state = tmp_path / "state.qcore"
    # every trial replays the whole folder from the saved state (--again: consumed batches
    # are processed again), so each one can be killed at any point of a full stream
    cmd = [*CLI, str(art_path), "--stream", str(stream), "--state", str(state), "--again"]
    # One device that never stops and is never saved: it steps through exactly the
    # batches the killed runs committed, in order (each run starts the folder afresh).
    ref = B.cli_device(art_path)
    start: bytes | None = None  # state bytes before the trial (None: no state file yet)
    rng = np.random.default_rng(20240611)
    counts: Counter[str] = Counter()
    trial = 0
    while trial < MIN_TRIALS or (
        (counts["mid-stream"] < MIN_MID or counts["before first save"] < MIN_EARLY)
        and trial < MAX_TRIALS
    ):
        # A complete, valid but wrong state in a stale temporary file (what a kill between
        # fsync and rename leaves): resume must delete it, never load it.
        planted = state.parent / f".{state.name}.planted{trial:02d}.tmp"
        planted.write_bytes(encode_artifact(replace(ref.art, step=ref.art.step + 1000)))
        stale = _temps(state)
        if trial % 4 == 0:  # early: before or while the first save happens
            delay = rng.uniform(0.0, t_first)
        else:  # while the device steps and persists
            delay = rng.uniform(0.9 * t_first, 1.05 * t_total)

        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)  # a zombie if it already finished: still fine
        out, err = proc.communicate(timeout=120)
        assert proc.returncode in (0, -signal.SIGKILL), err.decode()
        lines = _lines(out)
        printed = len(lines)
        base = ref.art.step
        assert [r["step"] for r in lines] == list(range(base + 1, base + printed + 1))
        assert [r["batch"] for r in lines] == names[:printed]
        if proc.returncode == 0:
            counts["exited before the kill"] += 1
            assert printed == N_BATCHES

        # The states this run may have left: its start, each printed step, the next one.
        assert (encode_artifact(ref.art) if start is not None else None) == start
        chain: list[bytes | None] = [start]
        for Xb, yb in batches[:printed]:
            ref.step(Xb, yb)
            chain.append(encode_artifact(ref.art))
        if printed < N_BATCHES:
            ahead = B.cli_device(ref.art, deployed=ref.deployed)
            ahead.step(*batches[printed])
            chain.append(encode_artifact(ahead.art))

        now = state.read_bytes() if state.exists() else None
        hits = [i for i, candidate in enumerate(chain) if candidate == now]
        assert hits, f"trial {trial}: the state on disk is none of the chain's states"
        progress = hits[0]
        assert printed <= progress <= printed + 1, (trial, printed, progress)
        if progress == printed + 1:  # saved, killed before printing: commit that step
            ref.step(*batches[printed])
        if now is not None:
            loaded = load_state(state)
            assert loaded.step == base + progress
            assert encode_artifact(loaded) == now

        left = _temps(state)
        if progress >= 1:  # the run got past resume_or_start: stale temps are gone
            assert not (stale & left), f"trial {trial}: stale temp files kept: {stale & left}"
        if left - stale:
            counts["kill left a temp file"] += 1
        if progress == 0:
            counts["before first save"] += 1
        elif progress < N_BATCHES:
            counts["mid-stream"] += 1
        else:
            counts["completed"] += 1
        counts["kills"] += 1
        start = now
        trial += 1

    # Finally a run to the end, resumed from whatever the last kill left.
    planted = state.parent / f".{state.name}.planted-final.tmp"
    planted.write_bytes(encode_artifact(replace(ref.art, step=ref.art.step + 1000)))
    base = ref.art.step
    proc = subprocess.run(cmd, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = _lines(proc.stdout)
    assert [r["step"] for r in lines] == list(range(base + 1, base + N_BATCHES + 1))
    assert json.loads(proc.stderr.decode().splitlines()[-1])["resumed"] is (start is not None)
    for Xb, yb in batches:
        ref.step(Xb, yb)
    assert state.read_bytes() == encode_artifact(ref.art)
    assert load_state(state).step == ref.art.step
    assert not _temps(state), "temporary files left after a complete run"

    summary = {
        "trials": trial,
        "batches per run": N_BATCHES,
        "first line s": round(t_first, 3),
        "full run s": round(t_total, 3),
        "final step": ref.art.step,
        **counts,
    }
    print("\nkill test:", json.dumps(summary))
    assert counts["kills"] >= 20
    assert counts["mid-stream"] >= MIN_MID, summary
    assert counts["before first save"] >= MIN_EARLY, summary
