"""The contracts every stage shares: pixel normalization, the 112x112 alignment template, and the
orientation in which a network takes the aligned crop.

Training (tf.data), evaluation, export (nncase's ``input_range``) and calibration all call
:func:`normalize` / :func:`input_range`; the builder, ``evaluate --folder`` and enroll/identify all
align to :data:`ARCFACE_TEMPLATE`. Every host tool hands a model upright aligned crops; a network that
computes on the crop turned by 180 degrees (``rot180``, see :data:`ORIENTATIONS`) gets it turned by
:func:`orient`, in one of two places: inside a Keras model (its first layer), or, for an exported file
(TFLite, kmodel), by whatever runs it, as the file's record says (:func:`recorded_orientation`). On
the board the alignment itself turns the crop: the board config carries :func:`template` of that
orientation. Change them here and nowhere else.
"""
import json
from pathlib import Path
from typing import Any, Optional, Tuple, Type, Union

import numpy as np

from mobilefacenet_k210.errors import FileFormatError

INPUT_SIZE = 112
"""Aligned crops and the model input are INPUT_SIZE x INPUT_SIZE RGB."""

PIXEL_MEAN = 127.5
PIXEL_SCALE = 128.0
"""normalized = (uint8 RGB pixel - PIXEL_MEAN) / PIXEL_SCALE, as InsightFace's MobileFaceNet."""

ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],  # left eye (image left)
        [73.5318, 51.5014],  # right eye
        [56.0252, 71.7366],  # nose tip
        [41.5493, 92.3655],  # left mouth corner
        [70.7299, 92.2041],  # right mouth corner
    ],
    dtype=np.float32,
)
"""InsightFace's 5-point template for 112x112 crops (x, y), in the order MTCNN reports landmarks."""


def normalize(images: Any) -> Any:
    """Map uint8 RGB pixels (numpy array or tf tensor, any shape) to the model's float32 input."""
    if isinstance(images, np.ndarray) or np.isscalar(images):
        return (np.asarray(images, dtype=np.float32) - PIXEL_MEAN) / PIXEL_SCALE
    import tensorflow as tf  # only when a tensor is given: importing this module stays cheap

    return (tf.cast(images, tf.float32) - PIXEL_MEAN) / PIXEL_SCALE


def check_crops(images: Any, size: Optional[int] = INPUT_SIZE, error: Type[Exception] = ValueError,
                where: str = "") -> np.ndarray:
    """``images`` as an array when they are uint8 RGB crops (N, size, size, 3), any height and width when
    ``size`` is None; else ``error`` saying what was given, after ``where`` (a file or a step)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or \
            (size is not None and images.shape[1:3] != (size, size)):
        shape = f"(N, {size}, {size}, 3)" if size is not None else "(N, H, W, 3)"
        raise error(f"{where + ': ' if where else ''}expected uint8 RGB crops {shape}, "
                    f"got {images.dtype} {images.shape}")
    return images


def denormalize(images: np.ndarray) -> np.ndarray:
    """Inverse of :func:`normalize`, rounded and clipped back to uint8 (for pictures and checks)."""
    return np.clip(np.rint(np.asarray(images) * PIXEL_SCALE + PIXEL_MEAN), 0, 255).astype(np.uint8)


def input_range() -> Tuple[float, float]:
    """The float range that uint8 0..255 maps to: nncase's ``input_range`` for a uint8 kmodel input."""
    return (float(normalize(np.float32(0.0))), float(normalize(np.float32(255.0))))


UPRIGHT = "upright"
ROT180 = "rot180"
ORIENTATIONS = (UPRIGHT, ROT180)
"""How a network takes the aligned crop: ``upright`` as aligned, or ``rot180``, turned by 180 degrees.

A network imported from TensorFlow pads its stride-2 convolutions as TF's 'same' does (0 rows and
columns before, 1 after), which the KPU cannot express; the same network computing on the turned
crop, every spatial kernel turned too, needs the symmetric padding the KPU has, and gives the same
embedding exactly (``pretrained/replica.py``). Turning a 112x112 crop by 180 degrees maps the pixel
grid onto itself (pixel x goes to 111 - x), so nothing is resampled.
"""
ORIENTATION_KEY = "input_orientation"
"""The field naming the orientation in an exported model's record (``<model file>.json``)."""


def check_orientation(orientation: str, where: str = "input orientation") -> str:
    """``orientation`` if it is one of :data:`ORIENTATIONS`; ValueError naming the choices otherwise."""
    if orientation not in ORIENTATIONS:
        raise ValueError(f"{where} {orientation!r}: choose one of {', '.join(ORIENTATIONS)}")
    return orientation


def orient(images: Any, orientation: str) -> Any:
    """Upright crops (N, H, W, C), numpy array or tf tensor, as a network of ``orientation`` takes them.

    ``rot180`` is its own inverse: it also turns that network's feature maps back upright.
    """
    if check_orientation(orientation) == UPRIGHT:
        return images
    if isinstance(images, np.ndarray):
        return np.ascontiguousarray(images[:, ::-1, ::-1])
    import tensorflow as tf

    return tf.reverse(images, [1, 2])


def template(orientation: str = UPRIGHT) -> np.ndarray:
    """The 5-point alignment template that yields crops in ``orientation`` (the board aligns to it)."""
    if check_orientation(orientation) == UPRIGHT:
        return ARCFACE_TEMPLATE.copy()
    return (np.float32(INPUT_SIZE - 1) - ARCFACE_TEMPLATE).astype(np.float32)


def record_path(model_file: Union[str, Path]) -> Path:
    """``<model file>.json``: the record beside an exported model file (kmodel or TFLite)."""
    model_file = Path(model_file)
    return model_file.with_name(model_file.name + ".json")


def recorded_orientation(model_file: Union[str, Path]) -> str:
    """The orientation an exported model file takes its crops in, from its record; ``upright`` when it
    has no record or the record names none (every file written before orientations existed)."""
    record = record_path(model_file)
    if not record.is_file():
        return UPRIGHT
    try:
        value = json.loads(record.read_text(encoding="utf-8")).get(ORIENTATION_KEY, UPRIGHT)
        return check_orientation(value, f"{record}: {ORIENTATION_KEY}")
    except (ValueError, AttributeError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"{record}: not a readable model record ({exc}); export the model again") from None
