"""Export chain on a tiny MobileFaceNet with the real TFLite converter, nncase compiler and simulator."""
import json
from pathlib import Path

import numpy as np
import pytest

from mobilefacenet_k210 import k210, preprocessing
from mobilefacenet_k210.config import ExportConfig, ModelConfig
from mobilefacenet_k210.export import export_model, kmodel, report, tflite
from mobilefacenet_k210.export.calibration import CalibrationError, load_faces
from mobilefacenet_k210.model.io import ModelFileError

TINY = ModelConfig(width_multiplier=0.25, embedding_size=32)


def synthetic_faces(count: int, seed: int, size: int = 112) -> np.ndarray:
    """Smooth colour fields plus noise: natural-image statistics without shipping photos."""
    import cv2

    rng = np.random.default_rng(seed)
    faces = []
    for _ in range(count):
        low = rng.uniform(0, 255, (6, 6, 3)).astype(np.float32)
        img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 8, (size, size, 3))
        faces.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(faces)


def write_faces(folder: Path, faces: np.ndarray) -> Path:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    for i, face in enumerate(faces):
        cv2.imwrite(str(folder / f"face_{i:03d}.png"), face[:, :, ::-1])
    return folder


def tiny_model(input_size: int = 112, seed: int = 0, fit_batchnorm: bool = True):
    """A tiny MobileFaceNet whose BatchNorm statistics are fitted on synthetic faces, so activations have
    realistic scales (untrained statistics make every activation vanish and quantization meaningless)."""
    import tensorflow as tf

    from mobilefacenet_k210.model.mobilefacenet import MobileFaceNet

    tf.random.set_seed(seed)
    config = ModelConfig(**{**TINY.__dict__, "input_size": input_size})
    model = MobileFaceNet(config)
    faces = preprocessing.normalize(synthetic_faces(16, seed + 100, input_size))
    for _ in range(40 if fit_batchnorm else 0):
        model(faces, training=True)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One full export of a tiny model (the slow part), shared by the round-trip checks."""
    from mobilefacenet_k210.model.io import save_embedding_model

    root = tmp_path_factory.mktemp("export")
    model = tiny_model()
    model_path = save_embedding_model(model, root / "run")
    calib = write_faces(root / "calib", synthetic_faces(14, 1))
    config = ExportConfig(calibrate_method="no_clip", calibration_samples=10, holdout_samples=4)
    result = export_model(model_path, calib, root / "out", config)
    return {"model": model, "out": root / "out", "report": result, "calib": calib}


def test_round_trip_writes_v5_kmodel_and_report(exported):
    out, result = exported["out"], exported["report"]
    for name in ("model.tflite", "model_int8.tflite", "model.kmodel", "model.kmodel.json", "report.json",
                 "report.md", report.COSINE_PNG):
        assert (out / name).is_file(), name
    assert (out / report.COSINE_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert kmodel.read_kmodel_version(out / "model.kmodel") == k210.KMODEL_VERSION == 5
    on_disk = json.loads((out / "report.json").read_text())
    for key in ("kmodel_bytes", "kmodel_version", "kpu_mac_share", "cosine_kmodel_mean", "cosine_kmodel_min",
                "calibrate_method", "calibration_samples", "nncase_version"):
        assert key in on_disk, key
    assert on_disk["kmodel_bytes"] == (out / "model.kmodel").stat().st_size
    assert on_disk["calibrate_method"] == "no_clip" and on_disk["calibration_samples"] == 10
    assert on_disk["holdout_samples"] == 4
    assert set(on_disk["stage_seconds"]) == {"check", "faces", "tflite", "tflite_int8", "kmodel", "parity", "report"}
    info = kmodel.kmodel_info(out / "model.kmodel")
    assert info["nncase_version"] == kmodel.nncase_version()["nncase_version"] == on_disk["nncase_version"]
    assert info["input"]["shape"] == [1, 3, 112, 112] and info["input"]["dtype"] == "uint8"
    assert info["input"]["range"] == list(preprocessing.input_range())
    assert info["memory"]["total"] > info["memory"]["data"] > 0


def test_round_trip_places_convolutions_on_the_kpu(exported):
    result = exported["report"]
    # Every conv but the 7x7 GDConv runs on the KPU, the projection too (default gdc_linear_kpu head), and
    # each of the 12 residual adds becomes one more KPU conv.
    assert result["kpu_ops"]["KPUConv2D"] == 49 + 12
    assert set(result["cpu_conv_layers"]) == {"gdconv"}
    assert not result["unplaced_layers"] and not result["ambiguous_layers"]
    assert 0.98 < result["kpu_mac_share"] <= 1.0
    assert result["macs_kpu"] + result["macs_cpu"] == result["macs_total"]


def test_simulator_runs_the_kmodel_and_tracks_keras(exported):
    faces = synthetic_faces(3, 7)
    data = (exported["out"] / "model.kmodel").read_bytes()
    embeddings = kmodel.simulate(data, faces)
    assert embeddings.shape == (3, 32) and embeddings.dtype == np.float32 and np.isfinite(embeddings).all()
    np.testing.assert_array_equal(embeddings, kmodel.simulate(exported["out"] / "model.kmodel", faces))
    keras = exported["model"].predict(preprocessing.normalize(faces), verbose=0)
    assert report.cosine(keras, embeddings).mean() > 0.9
    result = exported["report"]
    assert result["cosine_tflite_min"] > 0.9999
    assert result["cosine_kmodel_min"] <= result["cosine_kmodel_mean"] <= 1.0


def test_float_kmodel_matches_keras(exported, tmp_path):
    info = kmodel.compile_kmodel(exported["out"] / "model.tflite", tmp_path / "float.kmodel", calibration=None)
    assert info["quantized"] is False and info["kmodel_version"] == 5
    faces = synthetic_faces(4, 11)
    keras = exported["model"].predict(preprocessing.normalize(faces), verbose=0)
    assert report.cosine(keras, kmodel.simulate(tmp_path / "float.kmodel", faces)).min() > 0.999


def test_int8_tflite_is_refused_before_nncase(exported, tmp_path):
    with pytest.raises(tflite.TFLiteError, match="int8.*crashes nncase"):
        kmodel.compile_kmodel(exported["out"] / "model_int8.tflite", tmp_path / "bad.kmodel",
                              synthetic_faces(2, 3))
    assert not (tmp_path / "bad.kmodel").exists()


def test_missing_model_file(tmp_path):
    calib = write_faces(tmp_path / "calib", synthetic_faces(2, 0))
    with pytest.raises(ModelFileError, match="no_such_model"):
        export_model(tmp_path / "no_such_model.keras", calib, tmp_path / "out")


def test_wrong_input_size(tmp_path):
    from mobilefacenet_k210.model.io import save_embedding_model

    path = save_embedding_model(tiny_model(input_size=96, fit_batchnorm=False), tmp_path / "run")
    calib = write_faces(tmp_path / "calib", synthetic_faces(2, 0))
    with pytest.raises(ValueError, match="96x96x3.*112x112"):
        export_model(path, calib, tmp_path / "out")


def test_empty_and_bad_calibration_folders(exported, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match="empty.*no face images"):
        export_model(exported["out"].parent / "run", tmp_path / "empty", tmp_path / "out")
    with pytest.raises(CalibrationError, match="no such folder"):
        load_faces(tmp_path / "missing")
    write_faces(tmp_path / "small", synthetic_faces(1, 0, size=96))
    with pytest.raises(CalibrationError, match="face_000.png: 96x96 pixels"):
        load_faces(tmp_path / "small")


def test_calibration_and_holdout_never_overlap(exported):
    from mobilefacenet_k210.export.calibration import calibration_and_holdout

    calib, held, held_ids = calibration_and_holdout(exported["calib"], None, 10, 100)
    _, calib_ids = load_faces(exported["calib"], 10)
    assert len(calib) == 10 and len(held) == 4
    assert not set(held_ids) & set(calib_ids)


def test_shard_folder_as_calibration(tiny_shards):
    from mobilefacenet_k210.export.calibration import calibration_and_holdout

    shards = tiny_shards(num_classes=3, per_class=4, num_shards=2)
    calib, held, held_ids = calibration_and_holdout(shards, None, 5, 10)
    assert calib.shape == (5, 112, 112, 3) and calib.dtype == np.uint8
    assert held.shape == (3, 112, 112, 3) and all(i.startswith("val-") for i in held_ids)


def test_cli_reports_bad_calibration_clearly(exported, tmp_path, capsys):
    from mobilefacenet_k210.cli import main

    (tmp_path / "empty").mkdir()
    code = main(["export", "--model", str(exported["out"].parent / "run"), "--calib", str(tmp_path / "empty"),
                 "--out", str(tmp_path / "out"), "--calibrate-method", "no_clip"])
    assert code == 2
    assert "no face images" in capsys.readouterr().err


def test_placement_resolves_names_shared_through_deduplicated_constants():
    from mobilefacenet_k210.export.placement import _conv_candidates, resolve

    # Real nncase 1.1 node names of the full model: TFLite de-duplicated the zero bias of every 128-channel
    # conv under embedding_conv's name, and conv_last's constant under gdconv's.
    nodes = [
        ("kpu", "m/block_5_project_bn/FusedBatchNormV3;m/embedding_conv/Conv2D;m/block_5_project/Conv2D/conv"),
        ("kpu", "m/conv_last_relu/Relu;m/conv_last_bn/FusedBatchNormV3;m/gdconv/depthwise;m/conv_last/Conv2D/conv"),
        ("cpu", "m/gdconv_bn/FusedBatchNormV3;m/gdconv/depthwise1_0"),
        ("cpu", "m/embedding_bn/FusedBatchNormV3;m/embedding_conv/Conv2D/conv"),
        ("kpu", "m/block_1_add/add/binary/concat"),
    ]
    placed, ambiguous = resolve([(device, _conv_candidates(name)) for device, name in nodes])
    assert placed == {"block_5_project": "kpu", "conv_last": "kpu", "gdconv": "cpu", "embedding_conv": "cpu"}
    assert ambiguous == []
    placed, ambiguous = resolve([("kpu", ["a", "b"]), ("cpu", ["a", "b"])])
    assert placed == {} and ambiguous == ["a", "b"]


def test_nncase_crash_becomes_a_clear_error(exported, tmp_path):
    # nncase 1.1 segfaults when preprocess is on but input_shape/input_layout are not set: the
    # compiler runs in a child process, so the caller gets an error instead of dying.
    options = kmodel.compile_options(112, None)
    del options["input_shape"], options["input_layout"]
    job = {"tflite": str(exported["out"] / "model.tflite"), "kmodel": str(tmp_path / "crash.kmodel"),
           "result": str(tmp_path / "result.json"), "calibrate_method": "no_clip", "compile_options": options}
    with pytest.raises(kmodel.KmodelError, match="model.tflite: nncase crashed with SIGSEGV"):
        kmodel.run_compile_job(job, tmp_path, 120, "model.tflite")
    assert not (tmp_path / "crash.kmodel").exists()
