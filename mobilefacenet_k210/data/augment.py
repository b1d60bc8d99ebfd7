"""The builder's augmentations of an aligned crop: morphological opening, Gaussian and salt-and-pepper noise.

Each copy is a pure function of the crop, its parameters and a seed derived from (build seed,
identity, source photo, tag) by :func:`stable_seed`, so every runner, process and rerun makes the
same pixels. Opening uses ``cv2.morphologyEx``; noise uses ``skimage.util.random_noise``.
"""
import hashlib
from typing import Any

import numpy as np

from mobilefacenet_k210.config.data import AUGMENTATIONS

ORIGINAL = "original"
OPENING, GAUSSIAN, SALTPEPPER = AUGMENTATIONS


def stable_seed(*parts: Any) -> int:
    """A 64-bit seed from any parts (strings, ints), equal across processes (unlike ``hash``)."""
    text = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little")


def opening(image: np.ndarray, kernel: int = 3) -> np.ndarray:
    """Morphological opening (erosion then dilation) with an elliptical ``kernel`` x ``kernel`` element:
    removes bright specks smaller than the kernel and softens fine texture; never brightens a pixel."""
    import cv2

    element = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (int(kernel), int(kernel)))
    return cv2.morphologyEx(np.ascontiguousarray(image), cv2.MORPH_OPEN, element)


def _to_uint8(image01: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image01 * 255.0), 0, 255).astype(np.uint8)


def gaussian_noise(image: np.ndarray, var: float, seed: int) -> np.ndarray:
    """Zero-mean Gaussian noise of variance ``var`` on the 0..1 pixel scale, clipped, back to uint8."""
    from skimage.util import random_noise

    return _to_uint8(random_noise(image, mode="gaussian", var=float(var), rng=np.random.default_rng(seed)))


def salt_pepper(image: np.ndarray, amount: float, seed: int) -> np.ndarray:
    """Set a fraction ``amount`` of the pixel values to 0 or 255 (half each), back to uint8."""
    from skimage.util import random_noise

    return _to_uint8(random_noise(image, mode="s&p", amount=float(amount), rng=np.random.default_rng(seed)))


def augment(image: np.ndarray, tag: str, seed: int, opening_kernel: int = 3, gaussian_var: float = 0.005,
            saltpepper_amount: float = 0.01) -> np.ndarray:
    """The copy of ``image`` named by ``tag`` (``original`` returns it unchanged)."""
    if tag == ORIGINAL:
        return image
    if tag == OPENING:
        return opening(image, opening_kernel)
    if tag == GAUSSIAN:
        return gaussian_noise(image, gaussian_var, seed)
    if tag == SALTPEPPER:
        return salt_pepper(image, saltpepper_amount, seed)
    raise ValueError(f"unknown augmentation {tag!r}; known: {(ORIGINAL,) + AUGMENTATIONS}")
