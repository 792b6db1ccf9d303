"""The label round trip: the windows a device asks labels for, kept until the answers come.

In the field nobody labels every batch. With ``ask_fraction`` set, each step asks for
``budget(n, ask_fraction)`` windows of its batch of ``n`` (:mod:`qcore.edge.asking`),
chosen among those that came without a label by ``ask_policy``, from what the prediction
already computed (the calibrated class probabilities, the novelty, the distance margin
and the whitened features, :mod:`qcore.edge.signals`), the labels received so far per
class (the runtime's ``labelled``) and the step's generator
(:func:`qcore.edge.backbone.step_rng`), so a resumed device asks what an uninterrupted
one would (:func:`asked`).

Design decisions:

* **The windows themselves wait**, as the model's input (normalised, float32), in a
  :class:`Pending` under ``(batch key, window index)``: answering needs no stream to be
  read again, and an answered window is learnt exactly as if it had come labelled. The
  batch key is the id the step was given (as the runtime stores it,
  :func:`qcore.edge.runtime.id_key`; ``qcore device`` gives each batch 16 hex digits of
  its SHA-256, so two batches of the same name never share a key) or, for a batch
  stepped without one, the step number (an ``int``). A window asked again (its batch
  stepped again) replaces the one waiting.
* **Bounded**: at most ``ask_keep`` windows wait; beyond, the oldest are dropped
  (:func:`added`), so the state holds at most ``ask_keep * channels * length * 4`` bytes
  of them.
* **All or nothing**: :func:`taken` reads every answer before anything changes; one for a
  window that does not wait (never asked, already answered, or dropped) or given twice
  refuses the whole call. Labels are read as batch labels are
  (:func:`qcore.edge.labels.read_labels`).
* **In the state**: an optional part of the artifact (:func:`encode_pending`): the keys,
  oldest first, in the header field ``pending`` and the windows as the float32 array
  ``pending/windows``; a file without the field has no window waiting.
* **As files**, ``qcore device --requests/--answers``: :mod:`qcore.edge.csvfiles`.

NumPy only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from qcore.config import DeviceConfig
from qcore.edge.asking import ask, budget
from qcore.edge.backbone import step_rng
from qcore.edge.container import Reader, Writer, corrupt, get_field, is_count
from qcore.edge.labels import read_labels
from qcore.edge.runtime import ID_MAX_CHARS, id_key
from qcore.errors import QCoreError

Key = str | int  # a batch id as stored (id_key), or the step number of a batch without one


def is_key(key: object) -> bool:
    """Whether ``key`` is a stored batch key: a non-empty id of at most
    :data:`~qcore.edge.runtime.ID_MAX_CHARS` characters, or a step number >= 1."""
    if isinstance(key, str):
        return 0 < len(key) <= ID_MAX_CHARS
    return is_count(key, 1)


@dataclass(frozen=True, eq=False)
class Pending:
    """The windows waiting for an answer, oldest first: ``keys`` ``(batch key, window
    index)`` and their normalised ``windows`` float32 ``(m, channels, length)``, m >= 1
    (no window waiting is None, not an empty Pending). Compared by identity (it holds an
    array)."""

    keys: tuple[tuple[Key, int], ...]
    windows: np.ndarray

    def __post_init__(self) -> None:
        w = self.windows
        if not isinstance(w, np.ndarray) or w.dtype != np.float32 or w.ndim != 3:
            raise QCoreError("pending windows must be float32 (windows, channels, length)")
        if len(w) != len(self.keys) or not len(w):
            raise QCoreError(f"{len(self.keys)} pending keys for {len(w)} windows")
        if not all(len(k) == 2 and is_key(k[0]) and is_count(k[1]) for k in self.keys):
            raise QCoreError("a pending window's key must be (batch id or step, window index)")
        if len(set(self.keys)) != len(self.keys):
            raise QCoreError("a window waits twice for its answer")
        if not np.isfinite(w).all():
            raise QCoreError("pending windows must be finite")

    def __len__(self) -> int:
        return len(self.keys)


def batch_key(batch_id: str | None, step: int) -> Key:
    """The key of a step's batch: its id as stored, else the step number."""
    return step if batch_id is None else id_key(batch_id)


# ------------------------------------------------------------------------------ asking


def asked(
    cfg: DeviceConfig,
    probs: np.ndarray,
    novelty: np.ndarray | None,
    labels: np.ndarray | None,
    counts: list[int],
    step: int,
    margin: np.ndarray | None = None,
    whitened: np.ndarray | None = None,
) -> np.ndarray:
    """The windows (indices int64, sorted) step ``step`` asks labels for: ``budget(n,
    ask_fraction)`` of its ``n`` windows, at most those without a label (``labels`` -1 or
    None), by ``ask_policy`` from the calibrated ``probs`` ``(n, K)``, the ``novelty``, the
    distance ``margin`` ``(n,)``, the ``whitened`` features ``(n, D)`` (the density
    policies weigh the windows without a label among themselves) and the labels received
    so far per class ``counts`` ``(K,)``; none without ``ask_fraction``."""
    n = len(probs)
    open_ = np.arange(n) if labels is None else np.flatnonzero(labels < 0)
    k = 0 if cfg.ask_fraction is None else min(budget(n, cfg.ask_fraction), len(open_))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    far = None if novelty is None else novelty[open_]
    apart = None if margin is None else margin[open_]
    white = None if whitened is None else whitened[open_]
    rng = step_rng(cfg.seed, step)
    got = ask(
        cfg.ask_policy, k, probs[open_], far, np.asarray(counts), rng, margin=apart, whitened=white
    )
    return open_[got]


def not_asked(mask: np.ndarray | None, windows: np.ndarray) -> np.ndarray | None:
    """``mask`` (bool, None: none) without ``windows``: a window asked about waits for its
    label, it is not pseudo-labelled meanwhile."""
    if mask is None:
        return None
    mask = mask.copy()
    mask[windows] = False
    return mask if mask.any() else None


def added(
    pending: Pending | None, key: Key, windows: np.ndarray, X: np.ndarray, keep: int
) -> Pending | None:
    """``pending`` with the windows ``windows`` (indices) of batch ``key``, normalised
    ``X`` ``(len(windows), c, t)``, waiting last; the newest ``keep`` kept."""
    if not len(windows):
        return trimmed(pending, keep)
    new = [(key, int(i)) for i in windows]
    fresh = set(new)
    old = [] if pending is None else [j for j, k in enumerate(pending.keys) if k not in fresh]
    keys = [pending.keys[j] for j in old] if pending is not None else []
    arrays = [X] if pending is None else [pending.windows[old], X]
    both = np.concatenate(arrays).astype(np.float32, copy=False)
    return Pending(tuple([*keys, *new][-keep:]), np.ascontiguousarray(both[-keep:]))


def trimmed(pending: Pending | None, keep: int) -> Pending | None:
    """``pending``'s newest ``keep`` windows."""
    if pending is None or len(pending) <= keep:
        return pending
    return Pending(pending.keys[-keep:], np.ascontiguousarray(pending.windows[-keep:]))


# --------------------------------------------------------------------------- answering


@dataclass(frozen=True)
class Taken:
    """Answers read (:func:`taken`): the windows still waiting, the answered windows
    ``X`` float32 ``(m, c, t)``, their ``labels`` int64 ``(m,)`` (indices into the class
    names, then the ``new`` ones)."""

    rest: Pending | None
    X: np.ndarray
    labels: np.ndarray
    new: tuple[str, ...]


@dataclass(frozen=True)
class Answered:
    """What :meth:`qcore.edge.device.Device.answer` did: windows ``learnt``, the class
    names they added, windows still ``pending``."""

    learnt: int
    new_classes: list[str]
    pending: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def taken(
    pending: Pending | None,
    answers: Iterable[Any],
    names: tuple[str, ...],
    allow_new: bool,
    keep: int,
) -> Taken:
    """Read ``answers`` ``(batch key, window index, label)`` against the windows waiting
    (``names``: the device's classes; ``allow_new``: a label it does not know adds a
    class); a :class:`QCoreError` naming the first one that cannot be taken, before
    anything is taken."""
    where = {} if pending is None else {k: j for j, k in enumerate(pending.keys)}
    rows: list[int] = []
    given: list[Any] = []
    for item in answers:
        key, window, label = _answer(item)
        stored = (id_key(key) if isinstance(key, str) else key, window)
        j = where.pop(stored, None)
        if j is None:
            twice = pending is not None and any(pending.keys[r] == stored for r in rows)
            raise QCoreError(
                f"window {window} of batch {key!r} is answered twice"
                if twice
                else f"window {window} of batch {key!r} waits for no answer: it was never "
                "asked for, was answered already, or was dropped (a device keeps the last "
                f"{keep} windows it asked for, ask_keep)"
            )
        rows.append(j)
        given.append(label)
    keys = [] if pending is None else [pending.keys[j] for j in rows]
    labels, new = _labels(given, keys, names, allow_new)
    if pending is None or not rows:
        return Taken(pending, np.zeros((0, 0, 0), np.float32), labels, new)
    left = sorted(where.values())
    rest = Pending(tuple(pending.keys[j] for j in left), pending.windows[left]) if left else None
    return Taken(rest, pending.windows[rows], labels, new)


def _answer(item: Any) -> tuple[Key, int, Any]:
    """One answer's ``(batch key, window, label)``, its form checked."""
    if not (isinstance(item, list | tuple) and len(item) == 3):
        raise QCoreError(f"an answer is (batch, window, label), got {item!r}")
    key, window, label = item
    if not (isinstance(key, str) and key) and not is_count(key, 1):
        raise QCoreError(f"an answer's batch is a batch id or a step number, got {key!r}")
    window = int(window) if isinstance(window, np.integer) else window
    if not is_count(window):
        raise QCoreError(f"an answer's window is an index >= 0, got {window!r}")
    return key, window, label


def _labels(
    given: list[Any], keys: list[tuple[Key, int]], names: tuple[str, ...], allow_new: bool
) -> tuple[np.ndarray, tuple[str, ...]]:
    """The answers' labels as class indices, read as a batch's labels are."""
    ints = all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in given)
    if not ints and not all(isinstance(v, str) for v in given):
        raise QCoreError("answer labels are all class names (text) or all class indices")
    y = np.array(given, dtype=np.int64 if ints else str)
    try:
        labels, new = read_labels(y, names, allow_new)
    except QCoreError as exc:
        raise QCoreError(f"answers: {exc}") from None
    missing = np.flatnonzero(labels < 0)
    if len(missing):
        key, window = keys[missing[0]]
        raise QCoreError(f"the answer for window {window} of batch {key!r} has no label")
    return labels, new


# ------------------------------------------------------------------------------- state


def encode_pending(w: Writer, pending: Pending | None) -> dict[str, Any]:
    """Append the waiting windows (float32: exact); return the header field ``pending``,
    their keys oldest first (nothing when no window waits)."""
    if pending is None:
        return {}
    w.add("pending/windows", pending.windows, "float32")
    return {"pending": [[key, window] for key, window in pending.keys]}


def decode_pending(header: Any, r: Reader, source: str) -> Pending | None:
    """The windows :func:`encode_pending` stored, or None (a header without the field);
    their shape and their bound, ``ask_keep``, are the artifact's checks."""
    if "pending" not in header:
        return None
    entries = get_field(header, "pending", list, source)
    if not all(isinstance(e, list) and len(e) == 2 for e in entries):
        raise corrupt(source, "header field 'pending' must list [batch key, window] pairs")
    keys = tuple((e[0], e[1]) for e in entries)
    return Pending(keys, r.take("pending/windows", "float32"))
