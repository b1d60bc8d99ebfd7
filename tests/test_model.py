"""MobileFaceNet: the paper's size (Chen et al. 2018: 0.99M parameters, 221M multiply-adds) and its options."""
import pytest

from mobilefacenet_k210 import k210
from mobilefacenet_k210.config import EMBEDDING_HEADS, ModelConfig
from mobilefacenet_k210.model.mobilefacenet import MobileFaceNet
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
    # Only the 7x7 GDConv falls back to the CPU (the default head runs the projection on a 4x4 map).
    assert {f.layer for f in findings} == {"gdconv"}


def test_kpu_head_is_the_papers_head_with_the_same_weights():
    import numpy as np

    paper = MobileFaceNet(ModelConfig(width_multiplier=0.25, embedding_head="gdc_linear"))
    kpu = MobileFaceNet(ModelConfig(width_multiplier=0.25, embedding_head="gdc_linear_kpu"))
    assert count_params(paper) == count_params(kpu)
    for layer in kpu.layers:
        if layer.weights:
            layer.set_weights([w * 0.5 + 0.1 for w in paper.get_layer(layer.name).get_weights()])
            paper.get_layer(layer.name).set_weights(layer.get_weights())
    x = np.random.default_rng(0).uniform(-1, 1, (2, 112, 112, 3)).astype(np.float32)
    np.testing.assert_allclose(paper.predict(x, verbose=0), kpu.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    assert kpu.get_layer("embedding_conv").input_shape[1:3] == (k210.KPU_MIN_SIZE, k210.KPU_MIN_SIZE)
    assert "embedding_conv" in {f.layer for f in k210.check_model(paper)}


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
    ("activation", "swish", "activation 'swish'"),
    ("input_orientation", "rot90", "input_orientation 'rot90'"),
    ("embedding_head", "nope", "embedding_head 'nope'"),
    ("input_size", 100, "multiple of 16"),
])
def test_bad_options_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        MobileFaceNet(ModelConfig(**{field: value, "width_multiplier": 0.25}))


def test_prelu_builds_for_host_teachers_but_the_k210_check_refuses_it():
    model = MobileFaceNet(ModelConfig(activation="prelu", input_size=64, width_multiplier=0.25))
    assert model.get_layer("conv1_prelu").weights[0].shape == (1, 1, 16)  # one slope per channel
    assert "conv1_prelu" in {f.layer for f in k210.errors(k210.check_model(model))}


def test_stem_projection_and_turned_input_options():
    from mobilefacenet_k210.model.mobilefacenet import InputOrientation, block_outputs, split_orientation

    model = MobileFaceNet(ModelConfig(stem_project=True, input_orientation="rot180", input_size=64,
                                      width_multiplier=0.25))
    assert isinstance(model.layers[1], InputOrientation) and model.get_layer("conv2_project").kernel_size == (1, 1)
    assert len(block_outputs(model)) == 15 and block_outputs(model)[:2] == ["block_0_project_bn", "block_1_add"]
    body, orientation = split_orientation(model)
    assert orientation == "rot180" and not any(isinstance(layer, InputOrientation) for layer in body.layers)
    assert not k210.errors(k210.check_model(model))


def test_every_embedding_head_builds_a_k210_legal_model():
    for head in EMBEDDING_HEADS:
        model = MobileFaceNet(ModelConfig(width_multiplier=0.25, embedding_head=head))
        assert model.output_shape == (None, 128), head
        assert not k210.errors(k210.check_model(model)), head
