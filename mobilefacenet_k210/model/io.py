"""Where and how the embedding model is saved, so that train, evaluate and export agree.

A run keeps its embedding model at ``RUN_DIR/embedding/model.keras`` (heads never included). Every
command that takes ``--model`` accepts that file, the ``embedding/`` folder, the run folder, or any
other ``.keras``/``.h5`` file or SavedModel folder.
"""
from pathlib import Path
from typing import Union

from mobilefacenet_k210 import atomic
from mobilefacenet_k210.errors import Mfk210Error

EMBEDDING_DIR = "embedding"
EMBEDDING_FILE = "model.keras"


class ModelFileError(Mfk210Error, FileNotFoundError):
    """A --model path that does not hold a loadable Keras embedding model."""


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


def save_embedding_model(model, path: Union[str, Path]) -> Path:
    """Save atomically: write beside the target, then rename, so a killed run never leaves half a model.

    ``path`` is a run folder (saved to ``path/embedding/model.keras``) or a ``.keras``/``.h5`` file.
    """
    path = Path(path)
    target = path if path.suffix in (".keras", ".h5") else path / EMBEDDING_DIR / EMBEDDING_FILE
    with atomic.atomic_path(target, suffix=target.suffix) as tmp:  # Keras picks the format by suffix
        if target.suffix == ".keras":
            model.save(str(tmp))
        else:
            model.save(str(tmp), include_optimizer=False)
    return target


def load_embedding_model(path: Union[str, Path]):
    """Load the embedding model for inference (never compiled: it has no loss of its own)."""
    import tensorflow as tf

    from mobilefacenet_k210.model import mobilefacenet  # noqa: F401  (registers its layers, InputOrientation)

    resolved = resolve_model_path(path)
    try:
        return tf.keras.models.load_model(resolved, compile=False)
    except Exception as exc:
        raise ModelFileError(f"{resolved}: cannot load as a Keras model: {exc}") from None
