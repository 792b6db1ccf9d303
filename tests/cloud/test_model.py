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
