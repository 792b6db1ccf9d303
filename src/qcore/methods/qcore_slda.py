"""``qcore-slda`` and its ablations: QCore's parts under the streaming closed-form head.

The device step as configured (core, BatchNorm re-estimated on core plus batch, guarded
flip passes with budget, core update), then the streaming head's update on the batch's
features from the backbone as the step left it; predictions come from the head. The
ablations switch one part off, so that each part's contribution on top of the head can
be read against ``slda`` (the head alone):

* ``qcore-slda``: every part;
* ``slda-bn``: the core and BatchNorm re-estimation, no flips;
* ``slda-flips``: the core and guarded flip passes, BatchNorm frozen.

The core update alone changes nothing the head sees (the backbone stays as deployed), so
it has no row of its own. Each fixes the settings above (and ``head=slda``); the other
device settings are the run's.
"""

from __future__ import annotations

from qcore.config import DEVICE_KEYS
from qcore.methods.qcore_method import DeviceCalibrator, device_calibrator
from qcore.methods.registry import Deployment, register

ABLATIONS: dict[str, dict[str, object]] = {
    "qcore-slda": {},
    "slda-bn": {"flip_steps": 0, "bn_mode": "reestimate"},
    "slda-flips": {"bn_mode": "frozen"},
}


def _head_with(name: str) -> None:
    fixes = {"head": "slda", **ABLATIONS[name]}

    @register(name, uses_qcore=True, unlabelled=True, fixes=fixes, reads=DEVICE_KEYS)
    def _factory(dep: Deployment) -> DeviceCalibrator:
        return device_calibrator(dep, dep.core)


for _name in ABLATIONS:
    _head_with(_name)
