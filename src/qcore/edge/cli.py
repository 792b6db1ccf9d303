"""``qcore export``, ``qcore device``, ``qcore reset``, ``qcore classes`` and ``qcore
import-state``: ship an artifact, run a device on a batch stream, return a device to its
deployed model, list the classes a device knows, read a microcontroller's state blob
back into a device state.

:func:`add_commands` registers them on the ``qcore`` parser (:mod:`qcore.cli`, which
also turns errors and signals into exit codes). The commands need nothing beyond NumPy and
``qcore.edge``.

``qcore device`` reads labelled batches of *un-normalised* windows, either the ``*.npz``
files of a folder in sorted name order, or ``--stream -``: length-prefixed ``.npz`` frames
on stdin (the transport is :mod:`qcore.edge.batches`). After every step the state is
saved atomically and one JSON line is printed, text and newline in one write; a bad batch
prints ``{"batch": ..., "error": ...}`` instead, is skipped and changes nothing. A final
summary goes to stderr. The label round trip (:mod:`qcore.edge.pending`): ``--requests FILE``
appends the windows each step asks labels for, ``--answers FILE`` brings labels back
before any batch is read (all of them learnt, or none and an error); the command may
run with answers alone.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from qcore.config import DeviceConfig, override_device, settings_help
from qcore.core.fileio import read_regular_file
from qcore.edge.artifact import (
    artifact_sizes,
    decode_artifact,
    load_artifact,
    save_artifact,
)
from qcore.edge.batches import folder_batches, load_batch, read_frames
from qcore.edge.c_state import add_command as add_import_state
from qcore.edge.classes import class_table, drop_class
from qcore.edge.csvfiles import (
    PREDICTIONS_HEADER,
    REQUESTS_HEADER,
    check_header,
    csv_out,
    read_answers,
    write_rows,
)
from qcore.edge.device import Device
from qcore.edge.state import bind_state, resume_or_start, save_state
from qcore.errors import QCoreError

__all__ = ["PREDICTIONS_HEADER", "add_commands"]


def _deployed_bits(folder: Path) -> list[int]:
    """The bit-widths of the ``deployed-{bits}bit.qcore`` files in a run folder, sorted."""
    middles = (p.name[len("deployed-") : -len("bit.qcore")] for p in folder.glob("deployed-*"))
    return sorted(
        int(m) for m in middles if m.isdigit() and (folder / f"deployed-{m}bit.qcore").is_file()
    )


def _export_source(path: Path, bits: int | None) -> Path:
    """The artifact to export: ``path`` itself (an artifact or a device state), or a run
    folder's ``deployed-{bits}bit.qcore`` (``bits`` may be left out when there is one)."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise QCoreError(f"run directory or artifact {path} does not exist")
    found = _deployed_bits(path)
    listed = ", ".join(map(str, found)) if found else "none"
    if bits is None:
        if len(found) == 1:
            return path / f"deployed-{found[0]}bit.qcore"
        if not found:
            raise QCoreError(f"{path} holds no deployed-*bit.qcore artifact: is it a run folder?")
        raise QCoreError(f"{path} holds the bit-widths {listed}: say which one with --bits")
    if bits not in found:
        raise QCoreError(f"no {bits}-bit artifact in {path}; bit-widths found: {listed}")
    return path / f"deployed-{bits}bit.qcore"


def _cmd_export(args: argparse.Namespace) -> None:
    src = _export_source(Path(args.run_dir), args.bits)
    art = load_artifact(src)  # verifies magic, version, checksum and shapes
    try:
        # what `qcore device` will do with it: refuse now, not on the device (a state is
        # its own deployed model here: only whether it runs is asked)
        Device(art, deployed=art)
    except QCoreError as exc:
        raise QCoreError(f"{src} cannot run on a device: {exc}") from None
    if args.format == "c":
        from qcore.edge.c_export import export_c

        print(json.dumps(export_c(art, args.out, source=src.name)))
        return
    if args.format == "onnx":
        from qcore.edge.onnx_export import to_onnx

        print(json.dumps({"format": "onnx", "total": to_onnx(art, args.out)}))
        return
    save_artifact(args.out, art)
    print(json.dumps(artifact_sizes(art)))


def _open_device(args: argparse.Namespace) -> tuple[Device, bool]:
    """The device of ``args.state`` (resumed if it exists, else started from
    ``args.artifact``), bound to the artifact, which it also knows as its deployed model;
    and whether it was resumed."""
    if not Path(args.state).resolve().parent.is_dir():  # fail before the first step, not after
        raise QCoreError(f"folder of state file {args.state} does not exist")
    shipped = read_regular_file(args.artifact, "artifact")  # needed even to resume a state
    deployed = decode_artifact(shipped, str(args.artifact))  # read once, checksummed once
    art, resumed = resume_or_start(args.state, deployed)
    sha = hashlib.sha256(shipped).hexdigest()
    art = bind_state(art, sha, args.artifact, args.state, resumed=resumed)
    # the artifact's (or the state's) device settings, with this run's overrides
    config = override_device(art.device, args.set or [])
    allow_new = getattr(args, "allow_new_classes", False)
    return Device(art, config, deployed=deployed, allow_new_classes=allow_new), resumed


def _cmd_reset(args: argparse.Namespace) -> None:
    device, resumed = _open_device(args)
    if not resumed:
        raise QCoreError(f"state {args.state} does not exist: there is nothing to reset")
    device.reset(keep_classes=args.keep_classes)
    save_state(args.state, device.art)
    print(json.dumps({"reset": True, "step": device.art.step, "state": args.state}))


def _cmd_device(args: argparse.Namespace) -> None:
    if args.stream is None and args.answers is None:
        raise QCoreError("qcore device needs --stream DIR (or -), --answers FILE, or both")
    check_header(args.predictions, PREDICTIONS_HEADER, "predictions")
    check_header(args.requests, REQUESTS_HEADER, "requests")
    answers = None if args.answers is None else read_answers(Path(args.answers))
    device, resumed = _open_device(args)
    answered = 0
    if answers is not None:
        done = device.answer(answers)  # all or nothing: a refused file changes nothing
        save_state(args.state, device.art)
        answered = done.learnt
        _line({"answers": args.answers, **done.to_dict()})
    processed = skipped = repeated = 0
    if args.stream is not None:
        if args.stream == "-":
            batches = read_frames(sys.stdin.buffer)
        else:
            batches = folder_batches(Path(args.stream))
        with contextlib.ExitStack() as stack:
            files = (
                csv_out(stack, args.predictions, PREDICTIONS_HEADER),
                csv_out(stack, args.requests, REQUESTS_HEADER),
            )
            processed, skipped, repeated = _consume(args, device, batches, files)
    summary = {
        "processed": processed,
        "skipped": skipped,
        "already_consumed": repeated,
        "answered": answered,
        "resumed": resumed,
        "state": args.state,
    }
    _line(summary, sys.stderr)
    if skipped and not processed:
        raise QCoreError(f"all {skipped} batch(es) were skipped: nothing was processed")


def _line(obj: dict, stream: IO[str] | None = None) -> None:
    """Print ``obj`` as one strict JSON line in a single write, flushed: ``print`` writes
    the text and its newline apart, and with unbuffered output (``PYTHONUNBUFFERED``) a
    kill between the two leaves a line without its end."""
    out = sys.stdout if stream is None else stream
    out.write(json.dumps(obj, allow_nan=False) + "\n")
    out.flush()


def _consume(
    args: argparse.Namespace,
    device: Device,
    batches: Iterator[tuple[str, bytes | QCoreError]],
    files: tuple[IO[str] | None, IO[str] | None],
) -> tuple[int, int, int]:
    """Step the device through ``batches``, saving the state, appending to the
    predictions and requests ``files`` and printing a JSON line after each; returns
    (processed, skipped for an error, skipped as already consumed)."""
    processed = skipped = repeated = 0
    for name, payload in batches:
        try:
            if isinstance(payload, QCoreError):
                raise payload
            batch_id = hashlib.sha256(payload).hexdigest()[:16]
            if device.consumed(batch_id) and not args.again:
                repeated += 1
                _line({"batch": name, "skipped": "already consumed"})
                continue
            report = device.step(*load_batch(payload, name), batch_id=batch_id)
        except QCoreError as exc:
            skipped += 1
            _line({"batch": name, "error": str(exc)})
            continue
        save_state(args.state, device.art)
        processed += 1
        write_rows(files, name, batch_id, report)
        _line({"batch": name, **report.to_dict()})
    return processed, skipped, repeated


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``export``, ``device``, ``reset``, ``classes`` and ``import-state`` on a
    subparsers object (``func`` set on each)."""
    _add_export(sub)
    _add_device(sub)
    _add_reset(sub)
    _add_classes(sub)
    add_import_state(sub)


def _add_export(sub: argparse._SubParsersAction) -> None:
    exp = sub.add_parser(
        "export", help="verify a deployed artifact (or a device state) and write it out"
    )
    exp.add_argument(
        "run_dir", metavar="RUN_OR_FILE", help="output folder of `qcore run`, or a .qcore file"
    )
    exp.add_argument(
        "--bits",
        type=int,
        default=None,
        help="which of a run folder's bit-widths (not needed when the run made one)",
    )
    exp.add_argument("--out", required=True, metavar="FILE", help="file to write")
    exp.add_argument(
        "--format",
        choices=("qcore", "onnx", "c"),
        default="qcore",
        help="qcore: the artifact; onnx: the model for ONNX Runtime (needs qcore[onnx]); "
        "c: C99 sources for a microcontroller, --out a folder (docs/mcu.md)",
    )
    exp.set_defaults(func=_cmd_export)


class _ArtifactHelp(argparse.Action):
    """``--help`` that lists the device settings of the artifact named before it
    (``qcore device FILE --help``) as the defaults; without one, DeviceConfig's."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        path = getattr(namespace, "artifact", None)
        if path is not None:
            try:
                device = load_artifact(path).device
            except (QCoreError, OSError) as exc:
                parser.error(f"cannot list the settings of {path}: {exc}")
            parser.epilog = settings_help(DeviceConfig, device, str(path))
        parser.print_help()
        parser.exit()


def _add_device(sub: argparse._SubParsersAction) -> None:
    dev = sub.add_parser(
        "device",
        add_help=False,
        help="run an artifact as a device on a stream of .npz batches",
        description="Predict each batch (X raw, y optional) and print one JSON line for it;\n"
        "learn from its labelled windows when the policy says so; save the state after\n"
        "every batch. Settings come from the artifact (or the resumed state) and --set,\n"
        "which the state then records. With --set ask_fraction=F it asks labels for some\n"
        "windows (--requests) and learns them when they come back (--answers, read\n"
        "first). Exit status: 0, 2 on an error or when every batch was refused, 130 on\n"
        "Ctrl-C, 143 on SIGTERM.",
        epilog=settings_help(DeviceConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dev.add_argument(
        "-h",
        "--help",
        action=_ArtifactHelp,
        nargs=0,
        help="show this help and exit (after FILE: with FILE's device settings)",
    )
    dev.add_argument("artifact", metavar="FILE", help="artifact to start from")
    dev.add_argument(
        "--stream",
        metavar="DIR",
        help="folder of *.npz batches (read in name order), or - for length-prefixed .npz "
        "frames on stdin (may be left out with --answers)",
    )
    dev.add_argument(
        "--state", required=True, help="state file: resumed if it exists, else started from FILE"
    )
    dev.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a device setting"
    )
    dev.add_argument(
        "--again", action="store_true", help="process batches the state already consumed"
    )
    dev.add_argument(
        "--allow-new-classes",
        action="store_true",
        help="a label the device does not know adds a class to the streaming head (labels "
        "are then read as class names); without it such a batch is refused",
    )
    _add_device_files(dev)
    dev.set_defaults(func=_cmd_device)


def _add_device_files(dev: argparse.ArgumentParser) -> None:
    """The CSV files of ``qcore device`` (:mod:`qcore.edge.csvfiles`)."""
    dev.add_argument(
        "--predictions",
        metavar="FILE",
        default=None,
        help="append one CSV row per window (a new file starts with the header batch, step, "
        "window, predicted, confidence, novelty)",
    )
    dev.add_argument(
        "--requests",
        metavar="FILE",
        default=None,
        help="append one CSV row per window the device asks a label for (--set "
        "ask_fraction=F): batch (the id answers quote), window, file",
    )
    dev.add_argument(
        "--answers",
        metavar="FILE",
        default=None,
        help="CSV with the columns batch, window, label (others ignored, an empty label "
        "skipped): labels of windows asked for, learnt before any batch; all or none",
    )


def _add_reset(sub: argparse._SubParsersAction) -> None:
    res = sub.add_parser(
        "reset",
        help="return a device state to the deployed model it grew from",
        description="Put the state's model, core and head statistics back to the artifact's "
        "(the deployed model); the step count and the record of consumed batches stay. The "
        "device does this by itself when it predicts worse than the deployed model on its "
        "recent labelled batches (settings reset_window, reset_margin).",
    )
    res.add_argument("artifact", metavar="FILE", help="the artifact the state started from")
    res.add_argument("--state", required=True, help="state file to reset")
    res.add_argument(
        "--keep-classes",
        action="store_true",
        help="keep the classes the device learnt (known, without samples); by default the "
        "state returns to the artifact's classes",
    )
    res.set_defaults(func=_cmd_reset, set=None)


def _cmd_classes(args: argparse.Namespace) -> None:
    art = load_artifact(args.state)
    if args.drop is not None:
        art = drop_class(art, args.drop, 0)  # a state alone: the cloud's classes stay
        save_state(args.state, art)
    rows = class_table(art)
    if args.json:
        print(json.dumps(rows))
        return
    for r in rows:
        count = "-" if r["count"] is None else r["count"]
        print(f"{r['index']:>3}  {r['name']:<24} {r['origin']:<6} {count}")


def _add_classes(sub: argparse._SubParsersAction) -> None:
    cls = sub.add_parser(
        "classes",
        help="list the classes of an artifact or device state",
        description="One line per class: index, name, origin (cloud: trained in the cloud; "
        "device: learnt on the device with --allow-new-classes) and the weight of its "
        "windows in the streaming head's statistics (source windows count head_source_weight "
        "each).",
    )
    cls.add_argument("state", metavar="FILE", help="an artifact or a device state")
    cls.add_argument(
        "--drop",
        metavar="NAME",
        help="remove class NAME, one the device learnt (a misspelt label, say): the state's "
        "head statistics become what they would be had its windows never come",
    )
    cls.add_argument("--json", action="store_true", help="print one JSON list")
    cls.set_defaults(func=_cmd_classes, set=None)
