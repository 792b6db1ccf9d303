"""How well a streamed method's confidence means what it says, on the runner's test sets.

A method's *confidence* in a window is the probability it gives its own prediction:

* a :class:`qcore.methods.qcore_method.DeviceCalibrator` (``qcore``, ``slda``, ...): the
  device's calibrated signals (:meth:`qcore.edge.device.Device.signals`), which also give
  a novelty per window when the device has a streaming head;
* a method holding a torch model (the back-prop methods) or a NumPy quantized model
  (``none``, ``bn-stats``, ``zo-spsa``): the largest softmax probability of its logits;
* a view translating the classes the cloud held out (:mod:`qcore.eval.newclass`): the
  confidence of the method inside it.

:func:`measure_test_sets` gives a results row's accuracy, expected calibration error and
reliability bins on the source and target test sets, and before the stream the AUROC with
which the confidence (and minus the novelty, and the distance margin) tells the target
windows predicted wrong from those predicted right (:mod:`qcore.eval.metrics`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from qcore.cloud.train import predict_logits
from qcore.core.metrics import accuracy as acc_of
from qcore.core.qmodel import QuantizedModel
from qcore.data.scenario import Scenario
from qcore.edge.infer import forward
from qcore.edge.signals import Signals, softmax_signals
from qcore.eval.metrics import auroc, ece, reliability
from qcore.methods.qcore_method import DeviceCalibrator


def signals_of(cal: Any, X: np.ndarray) -> Signals | None:
    """The probabilities (and novelty) ``cal`` gives the windows ``X`` (normalised, as the
    stream hands them over), as the module docstring lists; None for a method holding
    neither a device nor a model."""
    if isinstance(cal, DeviceCalibrator):
        return cal.device.signals(X, normalized=True)
    inner = getattr(cal, "calibrator", None)  # a view translating held-out classes
    if inner is not None:
        return signals_of(inner, X)
    model = getattr(cal, "model", None)
    if isinstance(model, torch.nn.Module):
        return softmax_signals(predict_logits(model, X))
    qm = getattr(cal, "qm", None)
    if isinstance(qm, QuantizedModel):
        return softmax_signals(forward(qm, X))
    return None


def measure_test_sets(cal: Any, sc: Scenario, suffix: str = "") -> dict[str, Any]:
    """``{source,target}_acc``, ``{source,target}_ece`` and ``{source,target}_reliability``
    (``[mean confidence, accuracy, count]`` per non-empty bin) of ``cal`` as it predicts
    now, each key ending in ``suffix``; with ``suffix="_before"`` also
    ``target_auroc_before`` (the confidence), ``target_auroc_novelty_before`` (minus
    the novelty) and ``target_auroc_margin_before`` (the distance margin) for telling
    right target predictions from wrong ones. A value that cannot be measured (no
    confidence, no novelty or margin, every prediction right or none) is None."""
    out: dict[str, Any] = {}
    calib: dict[str, Any] = {}
    for name, split in (("source", sc.source_test), ("target", sc.target_test)):
        pred = cal.predict(split.X)
        out[f"{name}_acc{suffix}"] = acc_of(pred, split.y)
        sig = signals_of(cal, split.X)
        right = np.asarray(pred) == split.y
        conf = None if sig is None else sig.confidence
        calib[f"{name}_ece{suffix}"] = None if conf is None else ece(conf, right)
        bins = [] if conf is None else reliability(conf, right)
        calib[f"{name}_reliability{suffix}"] = [list(b) for b in bins] if bins else None
        if name == "target" and suffix == "_before":
            novelty = None if sig is None else sig.novelty
            margin = None if sig is None else sig.margin
            calib["target_auroc_before"] = None if conf is None else auroc(conf, right)
            calib["target_auroc_novelty_before"] = (
                None if novelty is None else auroc(-novelty, right)
            )
            calib["target_auroc_margin_before"] = None if margin is None else auroc(margin, right)
    return {**out, **calib}
