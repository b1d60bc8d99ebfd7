"""Where and how the embedding model is saved, so that train, evaluate and export agree; and the one
place that says how every model file is read.

A run keeps its embedding model at ``RUN_DIR/embedding/model.keras`` (heads never included). Every
command that takes ``--model`` accepts that file, the ``embedding/`` folder, the run folder, or any
other ``.keras``/``.h5`` file or SavedModel folder.

Loading a file never runs code from it (people pass models around; a model must be data):

- Keras ``.keras``/``.h5``: :func:`load_embedding_model`, the one loader, reads the model's config as
  data first and refuses a Lambda or any layer class this package does not know (``model/guard.py``,
  the classes in ``k210.KNOWN_LAYERS``), naming the file and the layer; ``.keras`` then loads with
  Keras' ``safe_mode=True``. A SavedModel folder (a TensorFlow graph) is refused.
- ``.tflite``: refused if it holds TensorFlow (``Flex``) ops, which TensorFlow's interpreter would
  run with its own kernels; built-in TFLite ops only compute (``runtime/backends.py``).
- ``.onnx``: OpenCV's DNN importer builds its own layers from the graph; ``.kmodel``: bytes for
  nncase's simulator or the board.
- ``.npy``/``.npz`` (precomputed embeddings and teachers, the builder's cache, export's calibration
  batch): ``np.load(..., allow_pickle=False)``; InsightFace ``.bin``: ``evaluate/bins.py``'s unpickler,
  which refuses every global plain data does not need; configs: ``json`` and ``yaml.safe_load``.

``trust_model_code`` (``--trust-model-code`` on check, evaluate, export, enroll, identify, add-teacher
and build-tfrecords) is the opt-out for a user's own files: Keras files and SavedModels load as
Keras loads them (``.keras`` with ``safe_mode=False``, so a Lambda runs) and TFLite's TensorFlow ops run.
"""
import shutil
from pathlib import Path
from typing import Union

from mobilefacenet_k210 import atomic
from mobilefacenet_k210.model.guard import ModelFileError, check_keras_file

EMBEDDING_DIR = "embedding"
EMBEDDING_FILE = "model.keras"


def resolve_model_path(path: Union[str, Path]) -> Path:
    """Find the model file behind a run folder, an ``embedding/`` folder or a file path."""
    path = Path(path)
    candidates = [path, path / EMBEDDING_FILE, path / EMBEDDING_DIR / EMBEDDING_FILE]
    for c in candidates:
        if c.is_file() and c.suffix in (".keras", ".h5"):
            return c
    if (path / "saved_model.pb").is_file():
        return path
    if not path.exists():
        raise ModelFileError(f"{path}: no such file or folder")
    raise ModelFileError(f"{path}: no Keras model here (looked for {', '.join(str(c) for c in candidates[1:])}, "
                         "a .keras/.h5 file or a SavedModel folder)")


def _model_file(path: Union[str, Path]) -> Path:
    """``path`` itself if a ``.keras``/``.h5`` file, else the run folder's ``embedding/model.keras``."""
    path = Path(path)
    return path if path.suffix in (".keras", ".h5") else path / EMBEDDING_DIR / EMBEDDING_FILE


def save_embedding_model(model, path: Union[str, Path]) -> Path:
    """Save atomically: write beside the target, then rename, so a killed run never leaves half a model.

    ``path`` is a run folder (saved to ``path/embedding/model.keras``) or a ``.keras``/``.h5`` file.
    """
    target = _model_file(path)
    with atomic.atomic_path(target, suffix=target.suffix) as tmp:  # Keras picks the format by suffix
        if target.suffix == ".keras":
            model.save(str(tmp))
        else:
            model.save(str(tmp), include_optimizer=False)
    return target


def copy_embedding_model(saved: Union[str, Path], path: Union[str, Path]) -> Path:
    """Copy a model file saved by :func:`save_embedding_model` to where it would save to ``path``, atomically:
    the same model twice (the last epoch that is also the best) is saved once."""
    target = _model_file(path)
    with atomic.atomic_path(target, suffix=target.suffix) as tmp:
        shutil.copyfile(saved, tmp)
    return target


def load_embedding_model(path: Union[str, Path], trust_model_code: bool = False):
    """Load the embedding model for inference (never compiled: it has no loss of its own).

    Unless ``trust_model_code``, a file that could run code is refused before TensorFlow reads it.
    """
    resolved = resolve_model_path(path)
    if not trust_model_code:
        check_keras_file(resolved)
    import tensorflow as tf

    from mobilefacenet_k210.model import mobilefacenet  # noqa: F401  (registers its layers, InputOrientation)

    try:
        return tf.keras.models.load_model(resolved, compile=False, safe_mode=not trust_model_code)
    except Exception as exc:
        raise ModelFileError(f"{resolved}: cannot load as a Keras model: {exc}") from None
