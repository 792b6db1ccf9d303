"""``zo-spsa``: zeroth-order calibration of the integer codes by SPSA (forward passes only).

Each iteration draws ``n_perturb`` sparse random perturbations ``D`` of the codes (each
code moves by +1 or -1 with probability ``density / 2`` each, else stays) and measures
``d = (L(q + D) - L(q - D)) / 2``, the cross-entropy on core + batch (codes clipped to
range). Per code, ``g = sum_k d_k D_k`` estimates the loss slope along the code; a code
moves by ``-sign(g)`` only where the estimate is confident, ``|g| > z * rms(d) *
sqrt(n)`` with ``n`` the perturbations that touched it (a z-test against the noise of
the differences). The moved codes are clipped to ``[0, 2**bits - 1]``; scales and zero
points never change. With ``guard`` a move that raises the loss is dropped.
BatchNorm statistics follow ``bn_mode`` and the core is the QCore with QCore's update,
so this differs from ``qcore`` only in how codes move (no flip network, no learned
feedback). NumPy only: this module never imports PyTorch (the cloud export used by the
factory is imported inside it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from qcore.config import FlipGuard
from qcore.core.qmodel import QLayer, QuantizedModel
from qcore.core.quant import qrange
from qcore.coreset.core import Core
from qcore.edge.flip_passes import cross_entropy
from qcore.edge.infer import bn_reestimate, forward
from qcore.edge.infer import predict as edge_predict
from qcore.methods.common import CoreCalibrator, core_loop
from qcore.methods.registry import CORE_LOOP, Deployment, register


def shift_codes(qm: QuantizedModel, moves: dict[str, np.ndarray], sign: int) -> QuantizedModel:
    """A model whose layer ``name`` codes are ``clip(q + sign * moves[name])`` (int moves of
    the weight's shape); other layers and all norms are shared with ``qm``, not copied."""
    layers = dict(qm.layers)
    for name, move in moves.items():
        layer = qm.layers[name]
        qt = layer.weight
        qmin, qmax = qrange(qt.bits)
        q = np.clip(qt.q.astype(np.int16) + sign * move, qmin, qmax).astype(np.uint8)
        layers[name] = QLayer(qt.with_codes(q), layer.act, layer.bias, layer.kernel_size)
    return QuantizedModel(
        qm.n_channels, qm.n_classes, qm.filters, qm.depth, qm.bits, layers, qm.norms
    )


@dataclass(frozen=True)
class SPSAResult:
    model: QuantizedModel
    correct: np.ndarray  # bool (n_accepted + 1, n_samples)
    flips_applied: int
    moves_rejected: int


def spsa_calibrate(
    qm: QuantizedModel,
    X: np.ndarray,
    y: np.ndarray,
    *,
    iters: int,
    rng: np.random.Generator,
    n_perturb: int = 8,
    density: float = 0.01,
    z: float = 2.0,
    guard: FlipGuard = "pass",
) -> SPSAResult:
    """``iters`` SPSA iterations on ``(X, y)``: ``(2 * n_perturb + 1)`` forward passes each.

    Every guard but ``"off"`` keeps a move only if the loss does not rise (a move is one
    joint step of all layers, so a per-layer guard means no more here than per move).
    """
    names = [n for n, layer in qm.layers.items() if layer.quantized]
    p = [density / 2, 1.0 - density, density / 2]

    def loss_of(model: QuantizedModel) -> tuple[float, np.ndarray]:
        logits = forward(model, X)
        return cross_entropy(logits, y), logits.argmax(1) == y

    loss, ok = loss_of(qm)
    correct, applied, rejected = [ok], 0, 0
    for _ in range(iters):
        num = {n: np.zeros(qm.layers[n].weight.shape) for n in names}
        cnt = {n: np.zeros(qm.layers[n].weight.shape) for n in names}
        diffs = []
        for _ in range(n_perturb):
            D = {
                n: rng.choice(np.array([-1, 0, 1], np.int16), qm.layers[n].weight.shape, p=p)
                for n in names
            }
            d = (loss_of(shift_codes(qm, D, 1))[0] - loss_of(shift_codes(qm, D, -1))[0]) / 2
            diffs.append(d)
            for n in names:
                num[n] += d * D[n]
                cnt[n] += np.abs(D[n])
        noise = float(np.sqrt(np.mean(np.square(diffs))))
        if noise == 0.0:
            continue
        moves = {
            n: np.where(np.abs(num[n]) > z * noise * np.sqrt(cnt[n]), -np.sign(num[n]), 0).astype(
                np.int16
            )
            for n in names
        }
        n_moves = int(sum(np.count_nonzero(m) for m in moves.values()))
        if n_moves == 0:
            continue
        candidate = shift_codes(qm, moves, 1)
        cand_loss, cand_ok = loss_of(candidate)
        if guard != "off" and cand_loss > loss:
            rejected += 1
            continue
        qm, loss = candidate, cand_loss
        applied += n_moves
        correct.append(cand_ok)
    return SPSAResult(qm, np.stack(correct), applied, rejected)


class ZOSPSA(CoreCalibrator):
    """SPSA code updates on core + batch, then QCore's core update (NumPy only)."""

    def __init__(
        self,
        qm: QuantizedModel,
        core: Core,
        *,
        iters: int,
        guard: FlipGuard,
        bn_mode: str,
        **loop: Any,
    ) -> None:
        """``loop``: :class:`CoreCalibrator`'s ``seed``, ``core_mode`` and ``old_quota``."""
        super().__init__(core, **loop)
        self.qm = qm
        self.iters, self.guard, self.bn_mode = iters, guard, bn_mode

    def predict(self, X: np.ndarray) -> np.ndarray:
        return edge_predict(self.qm, X)

    def calibrate(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        qm = bn_reestimate(self.qm, X) if self.bn_mode == "reestimate" else self.qm
        res = spsa_calibrate(qm, X, y, iters=self.iters, rng=self.rng, guard=self.guard)
        self.qm = res.model
        return res.correct, {
            "flips": float(res.flips_applied),
            "passes_rejected": float(res.moves_rejected),
        }

    def device_bytes(self) -> int:
        return self.qm.device_bytes()["total"] + self.core.nbytes


@register("zo-spsa", uses_qcore=True, reads=("flip_guard", "bn_mode", *CORE_LOOP))
def _zo_spsa(dep: Deployment) -> ZOSPSA:
    from qcore.cloud.export import to_qmodel  # cloud side: the hand-over only

    device = dep.device
    return ZOSPSA(
        to_qmodel(dep.qmodel),
        dep.core,
        iters=dep.cfg.calib_steps,
        guard=device.flip_guard,
        bn_mode=device.bn_mode,
        **core_loop(device),
    )
