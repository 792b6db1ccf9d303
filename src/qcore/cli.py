"""The ``qcore`` command: its parser, and the one place where errors and signals become
exit codes. Only this module (and the ``add_command(s)`` it calls) parses arguments or sets
thread counts. Building the parser and the device commands load no PyTorch and no SciPy.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from qcore.errors import QCoreError

DESCRIPTION = (
    "Quantized models that keep learning on a device: train and quantize (run), measure "
    "methods side by side (bench), ship an artifact (export) and run it on a device "
    "(device, reset). `qcore COMMAND --help` explains each command."
)
DEVICE_COMMANDS = ("export", "device", "reset", "classes")  # what runs on a device: qcore.edge.cli
EXIT_ERROR = 2  # a QCoreError, a missing or unreadable file, or every batch refused
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT): 128 + 2
EXIT_TERMINATED = 143  # SIGTERM: 128 + 15
EXIT_PIPE_CLOSED = 141  # the reader of standard output went away (`| head`): 128 + SIGPIPE


def _cmd_data_info(args: argparse.Namespace) -> None:
    from qcore.data.registry import load_dataset

    ds = load_dataset(args.name, args.path, seed=args.seed)
    info = ds.info()
    if args.json:
        print(json.dumps(info, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    else:
        for key, value in info.items():
            print(f"{key:>14}: {value}")


def _cmd_data_batches(args: argparse.Namespace) -> None:
    from qcore.data.batches import subject_batches, write_batches
    from qcore.data.registry import load_dataset

    ds = load_dataset(args.name, args.path, seed=args.seed)
    batches = subject_batches(ds, args.subject, args.batch_size, seed=args.seed)
    summary = write_batches(Path(args.out), batches)
    print(json.dumps({"dataset": ds.name, ds.domain_kind: args.subject, **summary}))


def _cmd_model_info(args: argparse.Namespace) -> None:
    from qcore.cloud.model import InceptionTime, count_params

    try:
        model = InceptionTime(args.channels, args.classes, args.filters, args.depth)
    except ValueError as exc:
        raise QCoreError(str(exc)) from None
    n = count_params(model)
    info = {
        "n_params": n,
        "float_bytes": 4 * n,
        "channels": args.channels,
        "classes": args.classes,
        "filters": args.filters,
        "depth": args.depth,
    }
    print(json.dumps(info) if args.json else "\n".join(f"{k:>12}: {v}" for k, v in info.items()))


def _print_table(result: dict) -> None:
    from qcore.eval.run_table import run_table

    print(run_table(result))


def _cmd_run(args: argparse.Namespace) -> None:
    from qcore.config import load_config
    from qcore.eval.runner import run
    from qcore.threads import limit_threads

    cfg = load_config(args.config, args.set or [])
    limit_threads(cfg.threads)
    result = run(cfg, args.out, progress=not args.quiet, cache=not args.no_cache)
    _print_table(result)
    print(f"wrote {Path(args.out) / 'results.json'}")


PATH_HELP = (
    "where the data lie: needed for dsads (its folder) and npz (your own .npz file with X, y "
    "and optionally domain and class_names); optional for hapt, watch and usc-had"
)


def _add_data(sub: argparse._SubParsersAction) -> None:
    from qcore.data.registry import DATASETS

    names = ", ".join(DATASETS)
    data = sub.add_parser(
        "data", help="look at a dataset, or cut it into batches for `qcore device`"
    ).add_subparsers(dest="data_cmd", required=True)
    info = data.add_parser(
        "info",
        help="shape, classes and subjects (domains) of a dataset",
        description=f"Datasets: {names}.",
    )
    info.add_argument("name", metavar="DATASET", help=f"one of: {names}")
    info.add_argument("--path", default=None, help=PATH_HELP)
    info.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=_cmd_data_info)

    bat = data.add_parser(
        "batches",
        help="cut one subject of a dataset into .npz batches for `qcore device`",
        description="Write one subject's (domain's) windows as OUT/batch-NNNN.npz, shuffled "
        "with --seed: X float32 (n, channels, time) in the sensor's own units (not "
        "normalised), y the class names (text). `qcore device ARTIFACT --stream OUT` reads them "
        f"in name order. Prints a JSON summary. Datasets: {names}.",
    )
    bat.add_argument("name", metavar="DATASET", help=f"one of: {names}")
    bat.add_argument(
        "--subject", type=int, required=True, help="subject (domain) id: see `qcore data info`"
    )
    bat.add_argument("--out", required=True, metavar="DIR", help="folder to write (new or empty)")
    bat.add_argument("--batch-size", type=int, default=32, help="windows per batch (default 32)")
    bat.add_argument(
        "--seed", type=int, default=0, help="shuffles the windows (and seeds synthetic data)"
    )
    bat.add_argument("--path", default=None, help=PATH_HELP)
    bat.set_defaults(func=_cmd_data_batches)


def _add_model(sub: argparse._SubParsersAction) -> None:
    from qcore.config import RunConfig

    defaults = RunConfig()  # the model `qcore run` trains unless told otherwise
    model = sub.add_parser("model", help="size of the model `qcore run` trains").add_subparsers(
        dest="model_cmd", required=True
    )
    minfo = model.add_parser("info", help="parameter count and float size of InceptionTime")
    minfo.add_argument("--channels", type=int, required=True, help="sensor channels")
    minfo.add_argument("--classes", type=int, required=True, help="classes")
    minfo.add_argument(
        "--filters",
        type=int,
        default=defaults.filters,
        help="filters per branch (default %(default)s)",
    )
    minfo.add_argument(
        "--depth", type=int, default=defaults.depth, help="inception blocks (default %(default)s)"
    )
    minfo.add_argument("--json", action="store_true", help="print one JSON object")
    minfo.set_defaults(func=_cmd_model_info)


def _add_run(sub: argparse._SubParsersAction) -> None:
    from qcore.config import RunConfig, settings_help

    run = sub.add_parser(
        "run",
        help="train, quantize, calibrate and stream one scenario",
        description="Train the float model, quantize it to each bit-width, calibrate on the\n"
        "source, then stream the target batches through each method. Writes OUT/results.json\n"
        "and OUT/deployed-{bits}bit.qcore, the artifacts `qcore export` ships.",
        epilog=settings_help(RunConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--config", default=None, help="TOML file of settings")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting")
    run.add_argument("--out", required=True, help="output folder for results.json")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument(
        "--no-cache", action="store_true", help="train the float model even if OUT/.cache has it"
    )
    run.set_defaults(func=_cmd_run)


def build_parser(device_only: bool = False) -> argparse.ArgumentParser:
    """The ``qcore`` parser with every subcommand (each sets ``func``); with
    ``device_only``, only :data:`DEVICE_COMMANDS`, which load nothing above ``qcore.edge``."""
    from qcore.edge.cli import add_commands as add_edge_commands

    p = argparse.ArgumentParser(prog="qcore", description=DESCRIPTION)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if not device_only:
        _add_data(sub)
        _add_model(sub)
        _add_run(sub)
    add_edge_commands(sub)  # export, device, reset
    if not device_only:
        from qcore.edge.fleet_cli import add_command as add_fleet_command
        from qcore.edge.mcu_cli import add_command as add_mcu_command
        from qcore.eval.bench_cli import add_command as add_bench_command

        add_fleet_command(sub)  # fleet merge
        add_mcu_command(sub)  # mcu check
        add_bench_command(sub)  # bench
    return p


class Terminated(Exception):
    """SIGTERM, raised in the main thread so that a command ends as on Ctrl-C."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed command's ``func`` and return the exit status: 0; :data:`EXIT_ERROR`
    with one line ``qcore: error: ...`` for a :class:`QCoreError` (a device command whose
    every batch was refused raises one) or a file that is missing or unreadable;
    :data:`EXIT_INTERRUPTED` and :data:`EXIT_TERMINATED` with one line on Ctrl-C and
    SIGTERM; :data:`EXIT_PIPE_CLOSED`, silently, when the reader of standard output
    closed it (``qcore device ... | head``). Every file a command saves is written
    atomically, so an interruption leaves it as it was or complete."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("qcore: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print("qcore: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except BrokenPipeError:
        # nothing more can be printed: point stdout at /dev/null so that the interpreter's
        # final flush does not fail again, and end as a process killed by SIGPIPE would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE_CLOSED
    except (QCoreError, FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        print(f"qcore: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one ``qcore`` command; returns its exit status (see :func:`run_command`). A
    device command builds only the device commands' parser, so that a device process
    imports ``qcore.edge`` and what it needs, not the data, cloud or evaluation side."""
    argv = sys.argv[1:] if argv is None else list(argv)
    device_only = bool(argv) and argv[0] in DEVICE_COMMANDS
    return run_command(build_parser(device_only).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
