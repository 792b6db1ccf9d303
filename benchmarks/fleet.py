"""A fleet of devices, one merge round: the ``fleet`` preset of ``qcore bench`` on one core.

The benchmark lives in :mod:`qcore.eval.fleet_bench` (what each row means, the privacy
curve, the FedAvg baseline); this script runs it with one worker and one thread, as
``qcore bench --preset fleet --workers 1 --out OUT`` does. Devices already computed
under ``OUT`` are reused.

    .venv/bin/python benchmarks/fleet.py --out docs/bench-fleet [--datasets hapt,usc-had]
    .venv/bin/python benchmarks/fleet.py --out docs/bench-fleet --validate [--rule 2]

``--validate`` runs the validation of docs/fleet-privacy.md (:mod:`qcore.eval.fleet_validate`;
its third rule, or with ``--rule 2`` its second) on the devices already computed under ``OUT``.
``--central`` prints, on every site, what the devices' shares give with the privacy noise added
once to the fleet's sums instead of to each share (a diagnostic of another trust model).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

from qcore.eval.fleet_bench import run_fleet  # noqa: E402
from qcore.eval.grid import make_grid  # noqa: E402


def validate(grid, out: Path, diagnose: bool = False, rule: int = 3) -> None:
    """Rows of every pair to ``OUT/privacy-validate-DATASET.json`` (the third rule:
    ``privacy-validate3-DATASET.json``); the table printed (with ``diagnose``, then the
    projection's cost alone per pair)."""
    from qcore.core.fileio import write_json_atomic
    from qcore.eval.fleet_bench import pair_dir
    from qcore.eval.fleet_validate import RULES, projection_gap, summary_lines, validate_pair

    rows = []
    for cfg in grid.cells():
        got = validate_pair(pair_dir(out, cfg), rule)
        name = "privacy-validate" + ("3" if rule == 3 else "")
        write_json_atomic(out / f"{name}-{cfg.dataset}.json", got)
        rows += got
    print("\n".join(summary_lines(rows, RULES[rule])))
    for cfg in grid.cells() if diagnose else ():
        gap = projection_gap(pair_dir(out, cfg))
        print(f"{cfg.dataset}: projected, no clip, no noise: median gap {gap:+.3f}")


def central(grid, out: Path) -> None:
    """Per dataset, medians over every site: the merge without noise, the shares' merge at
    epsilon 4 with the noise on each share, and with it added once at epsilon 1, 2, 4, 8."""
    import numpy as np

    from qcore.eval.fleet_bench import pair_dir
    from qcore.eval.fleet_sites import EPSILONS
    from qcore.eval.fleet_validate import REFERENCES, central_rows

    print(
        "| dataset | share | merge, no noise | eps 4, noise per share | "
        + " | ".join(f"eps {e}, noise once" for e in EPSILONS)
        + " | eps 4 once - merge |"
    )
    print("|" + "---|" * (5 + len(EPSILONS)))
    for cfg in grid.cells():
        rows = central_rows(pair_dir(out, cfg))
        med = {k: float(np.median([r[k] for r in rows])) for k in rows[0] if k != "dataset"}
        for ref in REFERENCES:
            diff = float(np.median([r[f"{ref}_central4"] - r["fleet_before"] for r in rows]))
            cells = [f"{med[f'{ref}_central{e}']:.3f}" for e in EPSILONS]
            print(
                f"| {cfg.dataset} ({len(rows)} sites) | {ref} | {med['fleet_before']:.3f} "
                f"| {med[f'{ref}_eps4']:.3f} | " + " | ".join(cells) + f" | {diff:+.3f} |"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--datasets", default=None, help="comma-separated (default: hapt, usc-had)")
    ap.add_argument("--workers", type=int, default=1, help="local processes (default 1)")
    ap.add_argument(
        "--validate", action="store_true",
        help="docs/fleet-privacy.md's validation on the devices already under OUT",
    )  # fmt: skip
    ap.add_argument(
        "--diagnose", action="store_true",
        help="with --validate: also the projection's cost without clip or noise",
    )  # fmt: skip
    ap.add_argument(
        "--central", action="store_true",
        help="the devices' shares with the noise added once to the fleet's sums (a diagnostic)",
    )  # fmt: skip
    ap.add_argument(
        "--rule", type=int, choices=(2, 3), default=3,
        help="with --validate: which rule of docs/fleet-privacy.md (default 3)",
    )  # fmt: skip
    args = ap.parse_args()
    sets = []
    if args.datasets:
        sets = ["pairs=" + ",".join(f"{d}:1:2" for d in args.datasets.split(","))]
    if args.central:
        central(make_grid("fleet", sets), args.out)
        return
    if args.validate:
        validate(make_grid("fleet", sets), args.out, args.diagnose, args.rule)
        return
    res = run_fleet(make_grid("fleet", sets), args.out, workers=args.workers)
    print((args.out / "fleet.md").read_text())
    print(f"{res.n_computed} device(s) computed, {len(res.rows)} site rows, {res.seconds:.0f} s")


if __name__ == "__main__":
    main()
