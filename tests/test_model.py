"""MobileFaceNet: the paper's size (Chen et al. 2018: 0.99M parameters, 221M multiply-adds) and its options."""
import pytest

from mobilefacenet_k210 import k210
from mobilefacenet_k210.config import ModelConfig
from mobilefacenet_k210.model.mobilefacenet import EMBEDDING_HEADS, MobileFaceNet
from mobilefacenet_k210.model.summary import count_macs, count_params, model_macs

PAPER_PARAMS = 0.99e6
PAPER_MACS = 221e6


@pytest.fixture(scope="module")
def default_model():
    return MobileFaceNet()


def test_default_size_matches_the_paper(default_model):
    assert abs(count_params(default_model) - PAPER_PARAMS) / PAPER_PARAMS < 0.10
    assert abs(count_macs(default_model) - PAPER_MACS) / PAPER_MACS < 0.10


def test_default_shapes_and_layer_names(default_model):
    assert default_model.input_shape == (None, 112, 112, 3)
    assert default_model.output_shape == (None, 128)
    names = {layer.name for layer in default_model.layers}
    assert {"conv1", "conv2_depthwise", "block_0_expand", "block_0_depthwise", "block_0_project",
            "block_14_project", "conv_last", "gdconv", "embedding_conv", "embedding_bn"} <= names
    # 15 bottlenecks (5 + 1 + 6 + 1 + 2); adds wherever input and output shapes match (12 of them).
    assert sum(name.endswith("_add") for name in names) == 12
    assert "block_15_expand" not in names


def test_default_model_is_k210_legal(default_model):
    findings = k210.check_model(default_model)
    assert not k210.errors(findings)
    # Only the GDConv and the projection on its 1x1 output fall back to the CPU.
    assert {f.layer for f in findings} <= {"gdconv", "embedding_conv"}


def test_width_multiplier_and_embedding_size():
    half = MobileFaceNet(ModelConfig(width_multiplier=0.5, embedding_size=256))
    assert half.output_shape == (None, 256)
    assert half.get_layer("conv1").filters == 32 and half.get_layer("conv_last").filters == 256
    assert count_params(half) < 0.6 * PAPER_PARAMS
    assert count_macs(half) < 0.4 * PAPER_MACS
    assert not k210.errors(k210.check_model(half))


def test_relu6_and_input_size_options():
    model = MobileFaceNet(ModelConfig(activation="relu6", input_size=96, width_multiplier=0.25))
    assert model.input_shape == (None, 96, 96, 3)
    assert model.get_layer("conv1_relu").max_value == 6.0
    assert model_macs(model)["gdconv"] == 6 * 6 * model.get_layer("conv_last").filters


@pytest.mark.parametrize("field, value, message", [
    ("activation", "prelu", "PReLU does not fit the K210"),
    ("embedding_head", "nope", "embedding_head 'nope'"),
    ("input_size", 100, "multiple of 16"),
])
def test_bad_options_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        MobileFaceNet(ModelConfig(**{field: value, "width_multiplier": 0.25}))


def test_every_embedding_head_builds_a_k210_legal_model():
    for head in EMBEDDING_HEADS:
        model = MobileFaceNet(ModelConfig(width_multiplier=0.25, embedding_head=head))
        assert model.output_shape == (None, 128), head
        assert not k210.errors(k210.check_model(model)), head
