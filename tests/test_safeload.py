"""Loading a model file never runs code from it (issue 25): real hostile files, built here, that DO run
their code when TensorFlow loads them unguarded (each writes a marker file), are refused by every
command that takes a model, with one line naming the file and the layer, exit status 2 and no marker;
``--trust-model-code`` loads (and runs) them; the package's own models still load."""
import importlib
import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mobilefacenet_k210 import cli
from mobilefacenet_k210.preprocessing import INPUT_SIZE

tf = pytest.importorskip("tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import write_tiny_shards  # noqa: E402

HOSTILE_MODULE = "mfk210_hostile_import"
KERAS_FILES = ("lambda.h5", "lambda.keras", "module.keras", "savedmodel")
NAMED = {  # what the refusal line must name besides the file: the layer and its class (or why)
    "lambda.h5": ("'marker_lambda'", "Lambda"), "lambda.keras": ("'marker_lambda'", "Lambda"),
    "module.keras": ("(Functional from module", HOSTILE_MODULE),
    "savedmodel": ("SavedModel",), "flex.tflite": ("FlexWriteFile",),
}


def _writer(marker: Path):
    """A Lambda body that writes ``marker`` (and passes its input through)."""
    marker = str(marker)
    return lambda x: (__import__("pathlib").Path(marker).write_text("ran"), x)[1]


def _base(lambda_marker: Path = None) -> "tf.keras.Model":
    """A 112x112 embedding model (conv -> flatten), with a marker-writing Lambda after the conv if asked."""
    inputs = tf.keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="image")
    x = tf.keras.layers.Conv2D(2, 8, strides=8, name="innocent_conv")(inputs)
    if lambda_marker:
        x = tf.keras.layers.Lambda(_writer(lambda_marker), name="marker_lambda")(x)
    return tf.keras.Model(inputs, tf.keras.layers.Flatten(name="embedding")(x))


def _rewrite_config(src: Path, dst: Path, change) -> Path:
    """A copy of the .keras ``src`` with ``change(config)`` applied to its config.json."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename == "config.json":
                config = json.loads(data)
                change(config)
                data = json.dumps(config).encode()
            zout.writestr(item, data)
    return dst


def _flex_tflite(path: Path, marker: Path) -> None:
    """A float TFLite embedding model whose graph writes ``marker`` with TensorFlow's WriteFile op (Select TF ops)."""
    @tf.function(input_signature=[tf.TensorSpec([1, INPUT_SIZE, INPUT_SIZE, 3], tf.float32)])
    def embed(x):
        tf.io.write_file(str(marker), tf.strings.as_string(tf.reduce_sum(x)))
        return tf.reduce_mean(x, axis=[1, 2])

    converter = tf.lite.TFLiteConverter.from_concrete_functions([embed.get_concrete_function()], embed)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    path.write_bytes(converter.convert())


def _build_hostile(root: Path) -> dict:
    marker = root / "MARKER"
    files = {}
    model = _base(marker)  # building it calls the Lambda once: the marker is removed below
    for name in ("lambda.h5", "lambda.keras", "savedmodel"):
        files[name] = root / name
        model.save(str(files[name]), **({"save_format": "tf"} if name == "savedmodel" else {}))

    # a .keras whose model names a module that writes the marker when imported: Keras imports it even
    # with its own safe_mode=True
    (root / f"{HOSTILE_MODULE}.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n")
    _base().save(str(root / "plain.keras"))
    files["module.keras"] = _rewrite_config(root / "plain.keras", root / "module.keras",
                                            lambda c: c.update(module=HOSTILE_MODULE, registered_name=None))

    files["flex.tflite"] = root / "flex.tflite"
    _flex_tflite(files["flex.tflite"], marker)
    marker.unlink()
    return {"marker": marker, "files": files, "root": root}


def _scaffold(root: Path) -> dict:
    """What the commands read besides the model: a gallery folder of one aligned face, a gallery file, shards."""
    import cv2

    face = root / "people" / "alice" / "a.png"
    face.parent.mkdir(parents=True)
    cv2.imwrite(str(face), np.full((INPUT_SIZE, INPUT_SIZE, 3), 128, np.uint8))
    gallery = root / "gallery.json"
    gallery.write_text(json.dumps({"format": "mfk210-gallery", "people": [{"name": "alice", "feature": [1.0, 0.0]}]}))
    return {"people": root / "people", "face": face, "gallery": gallery,
            "shards": write_tiny_shards(root / "shards", num_classes=2, per_class=2, num_shards=1)}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """The hostile files (all writing one marker) and what the commands need around them, built once;
    the folder holding the marker-writing module is importable while the tests run."""
    root = tmp_path_factory.mktemp("hostile")
    built = {**_build_hostile(root), **_scaffold(root)}
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    yield built
    sys.path.remove(str(root))
    sys.modules.pop(HOSTILE_MODULE, None)


@pytest.fixture
def marker(hostile):
    """The marker path, absent when the test starts (and the hostile module not yet imported)."""
    hostile["marker"].unlink(missing_ok=True)
    sys.modules.pop(HOSTILE_MODULE, None)
    yield hostile["marker"]
    hostile["marker"].unlink(missing_ok=True)


def _plain_load(path: Path) -> None:
    """What TensorFlow does with the file with no guard (and, for .keras, without Keras' own safe_mode)."""
    if path.suffix == ".tflite":
        interpreter = tf.lite.Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]
        interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], np.float32))
        interpreter.invoke()
    else:
        tf.keras.models.load_model(path, compile=False, safe_mode=False)


@pytest.mark.parametrize("name", KERAS_FILES + ("flex.tflite",))
def test_hostile_files_really_run_their_code_unguarded(hostile, marker, name):
    """Without the guard each file runs its code, so the refusals below cannot pass vacuously."""
    try:
        _plain_load(hostile["files"][name])
    except Exception:  # module.keras fails after the import that ran its code; what counts is the marker
        pass
    assert marker.is_file()


def test_keras_safe_mode_alone_does_not_stop_an_imported_module(hostile, marker):
    """Why .keras files are checked too: Keras imports the module an object names even with safe_mode=True."""
    with pytest.raises(Exception):
        tf.keras.models.load_model(hostile["files"]["module.keras"], compile=False, safe_mode=True)
    assert marker.is_file()


def _commands(h: dict, model: str) -> dict:
    out = h["root"] / "out"
    return {
        "check": ["check", "--model", model],
        "evaluate": ["evaluate", "--model", model, "--folder", str(h["people"]), "--aligned"],
        "export": ["export", "--model", model, "--calib", str(h["people"]), "--out", str(out / "export")],
        "enroll": ["enroll", str(h["people"]), "--model", model, "--out", str(out / "g.json"), "--aligned"],
        "identify": ["identify", str(h["face"]), "--gallery", str(h["gallery"]), "--model", model, "--aligned"],
        "add-teacher": ["add-teacher", str(h["shards"]), "--teacher", model, "--out", str(out / "teacher")],
        "build-tfrecords": ["build-tfrecords", str(h["people"]), str(out / "tfrecords"), "--aligned",
                            "--teacher", model],
    }


KERAS_ONLY = ("check", "export")
CASES = [(command, name) for command in _commands({k: Path() for k in ("root", "people", "face", "gallery",
                                                                        "shards")}, "m")
         for name in KERAS_FILES + ("flex.tflite",) if not (name.endswith(".tflite") and command in KERAS_ONLY)]


def _run(argv: list, capsys) -> tuple:
    capsys.readouterr()
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, [line for line in captured.err.splitlines() if line.startswith("mfk210 ")]


@pytest.mark.parametrize("command,name", CASES)
def test_every_command_refuses_a_hostile_model(hostile, marker, capsys, command, name):
    path = hostile["files"][name]
    code, lines = _run(_commands(hostile, str(path))[command], capsys)
    assert code == 2
    assert len(lines) == 1, lines
    assert str(path) in lines[0] and "--trust-model-code" in lines[0]
    for word in NAMED[name]:
        assert word in lines[0], lines[0]
    assert not marker.exists()
    out = hostile["root"] / "out"  # nothing written either (the output lock may have made its parent folder)
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*")), sorted(out.rglob("*"))


@pytest.mark.parametrize("command", list(_commands({k: Path() for k in ("root", "people", "face", "gallery",
                                                                         "shards")}, "m")))
def test_trust_model_code_loads_and_runs_a_hostile_model(hostile, marker, capsys, command):
    """The opt-out reaches the loader from every command (through EvalConfig/ExportConfig where they have one):
    the file loads as TensorFlow would load it, and its code runs."""
    argv = _commands(hostile, str(hostile["files"]["lambda.h5"]))[command] + ["--trust-model-code"]
    code, lines = _run(argv, capsys)
    shutil.rmtree(hostile["root"] / "out", ignore_errors=True)
    assert marker.is_file()
    assert code in (0, 1, 2) and not any("refused" in line for line in lines), lines


def test_trust_model_code_loads_keras_without_safe_mode_and_tflite_with_tensorflow_ops(hostile, marker, capsys):
    from mobilefacenet_k210.runtime.backends import TFLiteBackend

    assert cli.main(["check", "--model", str(hostile["files"]["lambda.keras"]), "--trust-model-code"]) == 1
    assert "marker_lambda" in capsys.readouterr().out  # check ran on it and names the Lambda as not deployable
    assert marker.is_file()
    marker.unlink()
    backend = TFLiteBackend(hostile["files"]["flex.tflite"], trust_model_code=True)
    assert backend.embed(np.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), np.uint8), progress=False).shape == (1, 3)
    assert marker.is_file()


@pytest.fixture(scope="module")
def own_model(tmp_path_factory):
    """A tiny MobileFaceNet (width 0.25, 64 px) saved once by the package, as .keras and as .h5."""
    from mobilefacenet_k210.config import ModelConfig
    from mobilefacenet_k210.model.io import save_embedding_model
    from mobilefacenet_k210.model.mobilefacenet import MobileFaceNet

    root = tmp_path_factory.mktemp("own")
    model = MobileFaceNet(ModelConfig(width_multiplier=0.25, input_size=64))
    return model.get_weights(), {suffix: save_embedding_model(model, root / f"model{suffix}") for suffix in (".keras", ".h5")}


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_the_packages_own_models_still_load(own_model, suffix):
    from mobilefacenet_k210.model.io import load_embedding_model

    weights, paths = own_model
    loaded = load_embedding_model(paths[suffix])
    assert len(loaded.get_weights()) == len(weights)
    assert all(np.array_equal(a, b) for a, b in zip(loaded.get_weights(), weights))


def test_known_layers_pass_nested_models_are_walked(tmp_path):
    """Classes k210 knows (PReLU, Dense), the package's registered layers and a nested model pass the check;
    a Lambda inside a nested model is still found, by its name."""
    from mobilefacenet_k210.model.distill import TeacherProjection
    from mobilefacenet_k210.model.guard import UntrustedModelError, check_keras_file

    inputs = tf.keras.Input((INPUT_SIZE, INPUT_SIZE, 3))
    x = tf.keras.layers.PReLU(name="prelu")(_base()(inputs))
    x = TeacherProjection(4, name="projection")(tf.keras.layers.Dense(8, name="dense")(x))
    inner_input = tf.keras.Input((4,))
    inner = tf.keras.Model(inner_input, tf.keras.layers.Lambda(lambda t: t, name="deep_lambda")(inner_input),
                           name="inner")
    for suffix in (".keras", ".h5"):
        tf.keras.Model(inputs, x).save(tmp_path / f"known{suffix}")
        check_keras_file(tmp_path / f"known{suffix}")
        tf.keras.Model(inputs, inner(x)).save(tmp_path / f"hidden{suffix}")
        with pytest.raises(UntrustedModelError, match=r"layer 'deep_lambda' \(Lambda\)"):
            check_keras_file(tmp_path / f"hidden{suffix}")


@pytest.mark.parametrize("setting,says", [
    ({"module": "builtins", "class_name": "__lambda__", "config": {"value": "..."}, "registered_name": None},
     "__lambda__ object"),
    ({"module": "os", "class_name": "function", "config": "system", "registered_name": None}, "function object"),
    ({"module": HOSTILE_MODULE, "class_name": "Initializer", "config": {}, "registered_name": None}, HOSTILE_MODULE),
])
def test_code_inside_a_known_layers_settings_is_refused(hostile, tmp_path, setting, says):
    """Keras 2.15 resolves these against its own lists (they fail to load rather than run), but a Keras upgrade
    must not turn them into code silently: the walk refuses them inside a Conv2D, naming the conv."""
    from mobilefacenet_k210.model.guard import UntrustedModelError, check_keras_file

    def change(config):
        conv = next(layer for layer in config["config"]["layers"] if layer["config"]["name"] == "innocent_conv")
        conv["config"]["kernel_initializer"] = setting

    path = _rewrite_config(hostile["root"] / "plain.keras", tmp_path / "setting.keras", change)
    with pytest.raises(UntrustedModelError, match=f"layer 'innocent_conv' holds .*{says}"):
        check_keras_file(path)
