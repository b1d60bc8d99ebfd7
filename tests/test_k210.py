"""The K210 checker names the offending layer and the rule for every construct the KPU/nncase cannot take."""
import pytest
import tensorflow as tf
from tensorflow.keras import layers

from mobilefacenet_k210 import k210


def build(*make_layers, size: int = 16, channels: int = 3) -> tf.keras.Model:
    inputs = layers.Input((size, size, channels), name="image")
    x = inputs
    for make in make_layers:
        x = make()(x)
    return tf.keras.Model(inputs, x, name="probe")


ILLEGAL = [
    ("PReLU", lambda: (lambda: layers.Conv2D(8, 3, padding="same", name="c"), lambda: layers.PReLU(name="bad_prelu")),
     "bad_prelu", "activation relu/relu6/linear"),
    ("same stride 2", lambda: (lambda: layers.Conv2D(8, 3, strides=2, padding="same", name="bad_same"),),
     "bad_same", "stride 2 needs explicit padding"),
    ("5x5 kernel", lambda: (lambda: layers.Conv2D(8, 5, padding="same", name="bad_5x5"),),
     "bad_5x5", "kernel 1x1 or 3x3"),
    ("too many channels", lambda: (lambda: layers.Conv2D(1100, 1, name="bad_wide"),),
     "bad_wide", "at most 1024 channels"),
    ("stride 3", lambda: (lambda: layers.Conv2D(8, 3, strides=3, name="bad_stride"),),
     "bad_stride", "stride 1 or 2"),
    ("dilation", lambda: (lambda: layers.Conv2D(8, 3, dilation_rate=2, padding="same", name="bad_dilated"),),
     "bad_dilated", "no dilation"),
    ("fused sigmoid", lambda: (lambda: layers.Conv2D(8, 3, padding="same", activation="sigmoid", name="bad_act"),),
     "bad_act", "activation relu/relu6/linear"),
    ("leaky relu", lambda: (lambda: layers.LeakyReLU(name="bad_leaky"),),
     "bad_leaky", "activation relu/relu6/linear"),
    ("ReLU clipped at 4", lambda: (lambda: layers.ReLU(4.0, name="bad_clip"),),
     "bad_clip", "activation relu/relu6/linear"),
    ("unknown layer", lambda: (lambda: layers.MaxPooling2D(name="bad_pool"),),
     "bad_pool", "supported layer"),
]


@pytest.mark.parametrize("what, layers_, name, rule", ILLEGAL, ids=[i[0] for i in ILLEGAL])
def test_checker_names_the_offending_layer(what, layers_, name, rule):
    model = build(*layers_())
    bad = k210.errors(k210.check_model(model))
    assert any(f.layer == name and f.rule == rule for f in bad), [str(f) for f in bad]
    with pytest.raises(k210.K210Error, match=f"layer '{name}' breaks '{rule}'"):
        k210.assert_k210_legal(model)


def test_kpu_memory_per_layer():
    model = build(lambda: layers.Conv2D(64, 1, name="big_map"), size=256, channels=32)
    bad = k210.errors(k210.check_model(model))
    assert any(f.layer == "big_map" and f.rule == "KPU memory per layer" for f in bad)


def test_grayscale_input_is_refused():
    model = build(lambda: layers.Conv2D(8, 3, padding="same", name="c"), channels=1)
    assert any(f.rule == "RGB input" for f in k210.errors(k210.check_model(model)))


def test_legal_constructs_pass_and_cpu_fallbacks_are_warnings():
    model = build(
        lambda: layers.ZeroPadding2D(1, name="pad"),
        lambda: layers.Conv2D(16, 3, strides=2, padding="valid", name="conv_s2"),
        lambda: layers.BatchNormalization(name="bn"),
        lambda: layers.ReLU(6.0, name="relu6"),
        lambda: layers.DepthwiseConv2D(3, padding="same", name="dw"),
        lambda: layers.DepthwiseConv2D(8, padding="valid", name="gdconv"),
        lambda: layers.Conv2D(32, 1, name="proj"),
        lambda: layers.Flatten(name="flat"),
        lambda: layers.Dense(4, name="dense"),
    )
    warnings = k210.assert_k210_legal(model)
    assert {(w.layer, w.rule) for w in warnings} == {
        ("gdconv", "kernel 1x1 or 3x3"), ("proj", "feature map 4..256 high, 4..512 wide"),
        ("dense", "convolutions only")}
    assert all(w.severity == "warning" for w in warnings)


def test_check_cli_names_the_layer(tmp_path, capsys):
    from mobilefacenet_k210.cli import main
    from mobilefacenet_k210.model.io import save_embedding_model

    model = build(lambda: layers.Conv2D(8, 5, padding="same", name="bad_5x5"))
    path = save_embedding_model(model, tmp_path / "m.keras")
    assert main(["check", "--model", str(path)]) == 1
    out = capsys.readouterr().out
    assert "bad_5x5" in out and "not deployable" in out


def test_asymmetric_padding_is_legal_but_warned_about_its_float_ram():
    model = build(lambda: layers.ZeroPadding2D(((0, 1), (0, 1)), name="tf_phase"),
                  lambda: layers.Conv2D(8, 3, strides=2, padding="valid", name="c"))
    findings = k210.check_model(model)
    assert not k210.errors(findings)
    (warning,) = [f for f in findings if f.layer == "tf_phase"]
    assert warning.severity == "warning" and warning.rule == "symmetric padding"
    assert f"{4 * (17 * 17 + 16 * 16) * 3:,} bytes" in warning.message and "rot180" in warning.message
    symmetric = build(lambda: layers.ZeroPadding2D(1, name="pad"),
                      lambda: layers.Conv2D(8, 3, strides=2, padding="valid", name="c"))
    assert not k210.check_model(symmetric)
