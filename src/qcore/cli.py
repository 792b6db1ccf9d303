"""The ``qcore`` command. Only this module parses arguments or sets thread counts."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qcore.errors import QCoreError


def _cmd_data_info(args: argparse.Namespace) -> None:
    from qcore.data.registry import load_dataset

    ds = load_dataset(args.name, args.path, seed=args.seed)
    info = ds.info()
    if args.json:
        print(json.dumps(info, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    else:
        for key, value in info.items():
            print(f"{key:>14}: {value}")


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qcore", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_cmd", required=True)
    info = data.add_parser("info", help="shape and counts of a dataset")
    info.add_argument("name")
    info.add_argument("--path", default=None)
    info.add_argument("--seed", type=int, default=0)
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=_cmd_data_info)

    model = sub.add_parser("model", help="models").add_subparsers(dest="model_cmd", required=True)
    minfo = model.add_parser("info", help="parameter count of InceptionTime")
    minfo.add_argument("--channels", type=int, required=True)
    minfo.add_argument("--classes", type=int, required=True)
    from qcore.config import RunConfig

    defaults = RunConfig()  # the model `qcore run` trains unless told otherwise
    minfo.add_argument("--filters", type=int, default=defaults.filters)
    minfo.add_argument("--depth", type=int, default=defaults.depth)
    minfo.add_argument("--json", action="store_true")
    minfo.set_defaults(func=_cmd_model_info)

    from qcore.config import RunConfig, settings_help

    run = sub.add_parser(
        "run",
        help="train, quantize, calibrate and stream one scenario",
        description="Train the float model, quantize it to each bit-width, calibrate on the "
        "source, then stream the target batches through each method; writes results.json.",
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

    from qcore.edge.cli import add_commands as add_edge_commands

    add_edge_commands(sub)  # export, device
    from qcore.eval.bench_cli import add_command as add_bench_command

    add_bench_command(sub)  # bench
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one ``qcore`` command (see :func:`qcore.edge.cli.run_command` for exit codes)."""
    from qcore.edge.cli import run_command

    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
