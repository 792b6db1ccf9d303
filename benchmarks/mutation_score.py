"""Mutation score per module from mutmut's results (``make mutation`` prints it).

mutmut keeps, beside each mutated copy under ``mutants/``, a JSON ``.meta`` file mapping
every mutant's name to the exit code of its test run. This script reads them and prints,
per module of ``[tool.mutmut] only_mutate``, how many mutants were killed out of those
checked (a timeout or a crash of the mutated code counts as killed; a mutant no test
reaches counts as not killed), the score, how many were not checked yet, and with
``--survivors`` the name of every surviving mutant (``mutmut show NAME`` prints its diff).

    .venv/bin/python benchmarks/mutation_score.py [--mutants mutants] [--survivors]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import tomllib
from pathlib import Path

# mutmut's exit codes (mutmut.stats.status_by_exit_code), grouped by what they mean here
KILLED = {1, 3, 24, -24, 36, 152, 255, -9, -11}  # a test failed, timed out or crashed
SURVIVED = {0}
NO_TESTS = {5, 33}
SKIPPED = {34, 37}


def module_list(pyproject: Path) -> list[str]:
    """The ``only_mutate`` entries of ``[tool.mutmut]`` in ``pyproject``."""
    config = tomllib.loads(pyproject.read_text("utf-8"))
    return list(config.get("tool", {}).get("mutmut", {}).get("only_mutate", []))


def tally(meta: Path) -> dict[str, list[str]]:
    """Mutant names of one module's ``.meta`` file, by outcome."""
    codes = json.loads(meta.read_text("utf-8"))["exit_code_by_key"]
    out: dict[str, list[str]] = {
        "killed": [],
        "survived": [],
        "no tests": [],
        "skipped": [],
        "not checked": [],
        "suspicious": [],
    }
    for name, code in sorted(codes.items(), key=lambda kv: _natural(kv[0])):
        if code is None:
            out["not checked"].append(name)
        elif code in KILLED:
            out["killed"].append(name)
        elif code in SURVIVED:
            out["survived"].append(name)
        elif code in NO_TESTS:
            out["no tests"].append(name)
        elif code in SKIPPED:
            out["skipped"].append(name)
        else:
            out["suspicious"].append(name)
    return out


def _natural(name: str) -> tuple[str, int]:
    stem, _, number = name.rpartition("_")
    return (stem, int(number)) if number.isdigit() else (name, 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutants", default="mutants", help="mutmut's output folder")
    ap.add_argument("--pyproject", default="pyproject.toml")
    ap.add_argument("--survivors", action="store_true", help="list every surviving mutant")
    args = ap.parse_args(argv)
    patterns = module_list(Path(args.pyproject))
    if not patterns:
        print(f"no [tool.mutmut] only_mutate list in {args.pyproject}", file=sys.stderr)
        return 2
    root = Path(args.mutants)
    metas = sorted(root.rglob("*.py.meta")) if root.is_dir() else []
    header = f"{'module':34} {'killed':>7} {'checked':>7} {'score':>7} {'unchecked':>9}"
    print(header)
    print("-" * len(header))
    survivors: list[str] = []
    for pattern in patterns:
        matched = [m for m in metas if fnmatch.fnmatch(str(m.relative_to(root))[:-5], pattern)]
        if not matched:
            print(f"{pattern.removeprefix('src/'):34} {'no results (not run)':>33}")
            continue
        for meta in matched:
            t = tally(meta)
            # a survivor, a mutant no test reaches and a suspicious one all count against
            not_killed = t["survived"] + t["no tests"] + t["suspicious"]
            checked = len(t["killed"]) + len(not_killed)
            score = f"{100 * len(t['killed']) / checked:6.1f}%" if checked else "    n/a"
            name = str(meta.relative_to(root))[:-5].removeprefix("src/")
            print(
                f"{name:34} {len(t['killed']):7d} {checked:7d} {score:>7} "
                f"{len(t['not checked']):9d}"
            )
            survivors += [
                f"{n}  ({kind})" for kind in ("survived", "no tests", "suspicious") for n in t[kind]
            ]
    if args.survivors and survivors:
        print("\nnot killed (see `mutmut show NAME`):")
        for line in survivors:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
