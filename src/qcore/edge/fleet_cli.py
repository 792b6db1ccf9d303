"""``qcore fleet``: what a device shares (``share``) and the server's merge (``merge``).

``qcore fleet share STATE --deployed ARTIFACT --out SHARE`` writes what a device learnt
beyond its deployed artifact as sums (:mod:`qcore.edge.share`), private with
``--epsilon``/``--delta`` when the device clipped its windows (``share_clip``).
``qcore fleet merge FILE... --deployed ARTIFACT --out NEW`` pools device states or shares
into a new deployable artifact (:mod:`qcore.edge.fleet`). Every file is written
atomically: a refused merge or share writes nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json

from qcore.core.fileio import read_regular_file
from qcore.edge.artifact import Artifact, decode_artifact, load_artifact, save_artifact
from qcore.edge.fleet import learnt_part, merge_fleet, merge_shares, weigh_as
from qcore.edge.share import load_share, make_share, save_share
from qcore.errors import QCoreError

ZIP_MAGIC = b"PK\x03\x04"  # a share is a NumPy .npz; a state or artifact is not


def add_command(sub: argparse._SubParsersAction) -> None:
    """``qcore fleet share`` and ``qcore fleet merge``."""
    fleet = sub.add_parser("fleet", help="share and pool what a fleet of devices learnt")
    actions = fleet.add_subparsers(dest="fleet_command", required=True, metavar="ACTION")
    share = actions.add_parser(
        "share",
        help="write what a device state learnt beyond its deployed artifact, as sums",
        description="Write the head statistics a device state added to its deployed "
        "artifact's, as per-class counts and feature sums and one second moment: no window "
        "leaves the device. With --epsilon and --delta the sums get Gaussian noise for "
        "(epsilon, delta) differential privacy of each window (the state must have been "
        "learnt with share_clip set).",
    )
    share.add_argument("state", metavar="STATE", help="the device's state file")
    share.add_argument("--deployed", required=True, metavar="ARTIFACT", help="its artifact")
    share.add_argument("--out", required=True, metavar="SHARE", help="the share file (.npz)")
    share.add_argument("--epsilon", type=float, default=None, help="privacy budget epsilon")
    share.add_argument("--delta", type=float, default=1e-5, help="privacy delta (1e-5)")
    share.add_argument("--seed", type=int, default=0, help="seed of the privacy noise")
    share.set_defaults(func=_cmd_share)
    merge = actions.add_parser(
        "merge",
        help="merge device states or shares that grew from one deployed artifact into a "
        "new deployable artifact",
        description="Merge what each device learnt beyond the deployed artifact's head "
        "statistics (counted once) into a new artifact: the head of one device that saw "
        "every device's windows. States whose backbone moved, or that grew from another "
        "artifact, are refused by name.",
    )
    merge.add_argument("files", nargs="+", metavar="FILE", help="device states or shares")
    merge.add_argument("--deployed", required=True, metavar="ARTIFACT", help="their artifact")
    merge.add_argument("--out", required=True, metavar="NEW", help="the merged artifact to write")
    merge.add_argument(
        "--weight",
        choices=("deployed", "pooled"),
        default="deployed",
        help="deployed: the merged statistics weigh as much as the deployed ones (a new site's "
        "labels move them as fast); pooled: as many windows as the fleet saw",
    )
    merge.set_defaults(func=_cmd_merge)


def _deployed(path: str) -> tuple[Artifact, str]:
    shipped = read_regular_file(path, "artifact")
    return decode_artifact(shipped, path), hashlib.sha256(shipped).hexdigest()


def _cmd_share(args: argparse.Namespace) -> None:
    deployed, sha = _deployed(args.deployed)
    state = load_artifact(args.state)
    part = learnt_part(deployed, state, args.state)
    privacy = None
    if args.epsilon is not None:
        clip = state.device.share_clip
        if clip is None:
            raise QCoreError(
                f"{args.state} was learnt without share_clip: its windows are not bounded, so "
                "no noise can make its share private (run the device with --set share_clip=C)"
            )
        privacy = (args.epsilon, args.delta, clip)
    shared = make_share(part, state.class_names, sha, privacy, args.seed)
    save_share(args.out, shared)
    sigma = shared.privacy[3] if shared.privacy else 0.0
    print(json.dumps({"out": args.out, "bytes": shared.nbytes, "noise_std": sigma}))


def _cmd_merge(args: argparse.Namespace) -> None:
    deployed, sha = _deployed(args.deployed)
    files = [str(p) for p in args.files]
    shares = [p for p in files if read_regular_file(p, "state or share")[:4] == ZIP_MAGIC]
    if shares and len(shares) != len(files):
        raise QCoreError("give either device states or shares to merge, not both")
    if shares:
        merged = merge_shares(deployed, [load_share(p) for p in files], files, sha)
    else:
        merged = merge_fleet(deployed, [load_artifact(p) for p in files], files, sha)
    assert merged.head is not None and deployed.head is not None
    added = float(merged.head.count.sum() - deployed.head.count.sum())
    if args.weight == "deployed":
        merged = weigh_as(merged, float(deployed.head.count.sum()))
    save_artifact(args.out, merged)  # atomic: a merge that fails writes nothing
    summary = {"merged": len(files), "classes": list(merged.class_names)}
    print(json.dumps({**summary, "windows_added": round(added, 3), "out": args.out}))
