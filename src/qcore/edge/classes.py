"""The classes an artifact or device state knows: where each came from, and removing one
the device learnt.

A class is the cloud's when the model's own output layer has it (index below the model's
``n_classes``), the device's when a device added it to the streaming head
(``allow_new_classes``). Dropping a device class removes its count and mean and takes
its own share out of the shared scatter (:func:`qcore.edge.head.drop`), so the head is
what it would be had that class's windows never come: the remedy for a misspelt label.
NumPy only.
"""

from __future__ import annotations

from dataclasses import replace

from qcore.edge.artifact import Artifact
from qcore.edge.head import drop
from qcore.errors import QCoreError


def class_table(art: Artifact) -> list[dict[str, object]]:
    """One row per class of ``art``: ``index``, ``name``, ``origin`` (``cloud`` or
    ``device``) and ``count``, the weight of its windows in the streaming head's
    statistics (source windows count ``head_source_weight`` each; None without a
    streaming head)."""
    counts = None if art.head is None else art.head.count
    return [
        {
            "index": k,
            "name": name,
            "origin": "cloud" if k < art.model.n_classes else "device",
            "count": None if counts is None else round(float(counts[k]), 3),
        }
        for k, name in enumerate(art.class_names)
    ]


def drop_class(art: Artifact, name: str, keep: int) -> Artifact:
    """``art`` without the device class ``name``; the classes of the first ``keep``
    indices (those of the artifact the device was deployed with) cannot be dropped."""
    if name not in art.class_names:
        raise QCoreError(f"no class {name!r}: the classes are {', '.join(art.class_names)}")
    k = art.class_names.index(name)
    if k < max(art.model.n_classes, keep):
        where = "the cloud" if k < art.model.n_classes else "the deployed artifact"
        raise QCoreError(f"class {name!r} came with {where}: only a class the device learnt can go")
    assert art.head is not None  # an artifact knows more classes than its model only with one
    head = drop(art.head, k)
    names = art.class_names[:k] + art.class_names[k + 1 :]
    return replace(art, head=head, class_names=names)
