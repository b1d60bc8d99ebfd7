"""The two contracts every stage shares: pixel normalization and the 112x112 alignment template.

Training (tf.data), evaluation, export (nncase's ``input_range``) and calibration all call
:func:`normalize` / :func:`input_range`; the builder, ``evaluate --folder`` and enroll/identify all
align to :data:`ARCFACE_TEMPLATE`. Change them here and nowhere else.
"""
from typing import Any, Tuple

import numpy as np

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


def denormalize(images: np.ndarray) -> np.ndarray:
    """Inverse of :func:`normalize`, rounded and clipped back to uint8 (for pictures and checks)."""
    return np.clip(np.rint(np.asarray(images) * PIXEL_SCALE + PIXEL_MEAN), 0, 255).astype(np.uint8)


def input_range() -> Tuple[float, float]:
    """The float range that uint8 0..255 maps to: nncase's ``input_range`` for a uint8 kmodel input."""
    return (float(normalize(np.float32(0.0))), float(normalize(np.float32(255.0))))
