"""Edge inference (NumPy) against the cloud simulation (torch), traces, BN re-estimation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from edge_kit import random_bn_model

from qcore.cloud.export import load_qmodel, to_qmodel
from qcore.cloud.fakequant import QConv1d, QLinear
from qcore.cloud.quantize import quantize_model
from qcore.edge.infer import bn_reestimate, forward, predict
from qcore.errors import QCoreError

torch.set_num_threads(2)

T = 64  # window length used by the parity tests
CONFIGS = {  # (n_channels, n_classes, filters, depth)
    "c3-f8-d3": (3, 4, 8, 3),
    "c3-f4-d6": (3, 4, 4, 6),  # shortcut at d=5 is BatchNorm only
    "c1-f8-d3": (1, 4, 8, 3),  # no bottleneck in block 0
}
BITS = [None, 2, 3, 4, 5, 6, 7, 8]


def setup(config: str, bits: int | None, seed: int = 0):
    n_channels = CONFIGS[config][0]
    rng = np.random.default_rng(seed)
    X_calib = rng.standard_normal((64, n_channels, T)).astype(np.float32)
    X = rng.standard_normal((200, n_channels, T)).astype(np.float32)
    model = quantize_model(random_bn_model(*CONFIGS[config], seed=seed), bits, X_calib, seed)
    return model, to_qmodel(model), X


def torch_logits(model: torch.nn.Module, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(X)).numpy()


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_edge_logits_match_torch(config: str, bits: int | None) -> None:
    model, qm, X = setup(config, bits)
    ref, edge = torch_logits(model, X), forward(qm, X)
    assert edge.shape == ref.shape and edge.dtype == np.float32
    diff = np.abs(edge - ref).max(axis=1)
    exact = float(np.mean(diff <= 1e-5))  # rows equal up to float32 summation order
    agree = float(np.mean(edge.argmax(1) == ref.argmax(1)))
    msg = (
        f"{config} bits={bits}: max|diff|={diff.max():.3g} (logit range {np.abs(ref).max():.3g}), "
        f"rows within 1e-5: {exact:.3f}, argmax agreement {agree:.3f}"
    )
    # A row may differ more only through a rounding tie at some activation quantizer.
    assert exact >= 0.98, msg
    assert agree >= 0.995, msg
    if bits is None:
        assert diff.max() <= 1e-5, msg


@pytest.mark.parametrize("bits", [None, 3])
def test_trace_matches_torch_layer_inputs_and_outputs(bits: int | None) -> None:
    model, qm, X = setup("c3-f4-d6", bits)
    X = X[:32]
    seen_in: dict[str, np.ndarray] = {}
    seen_out: dict[str, np.ndarray] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, QConv1d | QLinear):

            def hook(mod, args, out, name=name):
                seen_in[name] = mod.quant_input(args[0]).detach().numpy()
                seen_out[name] = out.detach().numpy()

            hooks.append(m.register_forward_hook(hook))
    torch_logits(model, X)
    for h in hooks:
        h.remove()
    trace = forward(qm, X, record=True)
    assert set(trace.inputs) == set(seen_in) == set(trace.outputs)
    for name in seen_in:
        for kind, got, ref in (
            ("input", trace.inputs[name], seen_in[name]),
            ("output", trace.outputs[name], seen_out[name]),
        ):
            assert got.shape == ref.shape, (name, kind)
            close = np.mean(np.isclose(got, ref, rtol=1e-4, atol=1e-5))
            assert close >= 0.999, f"{name} {kind}: {close:.5f} of values agree"
    assert trace.features.shape == (32, 4 * qm.filters)
    np.testing.assert_array_equal(trace.logits, forward(qm, X))
    assert set(trace.norm_inputs) == set(qm.norms)


def test_chunking_and_predict() -> None:
    _, qm, X = setup("c3-f8-d3", 4)
    full = forward(qm, X)
    chunked = forward(qm, X, chunk_size=7)
    np.testing.assert_allclose(chunked, full, rtol=1e-5, atol=1e-6)
    labels = predict(qm, X, batch_size=50)
    assert labels.dtype == np.int64 and labels.shape == (len(X),)
    np.testing.assert_array_equal(labels, full.argmax(1))
    trace = forward(qm, X, record=True, chunk_size=64)
    assert trace.inputs["blocks.1.convs.0"].shape == (len(X), 8, T)
    np.testing.assert_allclose(trace.logits, full, rtol=1e-5, atol=1e-6)


def test_bad_input_raises() -> None:
    _, qm, X = setup("c3-f8-d3", 4)
    with pytest.raises(QCoreError):
        forward(qm, X[:, :2])
    with pytest.raises(QCoreError):
        forward(qm, X[0])
    with pytest.raises(QCoreError):
        forward(qm, np.full_like(X, np.nan))


def test_edge_imports_without_torch() -> None:
    code = (
        "import sys, qcore.edge.infer, qcore.core.qmodel; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("bits", [None, 4])
def test_bn_reestimate_normalises_the_batch(bits: int | None) -> None:
    _, qm, X = setup("c3-f4-d6", bits)
    shifted = (X * 1.7 + 0.4).astype(np.float32)  # a domain shift
    new = bn_reestimate(qm, shifted)
    trace = forward(new, shifted, record=True, chunk_size=len(shifted))
    for name, bn in new.norms.items():
        v = trace.norm_inputs[name].astype(np.float64)
        mean, var = v.mean(axis=(0, 2)), v.var(axis=(0, 2))
        # forward order: every BN's statistics are those of its input under the new model
        np.testing.assert_allclose(bn.running_mean, mean, atol=1e-4, err_msg=name)
        np.testing.assert_allclose(bn.running_var, var, rtol=1e-3, atol=1e-5, err_msg=name)
    first = new.norms["blocks.0.bn"]
    z = (trace.norm_inputs["blocks.0.bn"] - first.running_mean[:, None]) / np.sqrt(
        first.running_var[:, None] + first.eps
    )
    assert np.abs(z.mean(axis=(0, 2))).max() < 1e-4
    # the input model is untouched
    assert not np.array_equal(qm.norms["blocks.0.bn"].running_mean, first.running_mean)


def test_bn_reestimate_agrees_with_cloud_after_loading() -> None:
    model, qm, X = setup("c1-f8-d3", 5)
    new = bn_reestimate(qm, X[:50])
    load_qmodel(model, new)
    ref, edge = torch_logits(model, X), forward(new, X)
    assert np.mean(ref.argmax(1) == edge.argmax(1)) >= 0.995
    assert np.mean(np.abs(ref - edge).max(axis=1) <= 1e-5) >= 0.98


# ------------------------------------------------------------------- bounded memory


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (5000, 64), (3001, 16)])
def test_channel_moments_are_numpys_mean_and_variance_bit_for_bit(shape) -> None:
    from qcore.edge.infer import channel_moments

    flat = (np.random.default_rng(shape[0]).standard_normal(shape) * 3 + 1).astype(np.float32)
    mean, var = channel_moments(flat)
    np.testing.assert_array_equal(mean, flat.mean(axis=0, dtype=np.float64))
    np.testing.assert_array_equal(var, flat.var(axis=0, dtype=np.float64))


@pytest.mark.parametrize("config", ["c3-f8-d3", "c1-f8-d3", "c3-f4-d6"])
def test_block_wise_passes_agree_with_one_block(config: str, monkeypatch) -> None:
    """im2col built a few windows at a time and moments a few rows at a time give the
    re-estimated statistics and logits of one block of everything. Moments are exact; a
    product's rows can differ in the last float32 bit when the BLAS picks another kernel
    for a smaller block (seen below ~40 windows of this tiny model), and such a bit can
    move a value across an activation-quantization boundary (a tie, one step of 4 bits
    in one of 12,800 values): statistics are compared at 1e-3 relative."""
    import qcore.edge.infer as infer
    import qcore.edge.runner as runner

    _, qm, X = setup(config, 4)
    whole_bn, whole_logits = bn_reestimate(qm, X), forward(qm, X, chunk_size=len(X))
    monkeypatch.setattr(runner, "IM2COL_TARGET_BYTES", 3 * 4 * T * 8 * 39)  # ~3 windows
    monkeypatch.setattr(infer, "_MOMENT_BLOCK_BYTES", 8 * 32 * 50)  # 50 rows
    blocks_bn, blocks_logits = bn_reestimate(qm, X), forward(qm, X, chunk_size=len(X))
    np.testing.assert_allclose(blocks_logits, whole_logits, rtol=1e-5, atol=1e-5)
    for name, bn in whole_bn.norms.items():
        new = blocks_bn.norms[name]
        np.testing.assert_allclose(new.running_mean, bn.running_mean, rtol=1e-3, atol=1e-6)
        np.testing.assert_allclose(new.running_var, bn.running_var, rtol=1e-3, atol=1e-6)


def test_reduced_trace_holds_the_window_sums_of_the_full_trace() -> None:
    from qcore.edge.flip import sums_reducer, window_sums
    from qcore.edge.infer import forward_reduced

    _, qm, X = setup("c3-f8-d3", 4)
    full = forward(qm, X, record=True)
    reduced = forward_reduced(qm, X, sums_reducer(qm), chunk_size=7)
    assert set(reduced.reduced) == set(full.inputs) and not reduced.inputs
    assert not reduced.outputs and not reduced.norm_inputs
    np.testing.assert_array_equal(reduced.logits, full.logits)
    for name, x in full.inputs.items():
        expected = window_sums(x, qm.layers[name].kernel_size)
        np.testing.assert_array_equal(reduced.reduced[name], expected)


def test_a_pass_never_writes_to_the_callers_windows() -> None:
    _, qm, X = setup("c1-f8-d3", 4)  # one channel: the channels-last view is contiguous
    before = X.copy()
    bn_reestimate(qm, X)
    forward(qm, X)
    np.testing.assert_array_equal(X, before)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_activation_ties_round_half_to_even_like_the_cloud(bits: int) -> None:
    """An activation exactly half way between two codes takes the even code, on the edge
    (np.rint) as on the cloud (torch.round); a half-up rule would break parity."""
    from qcore.cloud.fakequant import fake_quant_ste
    from qcore.edge.runner import fake_quant_act  # the layer arithmetic infer.py runs

    zp = ((1 << bits) - 1) // 2
    halves = np.arange((1 << bits) - 1) - zp + 0.5  # every half step between two codes
    x = (halves * 0.25).astype(np.float32)  # x / scale is exact
    even = np.where(np.floor(halves) % 2 == 0, np.floor(halves), np.ceil(halves))
    out = fake_quant_act(x.copy(), (0.25, zp, bits))
    assert out.tolist() == (even * 0.25).tolist()
    cloud = fake_quant_ste(torch.from_numpy(x), torch.tensor(0.25), torch.tensor(zp), bits)
    assert cloud.numpy().tolist() == out.tolist()
