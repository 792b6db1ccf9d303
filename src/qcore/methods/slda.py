"""``slda``: the streaming closed-form head alone, on the frozen deployed backbone.

Deep Streaming LDA (Hayes & Kanan, 2020) as a device step: the cloud starts the class
means and shared covariance from the deployed model's pooled features of the source
training set; on the device every labelled window of a batch is added to them (the
features come from the forward pass that predicted the batch) and the head is solved
again. No flips, no BatchNorm change, no core, no flip network: statistics only.
"""

from __future__ import annotations

from qcore.config import DEVICE_KEYS
from qcore.methods.qcore_method import DeviceCalibrator, device_calibrator
from qcore.methods.registry import Deployment, register

FIXED = {"head": "slda", "flip_steps": 0, "bn_mode": "frozen"}


@register("slda", unlabelled=True, fixes=FIXED, reads=DEVICE_KEYS)
def _slda(dep: Deployment) -> DeviceCalibrator:
    return device_calibrator(dep, None)
