"""``qcore-slda``: QCore's parts under the streaming closed-form head.

The device step as configured (core, BatchNorm mode, guarded flip passes with budget,
core update) followed by the streaming head's update on the batch's features from the
backbone as the step left it; predictions come from the head. Its settings are the
run's device settings with ``head=slda``.
"""

from __future__ import annotations

from qcore.baselines.qcore_method import DeviceCalibrator, device_calibrator
from qcore.baselines.registry import Deployment, register


@register("qcore-slda")
def _qcore_slda(dep: Deployment) -> DeviceCalibrator:
    return device_calibrator(dep, dep.core, dep.cfg.device_config().replace(head="slda"))
