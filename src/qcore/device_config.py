"""The device's settings: :class:`DeviceConfig`, what a device's calibration step reads
(head, flip passes, guard, budget, BatchNorm mode, core update, reset, confidence and
novelty, the labels it asks for, policy, seed). It travels in the artifact's ``device``
section, and a run holds one in :attr:`qcore.config.RunConfig.device`. Each field is
declared once, with its default, help and bounds (:mod:`qcore.core.settings`). This
module imports nothing beyond ``qcore.core`` and ``qcore.errors``.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, fields
from typing import Literal

from qcore.core.quant import check_bits
from qcore.core.settings import Settings, setting
from qcore.errors import QCoreError

FlipGuard = Literal["pass", "backtrack", "layer", "off"]
BnMode = Literal["reestimate", "frozen"]
CoreMode = Literal["proportional", "stratified", "balanced"]
HeadKind = Literal["model", "slda"]
# which windows of a batch get labels: the choices of qcore.edge.asking.LABEL_POLICIES (a
# test keeps the two equal); a device's ask_policy and a run's label_policy
LabelPolicy = Literal[
    "random", "margin", "novel", "margin-cover", "novel-cover", "margin-pairs", "margin-top",
    "margin-random", "dmargin", "margin-dense", "margin-dense2",
]  # fmt: skip
FLIP_GUARDS: tuple[FlipGuard, ...] = typing.get_args(FlipGuard)
BN_MODES: tuple[BnMode, ...] = typing.get_args(BnMode)
CORE_MODES: tuple[CoreMode, ...] = typing.get_args(CoreMode)
HEADS: tuple[HeadKind, ...] = typing.get_args(HeadKind)
LABEL_POLICIES: tuple[LabelPolicy, ...] = typing.get_args(LabelPolicy)
# chosen on validation pairs, each under its section of docs/results.md: the flip budget
# ("Defaults chosen on validation pairs"), new_class_min ("new_class_min"), the confidence
# and drift settings ("Confidence, novelty and the drift trigger"), the ask policy ("Label
# requests": margin, adopted by the second rule on new validation seeds)
DEFAULT_FLIP_BUDGET = 0.01
NEW_CLASS_MIN = 5
CONFIDENCE_DOF = 30.0
CONFIDENCE_TEMPERATURE = 2.0
DRIFT_SHARE = 0.7
DRIFT_RELEASE = 0.05
CONFIDENCE_NOVELTY_POWER = 1.0
ASK_POLICY: LabelPolicy = "margin"
ASK_KEEP = 64


def check_flip_budget(key: str, budget: float) -> None:
    """A flip budget is a share of the codes in (0, 1] (None: no cap)."""
    if not 0.0 < budget <= 1.0:
        raise QCoreError(f"flip budget must lie in (0, 1], got {budget}")


def _check_bits(key: str, bits: int) -> None:
    check_bits(bits)


@dataclass(frozen=True)
class Policy:
    """When a device calibrates: ``kind`` "every" (each ``every``-th batch) or "drift"."""

    kind: Literal["every", "drift"]
    every: int = 1

    def __str__(self) -> str:
        if self.kind == "drift":
            return "drift"
        return "every" if self.every == 1 else f"every:{self.every}"


def parse_policy(spec: object) -> Policy:
    """``"every"``, ``"every:N"`` (N >= 1) or ``"drift"`` -> :class:`Policy`."""
    if spec == "every":
        return Policy("every")
    if spec == "drift":
        return Policy("drift")
    if isinstance(spec, str) and spec.startswith("every:"):
        n = spec.split(":", 1)[1]
        if n.isdigit() and int(n) >= 1:
            return Policy("every", int(n))
    raise QCoreError(f"unknown policy {spec!r}: choose every, every:N (N >= 1) or drift")


def _check_policy(key: str, spec: str) -> None:
    parse_policy(spec)


@dataclass(frozen=True)
class DeviceConfig(Settings):
    """How a device calibrates; stored in the artifact's ``device`` section."""

    head: HeadKind = setting(
        "model",
        "model: predict with the deployed head; slda: with the streaming closed-form head "
        "(class means and shared covariance of pooled features, updated by every label)",
    )
    head_shrinkage: float = setting(
        1e-3, "slda head: covariance shrinkage towards the identity, in (0, 1]", "(0, 1]"
    )
    head_bits: int | None = setting(
        None, "slda head: weights rounded to this many bits per class (none: float32)", _check_bits
    )
    flip_steps: int = setting(
        3, "flip passes per calibration step (each one forward pass; 0: no flips)", ">= 0"
    )
    flip_guard: FlipGuard = setting(
        "pass",
        "pass: keep a pass only if the loss on core+batch does not rise; backtrack: retry a "
        "rejected pass with its most confident half, quarter, ...; layer: accept each "
        "layer's flips on their own; off: apply every pass",
    )
    flip_budget: float | None = setting(
        DEFAULT_FLIP_BUDGET,
        "most codes one pass may move, as a share of all codes (none: no cap)",
        check_flip_budget,
    )
    bn_mode: BnMode = setting(
        "reestimate", "reestimate: BatchNorm statistics from core+batch each step; frozen: keep"
    )
    core_mode: CoreMode = setting(
        "proportional",
        "core draw: proportional to misses, stratified (PMF over miss counts) or balanced "
        "(equal quota per class)",
    )
    old_quota: float | None = setting(
        None,
        "share of the core reserved for old samples at each update (none: by score)",
        "[0, 1]",
    )
    guard_margin: float = setting(
        0.05, "roll a step back when accuracy on the old core or the batch drops by more", "[0, 1]"
    )
    reset_window: int = setting(
        5,
        "return to the deployed model when, over this many recent labelled batches, the "
        "device predicted worse than the deployed model would have (0: never)",
        ">= 0",
    )
    reset_margin: float = setting(
        0.02, "reset only when the device's accuracy over that window is lower by more", "[0, 1]"
    )
    reset_alpha: float | None = setting(
        0.05,
        "while the backbone has not moved (the device learns only its head), reset only when, "
        "in addition, an exact one-sided sign test on the windows where the device and the "
        "deployed model disagree gives p below this (none: the margin alone)",
        "(0, 1]",
    )
    pseudo_threshold: float | None = setting(
        None,
        "slda head: a window without a label whose confidence reaches this is added to the "
        "statistics as its predicted class (none: unlabelled windows are only predicted)",
        "(0, 1]",
    )
    share_clip: float | None = setting(
        None,
        "slda head: each window's pooled features are scaled to at most this L2 norm before "
        "they join the statistics, which bounds what one window changes in a private fleet "
        "share (none: features as they are)",
        "> 0",
    )
    new_class_min: int = setting(
        NEW_CLASS_MIN,
        "slda head: a class the device learns is predicted once it has this many labelled "
        "windows (one mislabelled window cannot take predictions)",
        ">= 1",
    )
    confidence_dof: float = setting(
        CONFIDENCE_DOF,
        "slda head: degrees of freedom of the Student-t behind the confidence (smaller: a "
        "window far from every class is less sure)",
        "> 0",
    )
    confidence_temperature: float = setting(
        CONFIDENCE_TEMPERATURE,
        "slda head: temperature of the confidence (larger: less sure)",
        "> 0",
    )
    confidence_novelty_power: float = setting(
        CONFIDENCE_NOVELTY_POWER,
        "slda head: a novel window's temperature grows as its novelty to this power (0: "
        "one temperature for all)",
        ">= 0",
    )
    novelty_threshold: float | None = setting(
        None,
        "slda head: squared Mahalanobis distance to the nearest class mean beyond which a "
        "window is novel (the cloud sets it: 95% of held-out source windows lie within)",
        "> 0",
    )
    drift_share: float = setting(
        DRIFT_SHARE,
        "policy=drift with a novelty threshold: calibrate on a batch when at least this "
        "share of its windows is novel",
        "(0, 1]",
    )
    drift_release: float = setting(
        DRIFT_RELEASE,
        "policy=drift with a novelty threshold: once in drift, calibrate on each batch until "
        "its novel share falls to this or below",
        "[0, 1)",
    )
    ask_fraction: float | None = setting(
        None,
        "slda head: the share of each batch's windows the device asks labels for, among "
        "those without one (none: it asks for none); answers come back later (qcore device "
        "--answers)",
        "[0, 1]",
    )
    ask_policy: LabelPolicy = setting(
        ASK_POLICY,
        "which windows it asks for: random; margin (least sure between two classes); novel "
        "(furthest from every class); margin-cover, novel-cover (first one per predicted "
        "class, the classes with the fewest labels so far first); dmargin (smallest "
        "distance margin: most likely wrong); margin-dense, margin-dense2 (margin weighted "
        "by the window's density in its batch)",
    )
    ask_keep: int = setting(
        ASK_KEEP,
        "most asked windows kept waiting for an answer (in the state, float32); beyond, "
        "the oldest are dropped",
        ">= 1",
    )
    policy: str = setting("every", "when to calibrate: every, every:N or drift", _check_policy)
    seed: int = setting(0, "seed of the core updates (with the step number)")

    @property
    def schedule(self) -> Policy:
        return parse_policy(self.policy)


DEVICE_KEYS = tuple(f.name for f in fields(DeviceConfig))
# the device settings a run holds in its ``device`` field (its seed is the run's)
RUN_DEVICE_KEYS = tuple(k for k in DEVICE_KEYS if k != "seed")
