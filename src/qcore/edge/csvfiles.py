"""The CSV files of ``qcore device``: the predictions it appends (``--predictions``), the
label requests it appends (``--requests``) and the answers it reads (``--answers``).

* A file appended to starts with its header, written once when the file is new or
  empty; one with other columns (an older qcore's) is refused before anything changes
  (:func:`check_header`).
* A request is a row ``batch, window, file`` (:data:`REQUESTS_HEADER`): the batch id the
  answer quotes (the device's key of the batch, :mod:`qcore.edge.pending`), the window's
  index in the batch, and the batch's name in the stream, where a labelling tool finds it.
* An answer is a row with the columns ``batch, window, label`` (:data:`ANSWER_COLUMNS`);
  others are ignored, so a labelling tool may fill a ``label`` column into a copy of the
  requests, and a row whose label is still empty is not an answer yet.
"""

from __future__ import annotations

import contextlib
import csv
import re
from pathlib import Path
from typing import IO

from qcore.edge.report import DeviceReport
from qcore.errors import QCoreError

# columns of `--predictions FILE` (novelty is empty for a device without a novelty threshold,
# margin for a device without a streaming head)
PREDICTIONS_HEADER = ("batch", "step", "window", "predicted", "confidence", "novelty", "margin")
REQUESTS_HEADER = ("batch", "window", "file")
ANSWER_COLUMNS = ("batch", "window", "label")


def check_header(path: str | None, header: tuple[str, ...], what: str) -> None:
    """Refuse to append to a CSV file whose columns are not ``header`` (e.g. one written
    by an older qcore), before anything changes."""
    if path is None:
        return
    try:
        with Path(path).open(newline="", encoding="utf-8") as f:
            first = next(csv.reader(f), None)
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise QCoreError(f"cannot read the {what} file {path}: {exc}") from None
    if first is not None and tuple(first) != header:
        raise QCoreError(
            f"{what} file {path} has the columns {','.join(first)}; this qcore writes "
            f"{','.join(header)}: give a new file"
        )


def csv_out(
    stack: contextlib.ExitStack, path: str | None, header: tuple[str, ...]
) -> IO[str] | None:
    """The CSV file ``path`` opened for appending, ``header`` written when it is new or
    empty (None without a path)."""
    if path is None:
        return None
    out = stack.enter_context(open(path, "a", newline="", encoding="utf-8"))
    if out.tell() == 0:  # a new or empty file: the header, once
        csv.writer(out).writerow(header)
    return out


def write_rows(
    files: tuple[IO[str] | None, IO[str] | None], name: str, batch_id: str, report: DeviceReport
) -> None:
    """A step's rows: one per window in the predictions file, one per window asked for
    in the requests file."""
    predictions, requests = files
    if predictions is not None:
        novelty, margin = (_cells(v, report.n) for v in (report.novelty, report.margin))
        rows = zip(report.predicted, report.confidences, novelty, margin, strict=True)
        writer = csv.writer(predictions)
        for k, (label, confidence, far, gap) in enumerate(rows):
            writer.writerow([name, report.step, k, label, confidence, far, gap])
        predictions.flush()
    if requests is not None and report.ask:
        csv.writer(requests).writerows([batch_id, k, name] for k in report.ask)
        requests.flush()


def _cells(values: list[float] | None, n: int) -> list[float | str]:
    """A per-window column: its values, or ``n`` empty cells where the device has none."""
    return [""] * n if values is None else [*values]


def read_answers(path: Path) -> list[tuple[str, int, int | str]]:
    """The answers of a CSV file with the columns :data:`ANSWER_COLUMNS` (any others are
    ignored; a row whose label is empty is skipped); labels that all read as integers are
    class indices or integer class names, as in a batch."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in ANSWER_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise QCoreError(
                    f"answers file {path} needs the columns {', '.join(ANSWER_COLUMNS)}; "
                    f"it has {', '.join(reader.fieldnames or []) or 'none'}"
                )
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise QCoreError(f"cannot read the answers file {path}: {exc}") from None
    out: list[tuple[str, int, str]] = []
    for line, row in rows:
        batch, window, label = ((row[c] or "").strip() for c in ANSWER_COLUMNS)
        if not label:
            continue
        if not batch or not window.isdigit():
            raise QCoreError(f"answers file {path}, line {line}: need a batch and a window index")
        out.append((batch, int(window), label))
    if all(re.fullmatch(r"-?\d+", label) for _, _, label in out):
        return [(batch, window, int(label)) for batch, window, label in out]
    return list(out)
