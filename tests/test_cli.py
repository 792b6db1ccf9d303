"""The ``qcore`` command as a user meets it: exit codes decided in one place, help texts
written for users, the predictions file, and a state started from a calibrated artifact."""

from __future__ import annotations

import argparse
import ast
import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import edge_kit as B  # tests/edge/edge_kit.py (on sys.path: see pyproject)
import pytest

import qcore.edge.cli as edge_cli
from qcore.cli import build_parser, main
from qcore.data.registry import DATASETS
from qcore.edge.state import load_state
from qcore.errors import QCoreError

EDGE_CLI = Path(edge_cli.__file__)


def test_the_edge_commands_leave_exit_codes_and_signals_to_the_cli() -> None:
    tree = ast.parse(EDGE_CLI.read_text())
    names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    assert not names & {"main", "run_command", "Terminated", "_terminate"}
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "signal" not in imported
    exits = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and n.attr == "exit" and getattr(n.value, "id", "") == "sys"
    ]
    assert not exits, "edge/cli.py must not exit: it raises QCoreError"


def _raises(exc: BaseException):
    def func(args: argparse.Namespace) -> None:
        raise exc

    return func


@pytest.mark.parametrize(
    ("func", "code", "line"),
    [
        (_raises(QCoreError("bad thing")), 2, "qcore: error: bad thing"),
        (_raises(FileNotFoundError("no such file: x")), 2, "qcore: error: no such file: x"),
        (_raises(KeyboardInterrupt()), 130, "qcore: interrupted"),
        (lambda args: os.kill(os.getpid(), signal.SIGTERM), 143, "qcore: terminated"),
        (lambda args: None, 0, None),
    ],
)
def test_one_place_maps_errors_and_signals_to_exit_codes(monkeypatch, capsys, func, code, line):
    monkeypatch.setattr(edge_cli, "_cmd_export", func)  # the parser binds it when built
    before = signal.getsignal(signal.SIGTERM)
    assert main(["export", "x.qcore", "--out", "y.qcore"]) == code
    err = capsys.readouterr().err.strip()
    assert err == (line or "")
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("qcore",)):
    """``(command path, parser)`` for ``parser`` and every subcommand below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_help_text_is_written_for_users() -> None:
    for path, parser in _parsers(build_parser()):
        text = parser.format_help()
        for developer_words in ("``", "this module", ":func:", ":mod:", "Namespace"):
            assert developer_words not in text, (path, developer_words)
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                assert action.help, f"{' '.join(path)}: {action.dest} has no help"


def test_the_data_commands_name_every_dataset() -> None:
    for command in (["data", "info"], ["data", "batches"]):
        parser = dict(_parsers(build_parser()))[("qcore", *command)]
        text = " ".join(parser.format_help().split())
        assert ", ".join(DATASETS) in text, command  # listed together, from the registry


def _loaded(statements: str) -> list[str]:
    """Top-level packages and ``qcore`` parts a fresh interpreter loaded running ``statements``."""
    code = (
        f"import sys\n{statements}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'scipy'}"
        " | {m.split('.')[1] for m in sys.modules if m.startswith('qcore.')}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return ast.literal_eval(out.stdout.strip().splitlines()[-1])


def test_the_command_line_loads_neither_torch_nor_scipy() -> None:
    loaded = _loaded("from qcore.cli import build_parser\nbuild_parser()")
    assert "torch" not in loaded and "scipy" not in loaded


def test_a_device_command_loads_only_the_device_side(tmp_path) -> None:
    run = f"['device', 'missing.qcore', '--stream', '.', '--state', {str(tmp_path / 's')!r}]"
    loaded = _loaded(f"from qcore.cli import main\nassert main({run}) == 2")
    assert set(loaded) <= {"cli", "errors", "config", "device_config", "core", "coreset", "edge"}, (
        loaded
    )


@pytest.fixture
def deployed(tiny_model, tiny_xy, tmp_path):
    """(artifact path, stream folder of 2 batches, the batches)."""
    X, y = tiny_xy
    return B.artifact_and_stream(tiny_model, X, y, tmp_path, 2, seed=4)


def test_the_predictions_file_has_one_header(deployed, tmp_path, capsys) -> None:
    art, stream, batches = deployed
    out = tmp_path / "predictions.csv"
    run = ["device", str(art), "--stream", str(stream), "--predictions", str(out)]
    assert main([*run, "--state", str(tmp_path / "a.qcore")]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[0])
    assert main([*run, "--state", str(tmp_path / "b.qcore")]) == 0  # appends to the file
    rows = list(csv.reader(out.open(newline="")))
    assert rows[0] == [
        "batch", "step", "window", "predicted", "confidence", "novelty", "margin"
    ]  # fmt: skip
    assert rows.count(rows[0]) == 1
    n = sum(len(yb) for _, yb in batches)
    assert len(rows) == 1 + 2 * n
    assert rows[1][:3] == ["000.npz", "1", "0"] and rows[1][3] in B.CLASSES
    # the model's own head: no margin (tests/edge/test_device_signals.py: with a streaming head)
    assert first["margin"] is None and {r[6] for r in rows[1:]} == {""}
    out.write_text("")  # an empty file gets the header too
    assert main([*run, "--state", str(tmp_path / "c.qcore")]) == 0
    assert next(csv.reader(out.open(newline=""))) == rows[0]


def test_a_new_state_starts_from_a_calibrated_artifact(deployed, tiny_xy, tmp_path, capsys) -> None:
    art, stream, _ = deployed
    calibrated = tmp_path / "calibrated.qcore"
    assert main(["device", str(art), "--stream", str(stream), "--state", str(calibrated)]) == 0
    assert load_state(calibrated).step == 2
    more = tmp_path / "more"
    more.mkdir()
    X, y = B.stream_batches(*tiny_xy, 1, seed=9)[0]
    (more / "x.npz").write_bytes(B.npz_bytes(X=X, y=y))
    new = tmp_path / "new.qcore"
    capsys.readouterr()
    assert main(["device", str(calibrated), "--stream", str(more), "--state", str(new)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["step"] == 3
    assert load_state(new).step == 3  # it went on from the calibrated state
    # the new state grew from calibrated.qcore: the first artifact is not its artifact
    assert main(["device", str(art), "--stream", str(more), "--state", str(new)]) == 2
    err = capsys.readouterr().err
    assert "grew from another artifact" in err and str(new) in err and str(art) in err


def test_a_reader_that_stops_early_ends_the_command_quietly(deployed, tmp_path) -> None:
    """`qcore device ... | head -1`: the lines after the reader left are not an error."""
    art, stream, _ = deployed
    cmd = [sys.executable, "-m", "qcore.cli", "device", str(art), "--stream", str(stream)]
    cmd += ["--state", str(tmp_path / "s.qcore")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.close()  # the reader goes away before the first line
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141, err.decode()
    assert b"Traceback" not in err
