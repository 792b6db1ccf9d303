import numpy as np
import pytest
import torch

from qcore.cloud.model import InceptionTime, count_params, quant_layers, raw_input_layers


@pytest.mark.parametrize(
    ("channels", "classes", "filters", "depth", "expected"),
    [(45, 19, 32, 6, 465_747), (6, 12, 32, 6, 457_356), (6, 6, 16, 3, 57_030)],
)
def test_parameter_counts_match_reference(channels, classes, filters, depth, expected):
    assert count_params(InceptionTime(channels, classes, filters, depth)) == expected


def test_shapes_and_raw_input_layers():
    model = InceptionTime(6, 5, filters=4, depth=6)
    out = model(torch.zeros(3, 6, 50))
    assert out.shape == (3, 5)
    names = {n for n, _ in quant_layers(model)}
    assert raw_input_layers(model) == {
        "blocks.0.bottleneck",
        "blocks.0.pool_conv",
        "shortcuts.2.conv",
    }
    assert raw_input_layers(model) <= names
    one = InceptionTime(1, 3, filters=4, depth=3)
    assert "blocks.0.convs.0" in raw_input_layers(one)
    assert np.isfinite(one(torch.randn(2, 1, 20)).detach().numpy()).all()


def test_bad_model_settings():
    with pytest.raises(ValueError):
        InceptionTime(0, 3)


@pytest.mark.parametrize("bits", [None, 2, 4, 8])
def test_a_grown_head_keeps_the_old_outputs_and_adds_quiet_ones(bits):
    from qcore.cloud.model import add_head_rows
    from qcore.cloud.quantize import quantize_model

    torch.manual_seed(0)
    X = torch.randn(16, 3, 32)
    model = InceptionTime(3, 4, filters=4, depth=3).eval()
    if bits is not None:
        model = quantize_model(model, bits, X.numpy(), 0)
    with torch.no_grad():
        before = model(X)
        add_head_rows(model, 2)
        after = model(X)
    assert after.shape == (16, 6) and model.n_classes == 6
    torch.testing.assert_close(after[:, :4], before)
    lowest = float(model.head.bias[:4].detach().min())
    torch.testing.assert_close(after[:, 4:], torch.full((16, 2), lowest))
