"""Refuse a model file that would run code when loaded, by reading it as data before anything deserializes it.

A Keras model file names the classes Keras rebuilds it from: a ``Lambda`` layer carries Python
bytecode that runs as the model is rebuilt (an ``.h5`` runs it whatever the caller asks; a ``.keras``
only with ``safe_mode=False``), an unknown class is whatever code that name finds, and the module a
``.keras`` names for its model is imported, even with Keras' ``safe_mode=True``. So the model's
config is read first (the ``model_config`` attribute of an ``.h5`` with h5py, ``config.json`` inside
a ``.keras`` zip) and walked, nested models included:

- every layer must be one of :data:`k210.KNOWN_LAYERS` (or a model holding only such layers) from
  Keras' own modules (``keras.*``), or one of this package's registered layers (``mfk210>Name``);
- no object anywhere in it may be a lambda, a function by name, or come from a module outside Keras
  and this package (Keras 2.15 resolves a layer's settings against its own lists; this keeps a
  Keras upgrade from opening that door silently).

A SavedModel folder is refused whole: it is a TensorFlow graph, whose functions can hold any
TensorFlow op (file reads and writes among them) besides the Keras metadata, so no check of its
Keras layers would make it data. A ``.tflite`` is refused if it holds TensorFlow ops (Select TF ops,
``Flex*``): TensorFlow's Python interpreter runs those with TensorFlow's own kernels, file writes
among them. ``trust_model_code`` (``--trust-model-code``) skips these checks for a user's own files.
"""
import json
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional

from mobilefacenet_k210 import k210
from mobilefacenet_k210.errors import Mfk210Error

PACKAGE = "mfk210"
"""The ``package`` of this package's ``register_keras_serializable`` layers."""
PACKAGE_MODULE = "mobilefacenet_k210."
MODELS = ("Functional", "Sequential", "Model")
"""Keras classes that hold layers (walked recursively)."""
CODE_OBJECTS = ("__lambda__", "function", "Lambda")
"""Serialized objects that are code: refused wherever they sit."""
OPT_OUT = "--trust-model-code"
"""The flag that loads a file the user trusts (every command that loads a Keras or TFLite file has it)."""


class ModelFileError(Mfk210Error, FileNotFoundError):
    """A --model path that does not hold a loadable Keras embedding model."""


class UntrustedModelError(Mfk210Error, ValueError):
    """A model file that could run code while it loads, refused before anything in it ran."""


Refuse = Callable[[str, str], None]


def _keras_module(module: Any) -> bool:
    return module is None or module == "keras" or str(module).startswith("keras.")


def _ours_or_keras(module: Any) -> bool:
    return _keras_module(module) or str(module).startswith(PACKAGE_MODULE)


def _known_layer(entry: dict) -> Optional[str]:
    """The class an entry of a model's layer list names, as Keras would resolve it, if this package knows it."""
    class_name, registered, module = entry.get("class_name"), entry.get("registered_name"), entry.get("module")
    if not isinstance(class_name, str) or not isinstance(registered, (str, type(None))):
        return None
    package, _, bare = (registered or class_name).rpartition(">")
    if package:  # a registered class: Keras looks it up by this name before anything else
        ours = package == PACKAGE and bare in k210.PACKAGE_LAYERS and class_name in (bare, f"{PACKAGE}>{bare}")
        return bare if ours and (module is None or str(module).startswith(PACKAGE_MODULE)) else None
    if registered not in (None, class_name) or class_name in k210.PACKAGE_LAYERS:
        return None
    known = class_name in k210.KNOWN_LAYERS or class_name in MODELS
    return class_name if known and _keras_module(module) else None


def _check_setting(node: Any, layer: str, refuse: Refuse) -> None:
    """Refuse any object inside a layer's settings that is code or comes from outside Keras and this package."""
    if isinstance(node, list):
        for item in node:
            _check_setting(item, layer, refuse)
        return
    if not isinstance(node, dict):
        return
    if "class_name" in node:
        cls, module = node.get("class_name"), node.get("module")
        if cls in CODE_OBJECTS:
            refuse(layer, f"holds a {cls} object (code)")
        if not _ours_or_keras(module):
            refuse(layer, f"holds a {cls} object from module {module!r}, outside Keras and this package")
    for value in node.values():
        _check_setting(value, layer, refuse)


def _check_layer(entry: Any, refuse: Refuse) -> None:
    """Refuse ``entry`` (a layer's or model's config) unless it and everything in it is known; recurse into models."""
    if not isinstance(entry, dict):
        refuse("?", f"is not a layer config ({type(entry).__name__})")
    config = entry.get("config") if isinstance(entry.get("config"), dict) else {}
    name = str(entry.get("name") or config.get("name") or "?")
    known = _known_layer(entry)
    if known is None:
        cls, module = entry.get("registered_name") or entry.get("class_name"), entry.get("module")
        where = "" if _ours_or_keras(module) else f" from module {module!r}"
        refuse(name, f"({cls}{where}) is not a layer this package knows: it may carry code")
    for key, value in config.items():
        if key == "layers" and known in MODELS and isinstance(value, list):
            for layer in value:
                _check_layer(layer, refuse)
        else:
            _check_setting(value, name, refuse)
    for key, value in entry.items():
        if key not in ("config", "compile_config"):  # compile_config is never read: models load uncompiled
            _check_setting(value, name, refuse)


def _read_config(path: Path) -> Any:
    """The model config Keras would rebuild ``path`` from: a ``.keras`` zip's config.json, else an HDF5 attribute."""
    try:
        if str(path).endswith(".keras") and zipfile.is_zipfile(path):  # how Keras itself tells the formats apart
            with zipfile.ZipFile(path) as z:
                text = z.read("config.json")
        else:
            import h5py

            with h5py.File(path, "r") as f:
                text = f.attrs.get("model_config")
            if text is None:
                raise ModelFileError(f"{path}: an HDF5 file without a model config (weights only?): give a whole "
                                     f"saved model")
        return json.loads(text)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        if isinstance(exc, Mfk210Error):
            raise
        raise ModelFileError(f"{path}: cannot read its model config: {exc}") from None


def check_keras_file(path: Path) -> None:
    """Refuse a Keras model file or SavedModel folder that could run code when loaded, naming the layer."""
    path = Path(path)
    if path.is_dir():
        raise UntrustedModelError(f"{path}: a SavedModel folder is a TensorFlow graph, which can run any "
                                  f"TensorFlow op (file writes among them); refused: give a .keras or .h5 file, "
                                  f"or {OPT_OUT} if you trust it")

    def refuse(layer: str, why: str) -> None:
        raise UntrustedModelError(f"{path}: layer '{layer}' {why}; refused without running it ({OPT_OUT} loads "
                                  f"a file you trust)")

    _check_layer(_read_config(path), refuse)


def check_tflite_file(path: Path) -> None:
    """Refuse a ``.tflite`` holding TensorFlow ops (``Flex*``): TensorFlow's interpreter runs them with its own kernels."""
    from tensorflow.lite.python import schema_py_generated as schema

    path = Path(path)
    try:
        model = schema.Model.GetRootAsModel(path.read_bytes(), 0)
        codes = [model.OperatorCodes(i).CustomCode() for i in range(model.OperatorCodesLength())]
    except OSError:
        raise
    except Exception as exc:  # the flatbuffer reader's own error says where the bytes stop making sense
        raise ModelFileError(f"{path}: cannot load as TFLite: not a TFLite flatbuffer ({type(exc).__name__}: "
                             f"{exc})") from None
    flex = sorted({c.decode("utf-8", "replace") for c in codes if c and c.startswith(b"Flex")})
    if flex:
        raise UntrustedModelError(f"{path}: holds TensorFlow ops ({', '.join(flex)}), which run TensorFlow's own "
                                  f"kernels (file reads and writes among them); refused without running them "
                                  f"({OPT_OUT} loads a file you trust)")
