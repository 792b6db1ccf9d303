"""``qcore mcu check DIR --stream BATCHES``: the exported C runtime against the NumPy device
(:mod:`qcore.edge.mcu`), built for the host or for a Cortex-M4 under QEMU.

Prints a short report (or one JSON object with ``--json``) and fails (exit 2) when the C
build does not meet the acceptance: at least 99.5% equal predictions, every prediction
with a clear NumPy margin equal, head statistics within 1e-4 relative.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from qcore.edge.mcu import check, passed
from qcore.edge.mcu_build import TARGETS
from qcore.errors import QCoreError


def add_command(sub: argparse._SubParsersAction) -> None:
    """``qcore mcu check``."""
    mcu = sub.add_parser(
        "mcu", help="build the exported C runtime and check it against the NumPy device"
    )
    actions = mcu.add_subparsers(dest="mcu_command", required=True, metavar="ACTION")
    chk = actions.add_parser(
        "check",
        help="stream batches through the C build and the NumPy device and compare",
        description="Build the runtime `qcore export --format c` wrote into DIR (host: gcc; "
        "cortex-m4: arm-none-eabi-gcc, run on QEMU's mps2-an386 with semihosting and "
        "instruction counting; `make mcu` installs what it needs), stream the .npz batches "
        "through it and through the NumPy device (streaming head, no backbone calibration; "
        "each batch predicted before it is learnt) and report prediction agreement, the "
        "largest differences of logits, features and head statistics, and: host, "
        "milliseconds per window of the C build and of the NumPy device (one window at a "
        "time and batched); cortex-m4, RAM (.data + .bss with the arena, plus the stack "
        "high-water mark) and flash (text + rodata + data) from the ELF, instructions per "
        "window and per learnt batch and their time at 80 MHz (instructions, not cycles).",
    )
    chk.add_argument("dir", metavar="DIR", help="the folder `qcore export --format c` wrote")
    chk.add_argument("--stream", required=True, metavar="BATCHES", help="folder of .npz batches")
    chk.add_argument(
        "--target", choices=TARGETS, default="host", help="where the C runs (default host)"
    )
    chk.add_argument(
        "--artifact",
        default=None,
        metavar="ARTIFACT",
        help="the exported artifact (default: DIR/model.qcore)",
    )
    chk.add_argument("--json", action="store_true", help="print one JSON object")
    chk.set_defaults(func=_cmd_check)


def _fmt(v: Any, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def summary(res: dict[str, Any]) -> str:
    """The report of one check, a line per figure."""
    p = res["predictions"]
    lines = [
        f"target {res['target']}: {res['bits']}-bit model, {res['batches']} batches, "
        f"{res['windows']} windows, {res['learnt']} learnt, {res['classes']} classes",
        f"predictions agree: {p['agree']:.4f} ({p['disagree']} differ; "
        f"{p['clear_disagree']} of {p['clear']} with a clear NumPy margin)",
        f"largest relative difference: logits {_fmt(res['logits_rel_diff'])}, features "
        f"{_fmt(res['features_rel_diff'])}, head statistics {_fmt(res['head_stats_rel_diff'])}",
    ]
    if "memory" in res:
        m = res["memory"]
        lines.append(
            f"RAM {m['ram']} B (.data + .bss {m['ram_static']}, arena {_fmt(m['arena'], 'd')}, "
            f"stack {m['stack']}); flash {m['flash']} B"
        )
    if "counts" in res:
        c = res["counts"]
        if not c["counter_checked"]:
            lines.append(
                f"instruction counter off ({c['instructions_per_tick']:.3g} per tick): no counts"
            )
        else:
            lines.append(
                f"instructions per window {_fmt(c['instructions_per_window'], '.4g')} "
                f"({_fmt(c['ms_per_window_at_mhz'], '.4g')} ms at {c['mhz']:.0f} MHz), per "
                f"learnt batch {_fmt(c['instructions_per_learnt_batch'], '.4g')} "
                f"({_fmt(c['ms_per_learnt_batch_at_mhz'], '.4g')} ms), per head add "
                f"{_fmt(c['instructions_per_head_add'], '.4g')}, per solve "
                f"{_fmt(c['instructions_per_solve'], '.4g')} (instructions, not cycles)"
            )
    if "host_ms_per_window" in res:
        lines.append(
            f"host ms per window: C {_fmt(res['host_ms_per_window'])}, NumPy one at a time "
            f"{_fmt(res.get('numpy_ms_batch1'))}, NumPy batched "
            f"{_fmt(res.get('numpy_ms_batched'))} (batch of {res.get('numpy_batch', '-')})"
        )
    lines.append("passed" if passed(res) else "FAILED")
    return "\n".join(lines)


def _cmd_check(args: argparse.Namespace) -> None:
    res = check(args.dir, args.stream, args.target, artifact=args.artifact)
    print(json.dumps(res) if args.json else summary(res))
    if not passed(res):
        raise QCoreError("the C build does not compute what the NumPy device computes")
