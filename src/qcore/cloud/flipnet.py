"""Training the bit-flipping network in the cloud (docs/method.md).

Teacher: straight-through back-prop calibration of the quantized model on calibration
sets shaped like the device's (the core plus a batch of source windows). Each teacher
*round* records, before it runs, the forward-only quantities the device can compute
(layer inputs, output error) and, after ``steps`` Adam steps, the integer change of
every code clipped to -1..+1. The flip network (learned feedback matrices + a shared
MLP, see :mod:`qcore.edge.flip`) is fitted to predict those changes with a
class-weighted cross-entropy, then exported as NumPy arrays.

Unlike the released code (whose training loop never runs), the network is really
trained, and its agreement with the teacher on held-out rounds is reported next to an
all-zero predictor and a random predictor of the same sparsity.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from qcore.cloud.calibrate import backprop_calibrate
from qcore.cloud.export import to_qmodel
from qcore.cloud.model import quant_layers
from qcore.core.quant import QuantizedTensor
from qcore.edge.flip import (
    N_FEATURES,
    FlipNet,
    error_signal,
    static_features,
    window_sums,
)
from qcore.edge.infer import forward

MAX_CLASS_WEIGHT = 50.0


@dataclass
class TeacherRound:
    """Per layer: window sums ``S`` (n, i, k), static features, target changes (int8)."""

    e: np.ndarray
    S: dict[str, np.ndarray]
    static: dict[str, np.ndarray]
    target: dict[str, np.ndarray]


def collect_rounds(
    qmodel: torch.nn.Module,
    X_core: np.ndarray,
    y_core: np.ndarray,
    X_pool: np.ndarray,
    y_pool: np.ndarray,
    *,
    rounds: int,
    steps: int,
    lr: float,
    batch_len: int,
    seed: int,
    step_relative_lr: float | None = None,
    progress: bool = False,
) -> list[TeacherRound]:
    """Run the teacher for ``rounds`` rounds along one calibration trajectory (with
    ``progress``, a bar per round)."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    work = copy.deepcopy(qmodel)
    out = []
    for r in tqdm(range(rounds), desc="flip network: teacher rounds", disable=not progress):
        pick = rng.choice(len(y_pool), min(batch_len, len(y_pool)), replace=False)
        X = np.concatenate([X_core, X_pool[pick]]).astype(np.float32)
        y = np.concatenate([y_core, y_pool[pick]]).astype(np.int64)
        for _, layer in quant_layers(work):  # the device holds codes only: no latent
            layer.set_codes(layer.codes())
        before = to_qmodel(work)
        trace = forward(before, X, record=True)
        backprop_calibrate(
            work,
            X,
            y,
            steps=steps,
            lr=lr,
            batch_size=len(y),
            seed=seed + r,
            step_relative_lr=step_relative_lr,
        )
        after = to_qmodel(work)
        S, static, target = {}, {}, {}
        for name, layer in before.layers.items():
            qt = layer.weight
            assert isinstance(qt, QuantizedTensor)
            S[name] = window_sums(trace.inputs[name], layer.kernel_size)
            static[name] = static_features(qt, name == "head")
            diff = after.layers[name].weight.q.astype(np.int16) - qt.q.astype(np.int16)
            target[name] = np.clip(diff, -1, 1).reshape(-1).astype(np.int8)
        out.append(TeacherRound(error_signal(trace.logits, y), S, static, target))
    return out


class _TorchFlipNet(torch.nn.Module):
    """Trainable mirror of :class:`qcore.edge.flip.FlipNet` (same formulas)."""

    def __init__(self, shapes: dict[str, int], n_classes: int, hidden: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.names = list(shapes)
        self.feedback = torch.nn.ParameterDict()
        for name, n_out in shapes.items():
            if name == "head":
                init = torch.eye(n_classes)
            else:
                init = torch.randn(n_classes, n_out, generator=g) / n_classes**0.5
            self.feedback[name.replace(".", "/")] = torch.nn.Parameter(init)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(N_FEATURES, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 3)
        )
        # torch.nn.Linear draws its initial weights from torch's *global* generator; redraw
        # them (same uniform range as torch's default) from the seeded one, so the network
        # depends on ``seed`` alone and not on whatever ran earlier in the process.
        with torch.no_grad():
            for lin in (self.mlp[0], self.mlp[2]):
                bound = 1.0 / lin.in_features**0.5
                lin.weight.uniform_(-bound, bound, generator=g)
                lin.bias.uniform_(-bound, bound, generator=g)

    def layer_logits(self, name: str, S, e, static) -> torch.Tensor:
        B = self.feedback[name.replace(".", "/")]
        G = torch.einsum("no,nik->oik", e @ B, S) / e.shape[0]
        g = G.reshape(-1) / (G.pow(2).mean().sqrt() + 1e-12)
        feats = torch.cat([torch.stack([g, g.abs()], dim=1), static], dim=1)
        return self.mlp(feats)

    def export(self, threshold: float) -> FlipNet:
        lin1, lin2 = self.mlp[0], self.mlp[2]
        return FlipNet(
            feedback={
                n: self.feedback[n.replace(".", "/")].detach().numpy().copy() for n in self.names
            },
            w1=lin1.weight.detach().numpy().T.copy(),
            b1=lin1.bias.detach().numpy().copy(),
            w2=lin2.weight.detach().numpy().T.copy(),
            b2=lin2.bias.detach().numpy().copy(),
            threshold=threshold,
        )


def _tensors(rnd: TeacherRound, name: str):
    return (
        torch.from_numpy(rnd.S[name]),
        torch.from_numpy(rnd.e),
        torch.from_numpy(rnd.static[name]),
    )


def fit_flipnet(
    rounds: list[TeacherRound],
    n_classes: int,
    *,
    hidden: int = 16,
    iters: int = 150,
    lr: float = 1e-2,
    seed: int = 0,
) -> FlipNet:
    """Fit the flip network on teacher rounds; pick the flip threshold on them too.

    The threshold makes the predicted flip rate on the training rounds equal the
    teacher's, so the device moves about as many codes as back-prop would.
    """
    names = list(rounds[0].target)
    shapes = {
        n: rounds[0].static[n].shape[0] // max(1, rounds[0].S[n].shape[1] * rounds[0].S[n].shape[2])
        for n in names
    }
    net = _TorchFlipNet(shapes, n_classes, hidden, seed)
    all_t = np.concatenate([r.target[n] for r in rounds for n in names]).astype(np.int64) + 1
    freq = np.bincount(all_t, minlength=3) / len(all_t)
    weight = torch.tensor(
        np.minimum(1.0 / np.maximum(freq, 1e-12) * freq[1], MAX_CLASS_WEIGHT), dtype=torch.float32
    )
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for it in range(iters):
        rnd = rounds[it % len(rounds)]
        opt.zero_grad()
        loss = 0.0
        for name in names:
            logits = net.layer_logits(name, *_tensors(rnd, name))
            t = torch.from_numpy(rnd.target[name].astype(np.int64) + 1)
            loss = loss + F.cross_entropy(logits, t, weight=weight, reduction="sum")
        (loss / len(all_t) * len(rounds)).backward()
        opt.step()
    with torch.no_grad():
        conf = []
        for rnd in rounds:
            for name in names:
                p = torch.softmax(net.layer_logits(name, *_tensors(rnd, name)), dim=1)
                conf.append(torch.maximum(p[:, 0], p[:, 2]).numpy())
    rate = 1.0 - freq[1]
    threshold = float(np.quantile(np.concatenate(conf), 1.0 - rate)) if rate > 0 else 1.0
    return net.export(threshold)


def agreement_report(net: FlipNet, rounds: list[TeacherRound], seed: int = 0) -> dict:
    """Agreement with the teacher on ``rounds``: flip net vs all-zero vs random predictor."""
    from qcore.edge.flip import dynamic_features, gradient_proxy

    rng = np.random.default_rng(seed)
    teach, pred = [], []
    for rnd in rounds:
        for name, fb in net.feedback.items():
            G = gradient_proxy(rnd.S[name], rnd.e, fb)
            feats = np.concatenate([dynamic_features(G), rnd.static[name]], axis=1)
            pred.append(net.predict_flips(feats))
            teach.append(rnd.target[name])
    t = np.concatenate(teach).astype(np.int16)
    p = np.concatenate(pred)
    rate = float(np.mean(t != 0))
    rand = np.where(rng.random(len(t)) < rate, rng.choice([-1, 1], len(t)), 0)

    def stats(q: np.ndarray) -> dict[str, float]:
        moved = t != 0
        flipped = q != 0
        return {
            "agreement": float(np.mean(q == t)),
            "flip_recall": float(np.mean(q[moved] == t[moved])) if moved.any() else float("nan"),
            "flip_precision": (
                float(np.mean(q[flipped] == t[flipped])) if flipped.any() else float("nan")
            ),
            "flip_rate": float(np.mean(flipped)),
        }

    return {
        "teacher_flip_rate": rate,
        "n_weights": int(len(t)),
        "flipnet": stats(p),
        "all_zero": stats(np.zeros_like(t)),
        "random": stats(rand.astype(np.int16)),
    }
