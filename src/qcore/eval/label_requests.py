"""Which windows of each stream batch carry a label: the masks every method of a run gets.

``label_policy=random`` keeps the seeded draw of :func:`qcore.data.scenario.label_mask`
(what the runner always did). Any other policy lets a *reference device* choose: the
default streaming-head device (method ``slda``'s device settings, built from the artifact
the run ships for ``slda``) is streamed over the target and, before it calibrates on each
batch, asks for ``budget(n, label_fraction)`` windows with
:func:`qcore.edge.asking.ask` on its own calibrated probabilities, novelty, distance
margin and whitened features, given the target labels it received so far per class; it
then learns from the labels it asked for, as the ``slda`` method would. The masks are
computed once per run and bit-width, before any method streams, so back-prop baselines
and ``none`` get exactly the windows the device asked for. At ``label_fraction`` 0 or 1
no window is chosen (none or all of them): every policy gives the random masks, and no
reference device is built.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qcore.config import RunConfig
from qcore.core.types import Batch
from qcore.data.scenario import label_mask
from qcore.edge.asking import DENSITY_POWER, ask, budget
from qcore.methods.qcore_method import DeviceCalibrator, device_calibrator
from qcore.methods.registry import Deployment
from qcore.methods.slda import FIXED as SLDA_FIXED


def chooses(cfg: RunConfig) -> bool:
    """Whether the run's labelled windows are chosen by a reference device."""
    return cfg.label_policy != "random" and 0.0 < cfg.label_fraction < 1.0


def random_masks(stream: Sequence[Batch], fraction: float, seed: int) -> list[np.ndarray]:
    """The seeded masks of ``label_policy=random`` (step ``i + 1`` for batch ``i``)."""
    return [label_mask(len(b), fraction, seed, i + 1) for i, b in enumerate(stream)]


def reference_device(dep: Deployment) -> DeviceCalibrator:
    """The streaming-head device of method ``slda`` on deployment ``dep``: the run's device
    settings with slda's fixed ones (a run that set others for its own methods still asks
    through the default device)."""
    dep.device = dep.cfg.device.replace(**SLDA_FIXED)
    return device_calibrator(dep, None)


def requested_masks(
    device: DeviceCalibrator, stream: Sequence[Batch], policy: str, fraction: float, seed: int
) -> list[np.ndarray]:
    """Stream ``device`` over ``stream``: at each batch it asks (``policy``) for
    ``budget(n, fraction)`` windows, then steps on the batch with those labels alone (the
    others as -1). Returns the bool mask of each batch."""
    given: dict[str, int] = {}  # target labels received so far, by class name
    masks = []
    for i, batch in enumerate(stream):
        sig = device.device.signals(batch.X, normalized=True)
        known = device.art.class_names  # grows as the device adds a class it is given
        labelled = np.array([given.get(name, 0) for name in known], dtype=np.int64)
        rng = np.random.default_rng([seed, i + 1])  # the draw of policy random only
        k = budget(len(batch), fraction)
        mask = np.zeros(len(batch), dtype=bool)
        got = ask(
            policy, k, sig.probs, sig.novelty, labelled, rng, margin=sig.margin,
            whitened=sig.whitened if policy in DENSITY_POWER else None,
        )  # fmt: skip
        mask[got] = True
        device.observe(Batch(batch.X, np.where(mask, batch.y, -1)))
        for c in batch.y[mask]:
            name = device.label_names[int(c)]
            given[name] = given.get(name, 0) + 1
        masks.append(mask)
    return masks


def classes_never_labelled(stream: Sequence[Batch], masks: list[np.ndarray]) -> int:
    """Classes present in the stream of which no window carried a label."""
    present = set(np.concatenate([b.y for b in stream]).tolist())
    given = set(np.concatenate([b.y[m] for b, m in zip(stream, masks, strict=True)]).tolist())
    return len(present - given)
