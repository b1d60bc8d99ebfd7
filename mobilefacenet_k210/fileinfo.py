"""File helpers every stage shares: which files are photos, and a file's sha256.

Standard library only, at the package's lowest layer, so that the builder, the evaluation, the
export and the board code all agree on one list of photo suffixes and one way to hash a file.
"""
import hashlib
from pathlib import Path
from typing import Union

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp")
"""Suffixes (lower case) of the photo files the package reads; any other file in a photo folder is ignored."""


def is_image_file(path: Union[str, Path]) -> bool:
    """A regular file whose suffix (any case) is one of :data:`IMAGE_SUFFIXES`."""
    path = Path(path)
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def sha256_file(path: Union[str, Path]) -> str:
    """Hex sha256 of a file's content, read in 1 MiB blocks (shards and models can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
