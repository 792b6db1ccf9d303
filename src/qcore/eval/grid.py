"""The benchmark grid: which cells ``qcore bench`` runs, and where each one's results lie.

A *cell* is one ``(dataset, source -> target, seed, bit-width)``: a single
:func:`qcore.eval.runner.run` with every method of the grid (they share the deployed
model). A :class:`Grid` is the settings shared by every cell, the domain pairs and the
seeds; the bit-widths are the shared settings' ``bits``.

Presets:

* ``quick``: synthetic data, two domain pairs, seeds 0 and 1, bits 2/4/8, a tiny model
  and every method (a few minutes on 2 cores);
* ``full``: HAPT 1->4 plus USC-HAD 1->11 when its files are found, bits 2/3/4/5/8, seeds
  0/1/2, the default model and every method: 30 cells of several (HAPT) to tens of
  (USC-HAD) minutes each, many hours on 2 cores (``pairs=hapt:1:25,...`` adds pairs);
* ``method``: QCore against no calibration and the back-prop reference
  (``none,backprop,qcore``) on HAPT 1->4, HAPT 1->25 and USC-HAD 1->11 when its files are
  found, bits 2/4/8, seeds 0/1/2, the default model. Its report adds the flip tables
  (``flips.md``, see :mod:`qcore.eval.flip_tables`);
* ``wide``: one source, every other subject: HAPT 1 -> each of the other 29 subjects and
  USC-HAD 1 -> each of the other 13 when its files are found, 4 bits, seed 0, methods
  ``none,bn-stats,qcore,backprop,slda``. The cells of one source share one trained float
  model; its report adds the distribution over pairs (``pairs.md``, ``pairs.png``);
* ``labels``: few labels: the test pairs of ``method`` at 2/4/8 bits, seeds 0/1/2, each
  with label fractions 1, 0.25, 0.1, 0.05 and 0 (``label_fractions=...`` changes them) and
  label policies ``random`` and the default one (``label_policies=...``; at fractions 0
  and 1 the policy chooses nothing, so those cells are run once, as ``random``), methods
  ``none,bn-stats,backprop,slda``;
* ``newclass``: new classes: HAPT 1 -> 4 and 1 -> 25 at 2/4/8 bits, seed 0, each of the
  6 classes held out of the cloud in turn (``held_out=...`` changes them), methods
  ``none,slda,backprop``; its report adds ``newclass.md``;
* ``fleet``: a fleet of devices (:mod:`qcore.eval.fleet_bench`): HAPT source 1 (and
  USC-HAD source 1 when its files are found) deployed once at 4 bits, seed 0, ``slda``;
  every other subject a device (the unit of work), each in turn the new site merged from
  the others; its report is ``fleet.md``, ``fleet.png`` and ``sites.csv``. Its grid holds
  one cell per deployed model (``pairs=dataset:source:target``: the target only fixes the
  run that trains it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qcore.config import LABEL_POLICIES, RunConfig, check_choice, parse_overrides
from qcore.errors import QCoreError

# set per cell by the grid: a --set for them would be silently overwritten
_GRID_OWNED = ("dataset", "source", "target", "seed")
_USCHAD_PAIR = ("usc-had", 1, 11)
WIDE_METHODS = "none,bn-stats,qcore,backprop,slda"
LABELS_METHODS = "none,bn-stats,backprop,slda"
LABEL_FRACTIONS = (1.0, 0.25, 0.1, 0.05, 0.0)
_SUBJECTS = {"hapt": 30, "usc-had": 14}

Pair = tuple[str, int, int]


@dataclass(frozen=True)
class Grid:
    """Settings shared by every cell (``base``), the domain pairs, the seeds, the label
    fractions and the label policies (default: the base's alone)."""

    base: RunConfig
    pairs: tuple[Pair, ...]
    seeds: tuple[int, ...]
    label_fractions: tuple[float, ...] = ()
    new_classes: tuple[str, ...] = ()  # one cell per entry: the classes it holds out
    label_policies: tuple[str, ...] = ()

    def cells(self) -> list[RunConfig]:
        """One validated config per (pair, seed, bit-width, label fraction, label policy,
        held-out classes), in that nesting order. At label fractions 0 and 1 no window is
        chosen (none or all carry a label): one cell, with policy ``random``, whatever the
        policies."""
        fractions = self.label_fractions or (self.base.label_fraction,)
        policies = self.label_policies or (self.base.label_policy,)
        held = self.new_classes or (self.base.new_classes,)
        return [
            self.base.replace(
                dataset=d,
                source=s,
                target=t,
                seed=seed,
                bits=(b,),
                label_fraction=f,
                label_policy=p,
                new_classes=h,
            )  # fmt: skip
            for d, s, t in self.pairs
            for seed in self.seeds
            for b in self.base.bits
            for f in fractions
            for p in (policies if 0.0 < f < 1.0 else ("random",))
            for h in held
        ]


def cell_dir(out_dir: Path, cfg: RunConfig) -> Path:
    """``out_dir/cells/<dataset>-<source>-<target>-s<seed>-b<bits>``, with ``-l<fraction>``
    when only that share of the stream's windows is labelled, ``-p<policy>`` when a policy
    other than ``random`` chose them and ``-new-<classes>`` when the cloud held classes
    out: one cell's run folder."""
    bits = "-".join(str(b) for b in cfg.bits)
    name = f"{cfg.dataset}-{cfg.source}-{cfg.target}-s{cfg.seed}-b{bits}"
    if cfg.label_fraction != 1.0:
        name += f"-l{cfg.label_fraction:g}"
    if cfg.label_policy != "random" and 0.0 < cfg.label_fraction < 1.0:
        name += f"-p{cfg.label_policy}"
    if cfg.new_classes:
        name += "-new-" + "".join(c if c.isalnum() else "_" for c in cfg.new_classes)
    return out_dir / "cells" / name


def all_methods() -> str:
    """Every registered method, comma-separated, sorted by name."""
    from qcore.methods.all import available

    return ",".join(sorted(available()))


def _uschad_found() -> bool:
    from qcore.data.uschad import find_uschad_root

    try:
        find_uschad_root()
    except QCoreError:
        return False
    return True


def _with_uschad(pairs: tuple[Pair, ...]) -> tuple[Pair, ...]:
    """``pairs`` plus USC-HAD 1->11 when its files are found."""
    return pairs + ((_USCHAD_PAIR,) if _uschad_found() else ())


def load_class_names(dataset: str) -> tuple[str, ...]:
    from qcore.data.registry import load_dataset

    return tuple(load_dataset(dataset).class_names)


def one_to_all(dataset: str, source: int = 1) -> tuple[Pair, ...]:
    """``source`` -> every other subject of ``dataset`` (``hapt`` or ``usc-had``)."""
    n = _SUBJECTS[dataset]
    return tuple((dataset, source, t) for t in range(1, n + 1) if t != source)


def _quick() -> Grid:
    base = RunConfig(
        dataset="synthetic",
        source=0,
        target=1,
        bits=(2, 4, 8),
        filters=4,
        depth=3,
        epochs=5,
        core_size=10,
        method=all_methods(),
        threads=1,
    )
    return Grid(base, (("synthetic", 0, 1), ("synthetic", 2, 3)), (0, 1))


def _full() -> Grid:
    base = RunConfig(bits=(2, 3, 4, 5, 8), method=all_methods(), threads=1)
    return Grid(base, _with_uschad((("hapt", 1, 4),)), (0, 1, 2))


def _method() -> Grid:
    base = RunConfig(bits=(2, 4, 8), method="none,backprop,qcore", threads=1)
    return Grid(base, _with_uschad((("hapt", 1, 4), ("hapt", 1, 25))), (0, 1, 2))


def _wide() -> Grid:
    base = RunConfig(bits=(4,), method=WIDE_METHODS, threads=1)
    pairs = one_to_all("hapt") + (one_to_all("usc-had") if _uschad_found() else ())
    return Grid(base, pairs, (0,))


def _labels() -> Grid:
    base = RunConfig(bits=(2, 4, 8), method=LABELS_METHODS, threads=1)
    pairs = _with_uschad((("hapt", 1, 4), ("hapt", 1, 25)))
    policies = tuple(dict.fromkeys(("random", base.label_policy)))  # random and the default
    return Grid(base, pairs, (0, 1, 2), LABEL_FRACTIONS, label_policies=policies)


def _newclass() -> Grid:
    base = RunConfig(bits=(2, 4, 8), method="none,slda,backprop", threads=1)
    classes = load_class_names("hapt")
    return Grid(base, (("hapt", 1, 4), ("hapt", 1, 25)), (0,), new_classes=classes)


def _fleet() -> Grid:
    base = RunConfig(bits=(4,), method="slda", threads=1)
    pairs = (("hapt", 1, 2),) + ((("usc-had", 1, 2),) if _uschad_found() else ())
    return Grid(base, pairs, (0,))


@dataclass(frozen=True)
class Preset:
    """A named grid: a one-line ``summary`` (``qcore bench --help`` lists them) and the
    ``build`` function that makes it (the module docstring describes each)."""

    summary: str
    build: Callable[[], Grid]


PRESETS: dict[str, Preset] = {
    "quick": Preset("synthetic data, every method, 2 pairs, bits 2/4/8: minutes", _quick),
    "full": Preset("HAPT 1->4 (+USC-HAD 1->11), every method, 5 bit-widths: hours", _full),
    "method": Preset("none, backprop and qcore on 3 pairs, plus flips.md", _method),
    "wide": Preset("HAPT 1 -> every other subject at 4 bits, plus pairs.md", _wide),
    "labels": Preset("label fractions 1 to 0 on the method pairs, plus labels.md", _labels),
    "newclass": Preset("each HAPT class held out of the cloud, plus newclass.md", _newclass),
    "fleet": Preset("every other subject a device, merged for each new site: fleet.md", _fleet),
}


def presets_help() -> str:
    """One ``NAME: summary`` per preset, for ``--preset``'s help."""
    return "; ".join(f"{name}: {p.summary}" for name, p in PRESETS.items())


def preset(name: str) -> Grid:
    """The grid of preset ``name`` (see :data:`PRESETS` and the module docstring)."""
    if name not in PRESETS:
        raise QCoreError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name].build()


def _parse_pairs(text: str) -> tuple[Pair, ...]:
    pairs = []
    for item in text.split(","):
        parts = item.strip().split(":")
        try:
            if len(parts) != 3:
                raise ValueError
            pairs.append((parts[0], int(parts[1]), int(parts[2])))
        except ValueError:
            raise QCoreError(
                f"setting pairs: {item.strip()!r} is not dataset:source:target"
            ) from None
    if not pairs:
        raise QCoreError("setting pairs needs at least one dataset:source:target")
    return tuple(pairs)


def _parse_list(key: str, text: str, convert: Callable[[str], Any]) -> tuple:
    """The comma-separated values of grid setting ``key``, each read by ``convert``."""
    try:
        values = tuple(convert(v.strip()) for v in text.split(",") if v.strip())
    except ValueError:
        raise QCoreError(f"setting {key}: cannot read {text!r} as a list of values") from None
    if not values:
        raise QCoreError(f"setting {key} needs at least one value")
    return values


def make_grid(name: str = "quick", overrides: list[str] | tuple[str, ...] = ()) -> Grid:
    """A preset changed by ``key=value`` overrides.

    ``pairs=dataset:source:target,...``, ``seeds=0,1,...``, ``label_fractions=1,0.1,...``,
    ``label_policies=random,margin,...`` and ``held_out=CLASS,...`` (one cell per class
    held out of the cloud) change the grid; any other
    key is a :class:`RunConfig` setting for every cell (``bits=2,4``, ``method=none,er``,
    ``epochs=2``, ...). ``dataset``/``source``/``target``/``seed`` belong to the grid.
    """
    grid = preset(name)
    sets = parse_overrides(list(overrides))
    for key in _GRID_OWNED:
        if key in sets:
            raise QCoreError(
                f"setting {key} is set per cell by the grid: use pairs=dataset:source:target,"
                " ... or seeds=0,1,... instead"
            )
    pairs = _parse_pairs(sets.pop("pairs")) if "pairs" in sets else grid.pairs
    seeds = _parse_list("seeds", sets.pop("seeds"), int) if "seeds" in sets else grid.seeds
    fractions = grid.label_fractions
    if "label_fractions" in sets:
        fractions = _parse_list("label_fractions", sets.pop("label_fractions"), float)
    held = grid.new_classes
    if "held_out" in sets:
        held = _parse_list("held_out", sets.pop("held_out"), str)
    policies = grid.label_policies
    if "label_policies" in sets:
        policies = _parse_list("label_policies", sets.pop("label_policies"), str)
        for p in policies:
            check_choice("label_policy", p, LABEL_POLICIES)
    data = {**grid.base.to_dict(), **sets}
    grid = Grid(RunConfig.from_dict(data), pairs, seeds, fractions, held, policies)
    grid.cells()  # validate every cell (e.g. source == target) before anything runs
    return grid
