"""Export chain on a tiny MobileFaceNet with the real TFLite converter, nncase compiler and simulator."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from mobilefacenet_k210 import k210, preprocessing
from mobilefacenet_k210.config import ExportConfig, ModelConfig
from mobilefacenet_k210.errors import FileFormatError
from mobilefacenet_k210.export import ExportResult, export_model, kmodel, report, tflite
from mobilefacenet_k210.export.calibration import CalibrationError, load_faces
from mobilefacenet_k210.model.io import ModelFileError
from mobilefacenet_k210.runtime import kmodel as run_kmodel
from conftest import synthetic_faces, write_faces

TINY = ModelConfig(width_multiplier=0.25, embedding_size=32)
NNCASE = run_kmodel.nncase_version()["nncase_version"]
NNCASE_1_1 = pytest.mark.skipif(not NNCASE.startswith("1.1."), reason=(
    f"nncase {NNCASE} installed: this expectation was measured on nncase 1.1 (constraints.txt's pin); "
    "other releases place operators and handle bad options differently"))


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
    assert run_kmodel.read_kmodel_version(out / "model.kmodel") == k210.KMODEL_VERSION == 5
    on_disk = json.loads((out / "report.json").read_text())
    for key in ("kmodel_bytes", "kmodel_version", "kpu_mac_share", "cosine_kmodel_mean", "cosine_kmodel_min",
                "calibrate_method", "calibration_samples", "nncase_version"):
        assert key in on_disk, key
    assert on_disk == json.loads(json.dumps(result.to_dict())) == ExportResult.read(out).to_dict()
    assert on_disk["kmodel_bytes"] == (out / "model.kmodel").stat().st_size
    assert on_disk["calibrate_method"] == "no_clip" and on_disk["calibration_samples"] == 10
    assert on_disk["holdout_samples"] == 4
    assert set(on_disk["stage_seconds"]) == {"check", "faces", "tflite", "tflite_int8", "kmodel", "parity", "report"}
    info = run_kmodel.kmodel_info(out / "model.kmodel")
    assert info["nncase_version"] == run_kmodel.nncase_version()["nncase_version"] == on_disk["nncase_version"]
    assert info["input"]["shape"] == [1, 3, 112, 112] and info["input"]["dtype"] == "uint8"
    assert info["input"]["range"] == list(preprocessing.input_range())
    assert info["memory"]["total"] > info["memory"]["data"] > 0


@NNCASE_1_1
def test_round_trip_places_convolutions_on_the_kpu(exported):
    result = exported["report"]
    # Every conv but the 7x7 GDConv runs on the KPU, the projection too (default gdc_linear_kpu head), and
    # each of the 12 residual adds becomes one more KPU conv.
    assert result.kpu_ops["KPUConv2D"] == 49 + 12
    assert set(result.cpu_conv_layers) == {"gdconv"}
    assert not result.unplaced_layers and not result.ambiguous_layers
    assert 0.98 < result.kpu_mac_share <= 1.0
    assert result.macs_kpu + result.macs_cpu == result.macs_total


def test_simulator_runs_the_kmodel_and_tracks_keras(exported, monkeypatch):
    faces = synthetic_faces(3, 7)
    data = (exported["out"] / "model.kmodel").read_bytes()
    run_kmodel._SIMULATED.clear()
    embeddings = run_kmodel.simulate(data, faces[:2])
    ran = []  # faces seen before are answered from this process's cache, new ones run, in order
    run = run_kmodel._run_simulator
    monkeypatch.setattr(run_kmodel, "_run_simulator", lambda sim, image, *a: ran.append(image) or run(sim, image, *a))
    embeddings = run_kmodel.simulate(exported["out"] / "model.kmodel", faces[[2, 0, 2, 1]])[[1, 3, 0]]
    assert len(ran) == 1 and np.array_equal(ran[0], faces[2])
    assert embeddings.shape == (3, 32) and embeddings.dtype == np.float32 and np.isfinite(embeddings).all()
    run_kmodel._SIMULATED.clear()
    monkeypatch.setattr(run_kmodel, "SIMULATOR_FACES_PER_PROCESS", 1)  # split between processes, one per core
    np.testing.assert_array_equal(embeddings, run_kmodel.simulate(data, faces))
    keras = exported["model"].predict(preprocessing.normalize(faces), verbose=0)
    assert report.cosine(keras, embeddings).mean() > 0.9
    result = exported["report"]
    assert result.cosine_tflite_min > 0.9999
    assert result.cosine_kmodel_min <= result.cosine_kmodel_mean <= 1.0


def test_a_report_of_another_version_is_refused_naming_it(exported, tmp_path):
    data = exported["report"].to_dict()
    data["kpu_share"] = data.pop("kpu_mac_share")
    (tmp_path / "report.json").write_text(json.dumps(data))
    with pytest.raises(FileFormatError, match=r"report\.json: not an export report.*kpu_mac_share.*kpu_share"):
        ExportResult.read(tmp_path)


def test_float_kmodel_matches_keras(exported, tmp_path):
    info = kmodel.compile_kmodel(exported["out"] / "model.tflite", tmp_path / "float.kmodel", calibration=None)
    assert info["quantized"] is False and info["kmodel_version"] == 5
    faces = synthetic_faces(4, 11)
    keras = exported["model"].predict(preprocessing.normalize(faces), verbose=0)
    assert report.cosine(keras, run_kmodel.simulate(tmp_path / "float.kmodel", faces)).min() > 0.999


def test_relative_paths_compile_from_the_job_folder(exported, tmp_path, monkeypatch):
    """The compile runs in its job folder: relative paths (the demo's `runs/demo/...`) must still be found."""
    shutil.copy(exported["out"] / "model.tflite", tmp_path / "model.tflite")
    monkeypatch.chdir(tmp_path)
    kmodel.compile_kmodel(Path("model.tflite"), Path("out") / "model.kmodel", calibration=synthetic_faces(4, 3),
                          calibrate_method="no_clip", work_dir=Path("out"))
    assert (tmp_path / "out" / "model.kmodel").stat().st_size > 0
    assert not list((tmp_path / "out").glob(".nncase-job-*"))


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


@NNCASE_1_1
def test_nncase_crash_becomes_a_clear_error(exported, tmp_path):
    # nncase 1.1 segfaults when preprocess is on but input_shape/input_layout are not set: the
    # compiler runs in a child process, so the caller gets an error instead of dying.
    options = kmodel.compile_options(112, None)
    del options["input_shape"], options["input_layout"]
    job = {"tflite": str(exported["out"] / "model.tflite"), "kmodel": str(tmp_path / "crash.kmodel"),
           "result": str(tmp_path / "result.json"), "calibrate_method": "no_clip", "compile_options": options}
    with pytest.raises(run_kmodel.KmodelError, match="model.tflite: nncase crashed with SIGSEGV"):
        kmodel.run_compile_job(job, tmp_path, 120, "model.tflite")
    assert not (tmp_path / "crash.kmodel").exists()


# --- user errors through the CLI, and the output set ------------------------------------------------
def export_cli(exported, calib, out, *extra):
    from mobilefacenet_k210.cli import main

    return main(["export", "--model", str(exported["out"].parent / "run"), "--calib", str(calib), "--out", str(out),
                 "--calibrate-method", "no_clip", "--calibration-samples", "10", "--holdout-samples", "4", *extra])


def one_error_line(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mfk210 export: error: "), err
    for needle in needles:
        assert needle in err, err
    return err


def test_missing_nncase_is_named_before_anything_is_written(exported, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "nncase", None)  # `import nncase` now raises ImportError
    monkeypatch.setitem(sys.modules, "_nncase", None)
    assert export_cli(exported, exported["calib"], tmp_path / "out") == 2
    one_error_line(capsys, "nncase", "not installed", "make setup", f"pip install nncase=={run_kmodel.NNCASE_RELEASE}")
    assert list(tmp_path.iterdir()) == []


def test_install_hint_names_the_pinned_nncase():
    pins = (Path(__file__).parents[1] / "constraints.txt").read_text().split()
    assert f"nncase=={run_kmodel.NNCASE_RELEASE}" in pins


def test_calibration_folders_that_cannot_work_are_explained(exported, tiny_shards, tmp_path, capsys):
    import shutil

    shards = tiny_shards(num_classes=2, per_class=2, num_shards=1)
    no_meta = tmp_path / "no_meta"
    shutil.copytree(shards, no_meta)
    (no_meta / "metadata.json").unlink()
    (tmp_path / "empty").mkdir()
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "notes.txt").write_text("not a face")
    cases = [(no_meta, ("no_meta", "TFRecord shard(s)", "metadata.json"))
             , (tmp_path / "empty", ("empty", "empty folder", "aligned 112x112 face images"))
             , (tmp_path / "odd", ("odd", "1 other file(s) (.txt)"))
             , (tmp_path / "odd" / "notes.txt", ("notes.txt", "not a folder"))]
    for calib, needles in cases:
        assert export_cli(exported, calib, tmp_path / "out") == 2
        one_error_line(capsys, *needles)
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_or_foreign_folder_is_refused(exported, tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    assert export_cli(exported, exported["calib"], tmp_path / "file") == 2
    one_error_line(capsys, "file", "names a file")
    assert export_cli(exported, exported["calib"], tmp_path / "file" / "out") == 2
    one_error_line(capsys, "is a file, not a folder")
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "train.py").write_text("mine")
    assert export_cli(exported, exported["calib"], tmp_path / "project") == 2
    one_error_line(capsys, "project", "train.py", "not an export's")
    assert (tmp_path / "file").read_text() == "mine" and (tmp_path / "project" / "train.py").read_text() == "mine"


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_failed_compile_leaves_the_previous_export_whole(exported, tmp_path, capsys, monkeypatch):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(exported["out"], out)
    before = snapshot(out)

    def failing_compile(*args, **kwargs):
        raise run_kmodel.KmodelError("model.tflite: nncase failed (forced by the test)")

    monkeypatch.setattr(kmodel, "compile_kmodel", failing_compile)
    assert export_cli(exported, exported["calib"], out, "--no-int8-tflite") == 2
    one_error_line(capsys, "forced by the test")
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left beside it


def test_rerun_replaces_the_set_and_cleans_a_killed_exports_leftovers(exported, tmp_path, capsys):
    import shutil
    import subprocess
    import sys

    out = tmp_path / "out"
    shutil.copytree(exported["out"], out)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)
    leftover = tmp_path / f".out.export-{pid}-0000abcd"
    (leftover / ".nncase-job-x").mkdir(parents=True)
    (leftover / "model.tflite").write_bytes(b"half")
    assert export_cli(exported, exported["calib"], out, "--no-int8-tflite") == 0
    assert not (out / "model_int8.tflite").exists()
    names = {p.name for p in out.iterdir()}
    assert names == {"model.tflite", "model.kmodel", "model.kmodel.json", "report.json", "report.md",
                     report.COSINE_PNG}
    on_disk = json.loads((out / "report.json").read_text())
    assert "cosine_int8_mean" not in on_disk and ExportResult.read(out).cosine_int8_mean is None
    assert on_disk["tflite_int8_bytes"] is None and on_disk["kmodel_bytes"] == (out / "model.kmodel").stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_interrupted_swap_is_undone_by_the_next_run(tmp_path):
    import subprocess
    import sys

    from mobilefacenet_k210.export.staging import clean_leftovers

    pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                             text=True, check=True).stdout)
    old = tmp_path / f".out.old-{pid}-00000001"
    old.mkdir()
    (old / "report.json").write_text("{}")
    new = tmp_path / f".out.export-{pid}-00000002"
    new.mkdir()
    live = tmp_path / f".out.export-{os.getpid()}-00000003"  # this process is alive: not a leftover
    live.mkdir()
    assert clean_leftovers(tmp_path / "out") == [new]
    assert (tmp_path / "out" / "report.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", live.name])


def test_kmodel_recorded_as_made_by_another_nncase_is_refused(exported, tmp_path, capsys):
    import shutil

    from mobilefacenet_k210.cli import main

    for name in ("model.kmodel", "model.kmodel.json"):
        shutil.copy(exported["out"] / name, tmp_path / name)
    info = json.loads((tmp_path / "model.kmodel.json").read_text())
    info["nncase_version"] = "0.0.1.test"
    (tmp_path / "model.kmodel.json").write_text(json.dumps(info))
    with pytest.raises(run_kmodel.KmodelError, match="made by nncase 0.0.1.test"):
        run_kmodel.simulate(tmp_path / "model.kmodel", synthetic_faces(1, 0))
    write_faces(tmp_path / "faces" / "a", synthetic_faces(2, 1))
    write_faces(tmp_path / "faces" / "b", synthetic_faces(2, 2))
    assert main(["evaluate", "--model", str(tmp_path / "model.kmodel"), "--folder", str(tmp_path / "faces"),
                 "--aligned", "--nfolds", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.kmodel: made by nncase 0.0.1.test" in err, err
