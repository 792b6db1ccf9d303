"""The build-and-run half of ``qcore mcu check`` (:mod:`qcore.edge.mcu`): the toolchains a
target needs, the check firmware compiled with an exported runtime for the host or the
Cortex-M4 (QEMU's ``mps2-an386``), the firmware's input records and output parsed, memory
from the ELF, and instruction counts from the timer ticks (checked on a loop of known
length). The module docstring of :mod:`qcore.edge.mcu` describes the firmware."""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from qcore.errors import QCoreError

TARGETS = ("host", "cortex-m4")
FIRMWARE = ("fw_main.c", "fw_io.h", "fw_host.c", "fw_mcu.c", "startup.S", "mps2_an386.ld")
RUNTIME = ("qcore_rt.c", "qcore_model.c")
CFLAGS = ("-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-ffp-contract=off")
ARM_FLAGS = ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16")
ARM_LINK = ("-nostartfiles", "--specs=nano.specs", "-Wl,--gc-sections")
QEMU = ("qemu-system-arm", "-M", "mps2-an386", "-nographic", "-monitor", "none")
QEMU_SEMIHOSTING = ("-semihosting-config", "enable=on,target=native")
ICOUNT = ("-icount", "shift=0")  # 1 ns of virtual time per instruction
TIMER_HZ = 25_000_000  # mps2-an386 PCLK: the CMSDK timer's clock
INSTRUCTIONS_PER_TICK = 1e9 / TIMER_HZ  # 40 under -icount shift=0
MCU_HZ = 80_000_000  # the clock instructions are turned into time at
MARGIN = 1e-3  # a NumPy top-two margin beyond this share of the largest logit is "clear"
SOLVE, NO_LABEL = -2, -1
WORKING_TOOLS = "run `make mcu` (installs gcc-arm-none-eabi, libnewlib-arm-none-eabi, " + (
    "qemu-system-arm on Debian) or put them on PATH"
)


# ---------------------------------------------------------------------------- tools


def tools(target: str) -> dict[str, str]:
    """The programs a target needs, by role, or a :class:`QCoreError` naming the missing
    ones and ``make mcu``."""
    if target not in TARGETS:
        raise QCoreError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    names = {"cc": "gcc"}
    if target == "cortex-m4":
        names = {"cc": "arm-none-eabi-gcc", "size": "arm-none-eabi-size",
                 "nm": "arm-none-eabi-nm", "qemu": "qemu-system-arm"}  # fmt: skip
    found = {role: shutil.which(name) for role, name in names.items()}
    missing = [names[role] for role, path in found.items() if path is None]
    if missing:
        hint = WORKING_TOOLS if target == "cortex-m4" else "install gcc"
        raise QCoreError(f"the {target} check needs {', '.join(missing)}: {hint}")
    return {role: str(path) for role, path in found.items()}


def _run(cmd: Sequence[str], what: str, cwd: Path | None = None, timeout: float | None = None):
    try:
        done = subprocess.run(list(cmd), cwd=cwd, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise QCoreError(f"{what} did not finish within {timeout} s") from None
    if done.returncode != 0:
        err = (done.stderr or b"").decode(errors="replace").strip()[-2000:]
        raise QCoreError(f"{what} failed (exit {done.returncode}): {err}")
    return done


# ---------------------------------------------------------------------------- build


def firmware_dir() -> Path:
    """The firmware sources (package data)."""
    return Path(str(resources.files("qcore.edge").joinpath("mcu_firmware")))


def build(export_dir: str | Path, work: str | Path, target: str) -> Path:
    """Compile the exported runtime in ``export_dir`` with the check firmware for
    ``target`` into ``work``; the program (an ELF for the Cortex-M4)."""
    src, out, fw = Path(export_dir), Path(work), firmware_dir()
    for name in (*RUNTIME, "qcore_rt.h"):
        if not (src / name).is_file():
            raise QCoreError(
                f"{src} holds no {name}: give the folder `qcore export --format c` wrote"
            )
    tool = tools(target)
    out.mkdir(parents=True, exist_ok=True)
    runtime = [str(src / name) for name in RUNTIME]
    inc = ["-I", str(src), "-I", str(fw)]
    if target == "host":
        exe = out / "qc_check"
        cmd = [tool["cc"], *CFLAGS, *inc, "-o", str(exe), str(fw / "fw_main.c"),
               str(fw / "fw_host.c"), *runtime, "-lm"]  # fmt: skip
    else:
        exe = out / "qc_check.elf"
        cmd = [tool["cc"], *CFLAGS, *ARM_FLAGS, "-ffunction-sections", "-fdata-sections",
               *ARM_LINK, "-T", str(fw / "mps2_an386.ld"), *inc, "-o", str(exe),
               str(fw / "startup.S"), str(fw / "fw_main.c"), str(fw / "fw_mcu.c"), *runtime,
               "-lm"]  # fmt: skip
    _run(cmd, f"compiling the {target} check")
    return exe


@dataclass
class Memory:
    """What the Cortex-M4 build holds, from its ELF (bytes): ``sections`` by name,
    ``flash`` (.text + .rodata + .ARM.exidx + the initial values of .data), ``ram_static``
    (.data + .bss, the arena included) and ``arena`` (the runtime's ``qc_arena``; None
    when the symbol is not there)."""

    sections: dict[str, int]
    flash: int
    ram_static: int
    arena: int | None


def memory(elf: Path) -> Memory:
    """Section and symbol sizes of a Cortex-M4 ELF (``arm-none-eabi-size -A``, ``nm -S``)."""
    tool = tools("cortex-m4")
    text = _run([tool["size"], "-A", str(elf)], "arm-none-eabi-size").stdout.decode()
    sections: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
            sections[parts[0]] = int(parts[1])
    flash = sum(sections.get(s, 0) for s in (".text", ".rodata", ".ARM.exidx", ".data"))
    ram = sections.get(".data", 0) + sections.get(".bss", 0)
    arena = None
    syms = _run([tool["nm"], "-S", str(elf)], "arm-none-eabi-nm").stdout.decode()
    for line in syms.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[3] == "qc_arena":
            arena = int(parts[1], 16)
    return Memory(sections, flash, ram, arena)


# ---------------------------------------------------------------------- the records


def records(windows: Iterable[tuple[np.ndarray, np.ndarray]]) -> bytes:
    """The firmware's input for batches of ``(raw windows float32 (n, c, t), labels int
    (n,), -1: none)``: each window with its label, then the end of the batch."""
    parts: list[bytes] = []
    end = struct.pack("<i", SOLVE)
    for X, y in windows:
        for x, label in zip(X, y, strict=True):
            parts.append(struct.pack("<i", int(label)))
            parts.append(np.ascontiguousarray(x, dtype="<f4").tobytes())
        parts.append(end)
    return b"".join(parts)


@dataclass
class Output:
    """What the firmware wrote, parsed (see ``fw_main.c``)."""

    calibration: tuple[int, int, int, int] = (0, 0, 0, 0)
    init_ticks: int = 0
    pred: list[int] = field(default_factory=list)
    model_pred: list[int] = field(default_factory=list)
    ticks: list[int] = field(default_factory=list)
    head_logits: list[np.ndarray] = field(default_factory=list)
    model_logits: list[np.ndarray] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)
    learnt: list[tuple[int, int, int, int]] = field(default_factory=list)
    stats: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    stack: int = 0


def parse(data: bytes, n_classes: int, n_features: int) -> Output:
    """The firmware's output records (a tag word, a word count, the words)."""
    out, pos = Output(), 0
    while pos < len(data):
        if pos + 8 > len(data):
            raise QCoreError("the firmware's output ends inside a record")
        tag, n = struct.unpack_from("<II", data, pos)
        pos += 8
        if pos + 4 * n > len(data):
            raise QCoreError("the firmware's output ends inside a record")
        u = np.frombuffer(data, "<u4", n, pos)
        f = np.frombuffer(data, "<f4", n, pos)
        pos += 4 * n
        kind = chr(tag)
        if kind == "C":
            a, b, c, d = (int(v) for v in u)
            out.calibration = (a, b, c, d)
        elif kind == "I":
            out.init_ticks = int(u[0])
        elif kind == "W":
            k = int(u[4])
            out.pred.append(int(u[0]))
            out.model_pred.append(int(u[1]))
            out.ticks.append(int(u[3]))
            out.head_logits.append(f[5 : 5 + k].copy())
            out.model_logits.append(f[5 + k : 5 + k + n_classes].copy())
            out.features.append(f[5 + k + n_classes :].copy())
        elif kind == "L":
            a, b, c, d = (int(v) for v in u)
            out.learnt.append((a, b, c, d))
        elif kind == "T":
            k, d = int(u[0]), n_features
            count = f[1 : 1 + k].copy()
            mean = f[1 + k : 1 + k + k * d].reshape(k, d).copy()
            out.stats = (count, mean, f[1 + k + k * d :].reshape(d, d).copy())
        elif kind == "M":
            out.stack = int(u[0])
        else:
            raise QCoreError(f"the firmware wrote an unknown record {tag}")
    return out


def run_firmware(program: Path, data: bytes, target: str, timeout: float = 3600.0) -> bytes:
    """Run the built check on input ``data`` in a fresh folder; its output bytes."""
    with tempfile.TemporaryDirectory(prefix="qcore-mcu-") as tmp:
        work = Path(tmp)
        (work / "qc_in.bin").write_bytes(data)
        if target == "host":
            cmd = [str(program.resolve())]
        else:
            cmd = [tools(target)["qemu"], *QEMU[1:], *QEMU_SEMIHOSTING, *ICOUNT,
                   "-kernel", str(program.resolve())]  # fmt: skip
        _run(cmd, f"the {target} check", cwd=work, timeout=timeout)
        return (work / "qc_out.bin").read_bytes()


def counts(out: Output) -> dict[str, Any]:
    """Instructions per prediction and per learnt batch from the Cortex-M4's ticks, with
    the counter checked on the calibration loop (2 instructions per iteration)."""
    n1, n2, t1, t2 = out.calibration
    per_tick = 2.0 * (n2 - n1) / (t2 - t1) if t2 > t1 else float("nan")
    ok = abs(per_tick - INSTRUCTIONS_PER_TICK) <= 0.01 * INSTRUCTIONS_PER_TICK
    res: dict[str, Any] = {
        "instructions_per_tick": per_tick,
        "counter_checked": bool(ok),
        "calibration": {"n1": n1, "n2": n2, "ticks1": t1, "ticks2": t2},
    }
    if not ok:
        return res
    learnt = [b for b in out.learnt if b[0] > 0]
    win = per_tick * float(np.mean(out.ticks)) if out.ticks else None
    add = per_tick * sum(b[1] for b in learnt) / max(1, sum(b[0] for b in learnt))
    solve = per_tick * float(np.mean([b[2] for b in learnt])) if learnt else None
    batch = per_tick * float(np.mean([b[1] + b[2] for b in learnt])) if learnt else None
    res.update({
        "instructions_per_window": win,
        "instructions_per_window_max": per_tick * max(out.ticks) if out.ticks else None,
        "instructions_per_head_add": add if learnt else None,
        "instructions_per_solve": solve,
        "instructions_per_learnt_batch": batch,
        "instructions_init": per_tick * out.init_ticks,
        "mhz": MCU_HZ / 1e6,
        "ms_per_window_at_mhz": None if win is None else 1e3 * win / MCU_HZ,
        "ms_per_learnt_batch_at_mhz": None if batch is None else 1e3 * batch / MCU_HZ,
    })  # fmt: skip
    return res


def dev_X(X: np.ndarray) -> np.ndarray:
    """Raw windows as the firmware reads them (float32, C order)."""
    return np.ascontiguousarray(X, dtype=np.float32)


def environment_note() -> str:
    """Which toolchains this machine has, for a report."""
    names = ("gcc", "arm-none-eabi-gcc", "qemu-system-arm")
    return ", ".join(f"{n}: {'yes' if shutil.which(n) else 'no'}" for n in names)
