"""A fleet of devices: pool what each device's streaming head learnt, in one round.

Every device of a fleet starts from one deployed artifact and adds its own labelled
windows to the head's statistics (counts, class means, one shared scatter). Those
statistics add up exactly (Chan et al.'s pairwise merge, :func:`qcore.edge.head.combine`),
so a server can pool the fleet without a window leaving any device:

1. from each device state, what the device learnt beyond the deployed statistics,
   :func:`learnt_part` (:func:`qcore.edge.head.subtract`): the deployed statistics then
   count once, whatever the number of devices;
2. the parts, classes aligned by name (a class a device learnt keeps its name; classes
   new to the fleet follow the deployed ones in the order the states first bring them),
   combined with the deployed statistics: the head of one device that saw every device's
   windows, whatever the order of the states or how each device's stream was cut;
3. a new deployable artifact (step 0, fresh runtime) with that head (:func:`merge_fleet`).

A state whose backbone moved (flips, BatchNorm re-estimation) computed its statistics on
features the deployed backbone does not produce, so they cannot be pooled exactly: such a
state is refused, as is a state that grew from another artifact. NumPy only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from qcore.core.fileio import read_regular_file
from qcore.edge.artifact import Artifact, decode_artifact, load_artifact, save_artifact
from qcore.edge.head import HeadStats, combine, grow, subtract
from qcore.edge.runtime import Runtime
from qcore.edge.state import ARTIFACT_KEY
from qcore.errors import QCoreError


def learnt_part(deployed: Artifact, state: Artifact, name: str = "state") -> HeadStats:
    """The statistics ``state`` added to ``deployed``'s, over the state's classes."""
    if deployed.head is None or state.head is None:
        raise QCoreError(f"{name}: only devices with streaming head statistics can be merged")
    k = len(deployed.class_names)
    if state.class_names[:k] != deployed.class_names:
        raise QCoreError(
            f"{name} does not start from the deployed classes ({', '.join(deployed.class_names)})"
        )
    if Runtime.from_dict(state.runtime, step=state.step).backbone_moved:
        raise QCoreError(
            f"{name}: its backbone moved (flips or BatchNorm), so its statistics are of other "
            "features than the deployed model's and cannot be merged exactly"
        )
    return subtract(state.head, grow(deployed.head, len(state.class_names)))


def merge_fleet(
    deployed: Artifact,
    states: Sequence[Artifact],
    names: Sequence[str] | None = None,
    deployed_sha256: str | None = None,
) -> Artifact:
    """The deployable artifact whose head holds ``deployed``'s statistics and what every
    state learnt (see the module docstring). ``names``: how to call each state in an
    error (default ``state 1``, ...); ``deployed_sha256``: the SHA-256 of the deployed
    artifact's file, which a state bound to its artifact must carry."""
    names = [f"state {i + 1}" for i in range(len(states))] if names is None else list(names)
    if not states:
        raise QCoreError("a fleet merge needs at least one device state")
    parts = []
    for state, name in zip(states, names, strict=True):
        grew_from = state.runtime.get(ARTIFACT_KEY)
        if deployed_sha256 is not None and grew_from not in (None, deployed_sha256):
            raise QCoreError(f"{name} grew from another artifact than the deployed one")
        parts.append((learnt_part(deployed, state, name), state.class_names))
    classes = list(deployed.class_names)
    for _, state_classes in parts:
        classes += [c for c in state_classes if c not in classes]
    assert deployed.head is not None  # learnt_part checked it
    total = grow(deployed.head, len(classes))
    for part, state_classes in parts:
        total = combine(total, _placed(part, [classes.index(c) for c in state_classes], total))
    return replace(
        deployed, head=total, class_names=tuple(classes), step=0, runtime={}, core=deployed.core
    )


def _placed(part: HeadStats, index: list[int], like: HeadStats) -> HeadStats:
    """``part`` with its classes moved to positions ``index`` of ``like``'s classes (the
    others empty); a learnt class's own scatter follows it."""
    count = np.zeros(like.n_classes)
    mean = np.zeros((like.n_classes, like.n_features))
    learnt = np.zeros(like.learnt.shape)
    count[index], mean[index] = part.count, part.mean
    first, part_first = like.n_classes - like.n_learnt, part.n_classes - part.n_learnt
    for k, at in enumerate(index[part_first:], start=part_first):
        learnt[at - first] = part.learnt[k - part_first]
    return HeadStats(count, mean, part.scatter, learnt)


# ---------------------------------------------------------------------------- command


def add_command(sub: argparse._SubParsersAction) -> None:
    """``qcore fleet merge STATE... --deployed ARTIFACT --out NEW``."""
    fleet = sub.add_parser("fleet", help="pool what a fleet of devices learnt")
    actions = fleet.add_subparsers(dest="fleet_command", required=True, metavar="ACTION")
    merge = actions.add_parser(
        "merge",
        help="merge the streaming-head statistics of device states that grew from one "
        "deployed artifact into a new deployable artifact",
        description="Merge what each device state learnt beyond the deployed artifact's "
        "head statistics (counted once) into a new artifact: the head of one device that "
        "saw every device's windows. States whose backbone moved, or that grew from "
        "another artifact, are refused by name.",
    )
    merge.add_argument("states", nargs="+", metavar="STATE", help="device state files")
    merge.add_argument("--deployed", required=True, metavar="ARTIFACT", help="their artifact")
    merge.add_argument("--out", required=True, metavar="NEW", help="the merged artifact to write")
    merge.set_defaults(func=_cmd_merge)


def _cmd_merge(args: argparse.Namespace) -> None:
    shipped = read_regular_file(args.deployed, "artifact")
    deployed = decode_artifact(shipped, str(args.deployed))
    states = [load_artifact(path) for path in args.states]
    sha = hashlib.sha256(shipped).hexdigest()
    merged = merge_fleet(deployed, states, [str(p) for p in args.states], sha)
    save_artifact(args.out, merged)  # atomic: a merge that fails writes nothing
    assert merged.head is not None
    added = merged.head.count.sum() - (deployed.head.count.sum() if deployed.head else 0.0)
    summary = {"states": len(states), "classes": list(merged.class_names)}
    print(json.dumps({**summary, "windows_added": round(float(added), 3), "out": args.out}))
