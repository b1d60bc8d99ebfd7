"""Atomic file writes: every output of the package is written beside its target, then renamed into place.

A reader (or a resumed run) never sees half a file under its real name: until the rename, the
output does not exist under that name, and a killed writer leaves only a hidden temporary
``.<name>.<random><suffix>`` beside it (``.tmp`` unless the writer needs the real extension; the
builder deletes ``.*.tmp`` leftovers). The rename is ``os.replace``, atomic on POSIX and Windows
within one folder. ``sync=True`` fsyncs the file before the rename, for the files whose presence
marks work as done (shards, metadata, run state), so that a power loss cannot leave them empty.

``read_json`` is the reading side for the package's own JSON files: a missing or broken file
raises an error that names it and says what would have made it.

Standard library only: ``export.compile_worker`` imports this module in the nncase child process.
"""
import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from mobilefacenet_k210.errors import FileFormatError

def _create_temp(path: Path, suffix: str) -> Path:
    """Create (exclusively) and close an empty temporary file beside ``path``.

    Made with ``os.open(..., 0o666)`` rather than ``mkstemp`` so that the renamed file gets the
    permissions a plain ``open`` would give it (the umask's), not ``mkstemp``'s 0600.
    """
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: Union[str, Path], suffix: Optional[str] = None, sync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success it is renamed to ``path``.

    The parent folder is created. If the block raises, the temporary file is removed and ``path``
    is left as it was (absent, or its previous content). ``suffix`` ends the temporary name (give
    the target's extension to writers that pick a format by it: ``savefig``, Keras ``save``);
    default ``.tmp``. ``sync``: fsync the file before the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path, ".tmp" if suffix is None else suffix)
    try:
        yield tmp
        if sync:
            _fsync(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def write_bytes(path: Union[str, Path], data: bytes, sync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; return ``path`` as a ``Path``."""
    with atomic_path(path, sync=sync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: Union[str, Path], text: str, sync: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return ``path`` as a ``Path``."""
    return write_bytes(path, text.encode("utf-8"), sync=sync)


def write_json(path: Union[str, Path], data: Any, sync: bool = True) -> Path:
    """Write ``data`` as JSON (indent 2, sorted keys, UTF-8 unescaped, trailing newline) atomically.

    fsynced by default: JSON files here mostly record that work is done (metadata, run state, steps).
    """
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return write_text(path, text, sync=sync)


def save_figure(fig: Any, path: Union[str, Path], **savefig_kwargs: Any) -> Path:
    """Save a matplotlib figure to ``path`` atomically (format from its extension), then close it.

    The figure is closed even if saving fails (pyplot keeps every open figure alive otherwise).
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path, suffix=path.suffix) as tmp:
            fig.savefig(tmp, **savefig_kwargs)
    finally:
        plt.close(fig)
    return path


def read_json(path: Union[str, Path], missing: str, error: type = FileFormatError) -> Any:
    """Parse the JSON file ``path``; a missing or malformed file raises ``error`` naming it.

    ``missing`` is said of a missing file, e.g. "no such gallery file (make one with `mfk210 enroll`)".
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {missing}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
