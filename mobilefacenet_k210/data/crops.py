"""Photo files -> aligned 112x112 RGB face crops: the one reading path of gallery, pairs and calibration.

A photo is decoded with ``align.read_image``; with ``aligned`` it must already be a
``INPUT_SIZE`` square crop (anything else is the caller's error, raised through ``wrong_size``
so that each stage names its own remedy), otherwise MTCNN (``align.FaceAligner.detect_align``)
finds the largest face and warps it onto the ArcFace template, in batches of ``batch_size``.
"""
from pathlib import Path
from typing import Any, Callable, List, NamedTuple, Sequence, Union

import numpy as np

from mobilefacenet_k210.preprocessing import INPUT_SIZE

WrongSize = Callable[[Path, np.ndarray], Exception]
"""Builds the error for a file given as aligned that is not an aligned crop (path, decoded image)."""


class Unreadable(NamedTuple):
    """A photo file that does not decode (corrupt, not an image), with the reason."""

    reason: str


Crop = Union[np.ndarray, None, Unreadable]
"""A crop (uint8 RGB), ``None`` where no face was found, or :class:`Unreadable`."""


def read_crop(path: Union[str, Path], wrong_size: WrongSize) -> np.ndarray:
    """The aligned crop stored at ``path`` (uint8 RGB); raises ``wrong_size(path, image)`` if not square 112."""
    return _checked(Path(path), _read(Path(path), skip_unreadable=False), wrong_size)


def _checked(path: Path, image: Union[np.ndarray, Unreadable],
             wrong_size: WrongSize) -> Union[np.ndarray, Unreadable]:
    if not isinstance(image, Unreadable) and image.shape != (INPUT_SIZE, INPUT_SIZE, 3):
        raise wrong_size(path, image)
    return image


def _read(path: Path, skip_unreadable: bool) -> Union[np.ndarray, Unreadable]:
    from mobilefacenet_k210.data.align import ImageError, read_image

    try:
        return read_image(path)
    except ImageError as exc:
        if not skip_unreadable:
            raise
        return Unreadable(exc.reason)


def read_crops(paths: Sequence[Union[str, Path]], aligned: bool, wrong_size: WrongSize, aligner: Any = None,
               batch_size: int = 32, skip_unreadable: bool = False, progress: bool = False) -> List[Crop]:
    """One :data:`Crop` per path, in order.

    ``aligned``: the files are crops already (see :func:`read_crop`); otherwise each is aligned
    with ``aligner`` (a new ``FaceAligner`` if None). ``skip_unreadable``: a file that does not
    decode becomes :class:`Unreadable` instead of raising ``ImageError`` (one bad photo in a large
    folder must not stop an evaluation).
    """
    from tqdm import tqdm

    paths = [Path(p) for p in paths]
    crops: List[Crop] = []
    if aligned:
        for path in tqdm(paths, desc="read crops", unit="img", disable=not progress, leave=False):
            crops.append(_checked(path, _read(path, skip_unreadable), wrong_size))
        return crops
    if aligner is None:
        from mobilefacenet_k210.data.align import FaceAligner

        aligner = FaceAligner()
    with tqdm(total=len(paths), desc="align photos", unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, len(paths), batch_size):
            chunk = [_read(p, skip_unreadable) for p in paths[start:start + batch_size]]
            readable = [image for image in chunk if not isinstance(image, Unreadable)]
            found = iter(aligner.detect_align(readable) if readable else [])
            crops.extend(image if isinstance(image, Unreadable) else next(found) for image in chunk)
            bar.update(len(chunk))
    return crops
