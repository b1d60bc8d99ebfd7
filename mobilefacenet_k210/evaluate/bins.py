"""InsightFace verification sets (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``...), read safely and written.

A ``.bin`` is a pickle of ``(list of 2N encoded images, list of N bools)``; images ``2i`` and ``2i+1``
form pair ``i``. A pickle can run any code while it loads, so these files are read with an
unpickler whose ``find_class`` refuses every global except the few that plain data needs (the
protocol-2 encoding of ``bytes`` and numpy's bool arrays, which some conversions store): a hostile
file is refused before anything of it runs. The images are then decoded and checked to be
``INPUT_SIZE`` x ``INPUT_SIZE`` crops.
"""
import hashlib
import io
import pickle
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np

from mobilefacenet_k210 import atomic
from mobilefacenet_k210.preprocessing import INPUT_SIZE, check_crops
from mobilefacenet_k210.errors import Mfk210Error


class BinFileError(Mfk210Error, ValueError):
    """A ``.bin`` that is not a readable, safe InsightFace verification set."""


class _Refused(pickle.UnpicklingError):
    """The pickle asked for something plain data never needs."""


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` limited to what pickle protocol 2 uses to store ``bytes``."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise _Refused(f"_codecs.encode with encoding {encoding!r} is not plain bytes data")
    return text.encode("latin1")


def _numpy_globals() -> dict:
    """numpy's array/scalar reconstruction functions, under both numpy 1 and numpy 2 module names."""
    from numpy.core import multiarray

    allowed = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    return allowed


class _SafeUnpickler(pickle.Unpickler):
    """Builds lists, tuples, bytes, str, bools and numpy arrays only; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        allowed = _numpy_globals()
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise _Refused(f"refused global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("refused persistent id")


def safe_unpickle(data: bytes, where: str = "<bytes>") -> Any:
    """Unpickle plain data without running anything from it (Python 2 ``str`` become ``bytes``)."""
    try:
        return _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _Refused as exc:
        raise BinFileError(f"{where}: not loaded: {exc} (an InsightFace .bin holds only image bytes and "
                           "booleans; this file asks for more and may be hostile; nothing from it was run)") from None
    except Exception as exc:
        raise BinFileError(f"{where}: not a readable pickle: {type(exc).__name__}: {exc}") from None


def read_bin(path: Union[str, Path]) -> Tuple[List[bytes], np.ndarray]:
    """The raw content of a ``.bin``: 2N encoded images and N pair labels, with their counts checked."""
    path = Path(path)
    if not path.is_file():
        raise BinFileError(f"{path}: no such .bin file")
    content = safe_unpickle(path.read_bytes(), str(path))
    if not isinstance(content, (tuple, list)) or len(content) != 2:
        raise BinFileError(f"{path}: expected a pickled pair (images, issame), got {type(content).__name__}")
    images, issame = content
    if not isinstance(images, (list, tuple)) or not all(isinstance(b, (bytes, bytearray)) for b in images):
        raise BinFileError(f"{path}: the first item must be a list of encoded image bytes")
    try:
        labels = np.asarray(issame)
    except Exception:
        raise BinFileError(f"{path}: the second item must be a list of booleans") from None
    if labels.ndim != 1 or not (labels.dtype == bool or np.isin(labels, (0, 1)).all()):
        raise BinFileError(f"{path}: the second item must be a flat list of booleans, got {labels.dtype} "
                           f"shape {labels.shape}")
    if len(images) != 2 * labels.size:
        raise BinFileError(f"{path}: {len(images)} images for {labels.size} pairs; a .bin must hold exactly "
                           "two images per pair")
    if labels.size == 0:
        raise BinFileError(f"{path}: no pairs")
    return [bytes(b) for b in images], labels.astype(bool)


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Decode one encoded image to RGB uint8 and check it is an INPUT_SIZE square crop."""
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise BinFileError(f"{where}: not a decodable image")
    if bgr.shape[:2] != (INPUT_SIZE, INPUT_SIZE):
        raise BinFileError(f"{where}: image is {bgr.shape[1]}x{bgr.shape[0]}, expected aligned "
                           f"{INPUT_SIZE}x{INPUT_SIZE} crops")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def load_bin(path: Union[str, Path], progress: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Load a verification ``.bin``: images uint8 RGB (2N, 112, 112, 3) and issame bool (N,)."""
    from tqdm import tqdm

    encoded, issame = read_bin(path)
    images = np.empty((len(encoded), INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    for i, data in enumerate(tqdm(encoded, desc=f"decode {Path(path).name}", unit="img", disable=not progress,
                                  leave=False)):
        images[i] = decode_image(data, f"{path}: image {i}")
    return images, issame


def encode_image(image: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    """Encode one RGB uint8 crop as PNG (lossless, the default) or JPEG (as InsightFace's own sets)."""
    import cv2

    fmt = fmt.lower().lstrip(".")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt in ("jpg", "jpeg") else []
    ok, buf = cv2.imencode(f".{fmt}", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise BinFileError(f"cannot encode an image as {fmt}")
    return buf.tobytes()


def write_bin(path: Union[str, Path], images: np.ndarray, issame: Sequence[bool], fmt: str = "png",
              quality: int = 95) -> Path:
    """Write an InsightFace ``.bin`` (atomically) from aligned crops (2N, 112, 112, 3) and N labels.

    PNG keeps the crops bit-exact; ``fmt="jpg"`` makes files as small as InsightFace's own.
    """
    path = Path(path)
    images = np.asarray(images)
    labels = [bool(s) for s in np.asarray(issame).reshape(-1)]
    check_crops(images, error=BinFileError, where=str(path))
    if images.shape[0] != 2 * len(labels) or not labels:
        raise BinFileError(f"{path}: {images.shape[0]} images for {len(labels)} pairs; need two per pair")
    encoded = [encode_image(img, fmt, quality) for img in images]
    with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
        pickle.dump((encoded, labels), f, protocol=4)
    return path


def distinct_images(images: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The distinct crops of a pair-ordered array and, per row, the index of its crop among them.

    A .bin repeats each photo in every pair it belongs to (LFW: 12,000 rows); embedding each photo
    once matters for the kmodel, which runs in nncase's simulator at a few images per second.
    """
    first: Dict[bytes, int] = {}
    index = np.empty(len(images), dtype=np.int64)
    for i, image in enumerate(images):
        index[i] = first.setdefault(hashlib.sha1(image.tobytes()).digest(), len(first))
    keep = np.zeros(len(first), dtype=np.int64)
    keep[index] = np.arange(len(images))
    return images[keep], index
