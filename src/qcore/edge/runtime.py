"""The device's running state besides model and core, typed: :class:`Runtime`.

An artifact or state file keeps it as a JSON object in its header
(:attr:`qcore.edge.artifact.Artifact.runtime`); :class:`qcore.edge.device.Device` reads
it with :meth:`Runtime.from_dict` and writes it back with :meth:`Runtime.to_dict`. Keys:

* ``recent``: one :class:`GuardRecord` per recent labelled batch, as a list of five
  integers (a list of the first three alone, as states kept them before the
  disagreement counts, is read as the least disagreement it allows);
* ``resets``: how often the device returned to the deployed model;
* ``backbone_moved``: whether the backbone differs from the deployed one (missing: it
  may have moved once the device took a step);
* ``drift``: the drift detector's state (:meth:`qcore.edge.drift.PageHinkley.to_dict`);
* ``consumed``: ids of the last :data:`CONSUMED_LIMIT` distinct batches consumed,
  oldest first (older states kept every id: only the last ones are read);
* ``labelled``: the target labels the device received per class name, in batches and
  answers (what the ``-cover`` ask policies read, :mod:`qcore.edge.asking`); only the
  classes of the last count are kept (missing: none yet);
* any other key (e.g. the SHA-256 of the artifact a state grew from,
  :mod:`qcore.edge.state`) is kept as it is.

NumPy-free and pure: every change returns a new :class:`Runtime`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from qcore.errors import QCoreError

RECENT_KEY, RESETS_KEY, MOVED_KEY = "recent", "resets", "backbone_moved"
DRIFT_KEY, CONSUMED_KEY, LABELLED_KEY = "drift", "consumed", "labelled"
KNOWN_KEYS = (RECENT_KEY, RESETS_KEY, MOVED_KEY, DRIFT_KEY, CONSUMED_KEY, LABELLED_KEY)

# A batch id is refused as a replay while it is among the last CONSUMED_LIMIT distinct
# ids consumed; one consumed longer ago is processed again. `qcore device` names a
# batch by 16 hex digits of its SHA-256, so the record costs at most ~20 KiB of header.
CONSUMED_LIMIT = 1024
# Ids longer than this are kept as a digest, so that the record stays bounded whatever
# ids an application passes: at most CONSUMED_LIMIT * ID_MAX_CHARS characters.
ID_MAX_CHARS = 64


@dataclass(frozen=True)
class GuardRecord:
    """The user guard's view of one labelled batch: windows the device predicted right,
    windows the deployed model would have, windows, and windows only the device (only
    the deployed model) predicted right."""

    device_right: int
    deployed_right: int
    n: int
    device_alone_right: int
    deployed_alone_right: int

    @classmethod
    def from_list(cls, values: Any) -> GuardRecord:
        """A record from its stored form: 5 integers, or the first 3 (then each side is
        alone right on as few windows as the two counts allow)."""
        if not (
            isinstance(values, list | tuple)
            and len(values) in (3, 5)
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)
        ):
            raise QCoreError(f"runtime guard record {values!r} is not 3 or 5 non-negative integers")
        if len(values) == 5:
            return cls(*values)
        mine, theirs, n = values
        return cls(mine, theirs, n, max(mine - theirs, 0), max(theirs - mine, 0))

    def to_list(self) -> list[int]:
        return [
            self.device_right,
            self.deployed_right,
            self.n,
            self.device_alone_right,
            self.deployed_alone_right,
        ]


def id_key(batch_id: str) -> str:
    """How a batch id is stored: as it is up to :data:`ID_MAX_CHARS` characters, else
    ``"sha256:"`` and 32 hex digits of its SHA-256."""
    if len(batch_id) <= ID_MAX_CHARS:
        return batch_id
    return "sha256:" + hashlib.sha256(batch_id.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Runtime:
    """The running state of a device (see the module doc for each field)."""

    recent: tuple[GuardRecord, ...] = ()
    resets: int = 0
    backbone_moved: bool = False
    drift: Mapping[str, Any] | None = None
    consumed: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)
    labelled: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, step: int) -> Runtime:
        """Read a runtime dict of any format the device wrote; ``step``: the state's step
        count (a state that does not say whether its backbone moved has moved once it
        took a step). A value of the wrong type is a :class:`QCoreError`."""
        recent = d.get(RECENT_KEY, [])
        consumed = d.get(CONSUMED_KEY, [])
        resets = d.get(RESETS_KEY, 0)
        moved = d.get(MOVED_KEY, step > 0)
        drift = d.get(DRIFT_KEY)
        if not isinstance(recent, list):
            raise QCoreError(f"runtime {RECENT_KEY!r} must be a list, got {recent!r}")
        if not (isinstance(consumed, list) and all(isinstance(c, str) for c in consumed)):
            raise QCoreError(f"runtime {CONSUMED_KEY!r} must be a list of batch ids")
        if not (isinstance(resets, int) and not isinstance(resets, bool) and resets >= 0):
            raise QCoreError(f"runtime {RESETS_KEY!r} must be a count, got {resets!r}")
        if not isinstance(moved, bool):
            raise QCoreError(f"runtime {MOVED_KEY!r} must be true or false, got {moved!r}")
        if drift is not None and not isinstance(drift, dict):
            raise QCoreError(f"runtime {DRIFT_KEY!r} must be an object, got {drift!r}")
        return cls(
            tuple(GuardRecord.from_list(r) for r in recent),
            resets,
            moved,
            drift,
            _last_distinct(id_key(c) for c in consumed),
            {k: v for k, v in d.items() if k not in KNOWN_KEYS},
            _counts(d.get(LABELLED_KEY, {})),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object a state file keeps: records as 5 integers; ``recent``,
        ``drift`` and ``consumed`` only when there is something to keep."""
        out: dict[str, Any] = dict(self.extra)
        out[RESETS_KEY] = self.resets
        out[MOVED_KEY] = self.backbone_moved
        if self.recent:
            out[RECENT_KEY] = [r.to_list() for r in self.recent]
        if self.drift is not None:
            out[DRIFT_KEY] = dict(self.drift)
        if self.consumed:
            out[CONSUMED_KEY] = list(self.consumed)
        if self.labelled:
            out[LABELLED_KEY] = dict(self.labelled)
        return out

    def has_consumed(self, batch_id: str) -> bool:
        """Whether ``batch_id`` is among the last :data:`CONSUMED_LIMIT` ids consumed."""
        return id_key(batch_id) in self.consumed

    def consume(self, batch_id: str) -> Runtime:
        """This state with ``batch_id`` consumed last (an id consumed again moves to the
        end), keeping the last :data:`CONSUMED_LIMIT` distinct ids."""
        return replace(self, consumed=_last_distinct([*self.consumed, id_key(batch_id)]))

    def record(self, mark: GuardRecord, window: int) -> Runtime:
        """This state with ``mark`` recorded and the last ``window`` records kept."""
        return replace(self, recent=(*self.recent, mark)[-window:] if window > 0 else ())

    def counted(self, labels: Any, names: tuple[str, ...]) -> Runtime:
        """This state with the labels ``labels`` (class indices into ``names``, -1: none;
        None: no labels) counted, and the counts of classes not in ``names`` forgotten."""
        counts = {name: self.labelled.get(name, 0) for name in names}
        for k in [] if labels is None else labels:
            if k >= 0:
                counts[names[k]] += 1
        return replace(self, labelled={name: n for name, n in counts.items() if n})

    def label_counts(self, names: tuple[str, ...]) -> list[int]:
        """The labels received so far of each class of ``names``, in order."""
        return [self.labelled.get(name, 0) for name in names]

    def returned(self) -> Runtime:
        """This state once the device returned to the deployed model: the guard's record
        restarted, the backbone the deployed one, the return counted."""
        return replace(self, recent=(), backbone_moved=False, resets=self.resets + 1)


def _counts(value: Any) -> dict[str, int]:
    """The stored ``labelled`` counts, checked: class name -> count >= 1."""
    if not isinstance(value, dict) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in value.values()
    ):
        raise QCoreError(f"runtime {LABELLED_KEY!r} must map class names to counts, got {value!r}")
    return dict(value)


def _last_distinct(ids: Any) -> tuple[str, ...]:
    """The last :data:`CONSUMED_LIMIT` distinct ``ids``, in the order of their last
    occurrence (oldest first)."""
    seen: dict[str, None] = {}
    for i in ids:
        seen.pop(i, None)
        seen[i] = None
    return tuple(seen)[-CONSUMED_LIMIT:]
