"""The export's output folder as one set: built in a temporary folder beside it, swapped in at the end.

The files of one export (TFLite, int8 TFLite, kmodel, its compile record, report, figures) belong
together: a kmodel next to the report of another compile is worse than no kmodel. So the export
writes into ``.<OUT>.export-<pid>-<random>`` beside ``OUT`` (same file system, so renames are
cheap and atomic) and only a complete set replaces ``OUT``: ``OUT`` is renamed aside
(``.<OUT>.old-<pid>-<random>``), the new folder renamed to ``OUT``, the old one deleted. A failed
export leaves the previous ``OUT`` whole; a killed one leaves hidden folders that the next export
to the same ``OUT`` removes (or, if it was killed between the two renames, renames back).
"""
import contextlib
import os
import secrets
import shutil
from pathlib import Path
from typing import Collection, Iterator, List

from mobilefacenet_k210.errors import Mfk210Error


class ExportError(Mfk210Error, ValueError):
    """An export request that cannot be carried out as given (output folder, settings, model shape)."""


def check_out_dir(out: Path, own_names: Collection[str]) -> None:
    """Refuse an ``--out`` that cannot take an export, before anything is loaded or written.

    ``OUT`` must be absent, empty, or an earlier export (only names in ``own_names``, which it
    replaces wholly); its nearest existing parent must be a writable folder.
    """
    if out.exists():
        if not out.is_dir():
            raise ExportError(f"{out}: --out names a file; give a folder (a new one, or an earlier export's)")
        foreign = sorted(p.name for p in out.iterdir() if p.name not in own_names)
        if foreign:
            shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
            raise ExportError(f"{out}: holds files that are not an export's ({shown}); the export replaces the "
                              "whole folder, so give a new or empty folder, or an earlier export's")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ExportError(f"{out}: cannot create it: {parent} is a file, not a folder; give --out inside a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"{out}: cannot create it: no write permission on {parent}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(out: Path, kind: str) -> List[Path]:
    """Hidden ``kind`` folders beside ``out`` left by exports whose process is gone."""
    found = []
    for path in out.parent.glob(f".{out.name}.{kind}-*"):
        pid = path.name[len(f".{out.name}.{kind}-"):].split("-")[0]
        if path.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            found.append(path)
    return sorted(found)


def clean_leftovers(out: Path) -> List[Path]:
    """Remove what killed exports to ``out`` left beside it; restore ``out`` if one died mid-swap.

    Returns the folders removed (a folder renamed back to ``out`` is not among them).
    """
    old = _leftovers(out, "old")
    if not out.exists() and len(old) == 1:
        os.replace(old.pop(), out)
    removed = old + _leftovers(out, "export")
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def _hidden(out: Path, kind: str) -> Path:
    return out.with_name(f".{out.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out``; on success it replaces ``out`` whole.

    If the block raises, the temporary folder is deleted and ``out`` is left as it was.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    for path in clean_leftovers(out):
        print(f"  removed {path} (left by an interrupted export)")
    tmp = _hidden(out, "export")
    tmp.mkdir()
    try:
        yield tmp
        old = _hidden(out, "old")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
