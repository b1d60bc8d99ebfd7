"""The builder's first step, shared by both runners: the input as identities of photos, and what is not.

The input is a folder of identity folders (:func:`scan_folder`), an InsightFace ``.lst``
(:func:`scan_lst`), an InsightFace RecordIO set (:func:`scan_recordio`: ``train.rec`` + ``train.idx``,
read by :mod:`.insightface_set`) or, for distillation, a flat folder of photos (:func:`scan_flat`).
Each gives sorted :class:`stages.IdentityTask` lists and the entries that are no photo of an identity
(hidden, nested, empty, stray files; damaged RecordIO records) as rejections. :func:`scan_input`
picks the one the input needs.
"""
import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from mobilefacenet_k210.config import BuildConfig
from mobilefacenet_k210.data import insightface_set
from mobilefacenet_k210.data.stages import BuildError, IdentityTask, Photo


@dataclasses.dataclass
class Scan:
    """The input, scanned: its identities, the entries rejected and, for a RecordIO set, what the set is
    (:meth:`insightface_set.RecordSet.info`: layout, notes, verification sets), kept in ``metadata.json``."""

    tasks: List[IdentityTask]
    rejected: List[Tuple[str, str]]
    source: Dict[str, Any] = dataclasses.field(default_factory=dict)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def scan_folder(raw_dir: Union[str, Path], aligned: bool = False) -> Tuple[List[IdentityTask], List[Tuple[str, str]]]:
    """``RAW_DIR/<identity>/<photo>`` -> identity tasks (sorted by name) and rejected entries.

    Anything else is rejected with a reason: hidden files and folders, nested folders, files
    directly in RAW_DIR, empty identity folders, entries that are not regular files.
    """
    root = Path(raw_dir)
    tasks: List[IdentityTask] = []
    rejected: List[Tuple[str, str]] = []
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise BuildError(f"{root}: cannot list the folder ({exc.strerror or exc}); check its permissions "
                         f"or give a readable folder of identity folders") from None
    for entry in entries:
        path = Path(entry.path)
        if entry.name.startswith("."):
            rejected.append((entry.name, "hidden folder" if entry.is_dir() else "hidden file"))
            continue
        if not entry.is_dir():
            rejected.append((entry.name, "file outside an identity folder (expected RAW_DIR/<identity>/<photo>)"))
            continue
        photos: List[Photo] = []
        try:
            children = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as exc:
            rejected.append((entry.name, f"unreadable folder: {exc.strerror or exc}"))
            continue
        for child in children:
            rel = _rel(Path(child.path), root)
            if child.name.startswith("."):
                rejected.append((rel, "hidden folder" if child.is_dir() else "hidden file"))
            elif child.is_dir():
                rejected.append((rel, "nested folder (photos must be directly in RAW_DIR/<identity>/)"))
            elif child.is_file():
                photos.append(Photo(path=child.path, source=rel, aligned=aligned))
            else:
                rejected.append((rel, "not a regular file (broken link or special file)"))
        if photos:
            tasks.append(IdentityTask(entry.name, photos))
        else:
            rejected.append((entry.name, "empty folder" if not children else "empty folder (no photo files)"))
    return tasks, rejected


def scan_lst(lst_path: Union[str, Path], aligned: Optional[bool] = None) -> Tuple[List[IdentityTask], List[Tuple[str, str]]]:
    """An InsightFace ``.lst`` (``ALIGNED<TAB>PATH<TAB>LABEL`` per line) -> identity tasks.

    The identity of a line is its label; relative paths are relative to the ``.lst`` file's folder;
    the first column (1 = already aligned) decides detection unless ``aligned`` is given.
    """
    lst_path = Path(lst_path)
    base = lst_path.parent
    by_label: Dict[int, List[Photo]] = {}
    rejected: List[Tuple[str, str]] = []
    try:
        text = lst_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BuildError(f"{lst_path}: not UTF-8 text (bad byte at offset {exc.start}); save the .lst as UTF-8 "
                         f"(e.g. iconv -t UTF-8) or rewrite it with `mfk210 lst`") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 3:
            rejected.append((f"{lst_path.name}:{lineno}", "malformed .lst line (expected FLAG<TAB>PATH<TAB>LABEL)"))
            continue
        try:
            flag, label = int(parts[0]), int(float(parts[2]))
        except ValueError:
            rejected.append((f"{lst_path.name}:{lineno}", "malformed .lst line (flag and label must be numbers)"))
            continue
        p = Path(parts[1])
        full = p if p.is_absolute() else base / p
        photo_aligned = bool(flag) if aligned is None else aligned
        by_label.setdefault(label, []).append(Photo(path=str(full), source=parts[1], aligned=photo_aligned))
    tasks = [IdentityTask(str(label), sorted(photos, key=lambda p: p.source))
             for label, photos in sorted(by_label.items())]
    return tasks, rejected


def scan_recordio(src: Union[str, Path], prefix: str = "") -> Scan:
    """An InsightFace RecordIO set (``.rec`` or its folder) -> one identity per class, in class order,
    named ``PREFIX_<class id>`` (default prefix: the folder holding the ``.rec``); each photo is a record
    (``train.rec#KEY``) at its ``.idx`` offset. What the set is, is the scan's ``source``."""
    found = insightface_set.scan(src)
    rec = str(found.rec.resolve())
    prefix = prefix or found.rec.resolve().parent.name
    width = max(6, len(str(max(found.photos))))
    tasks = [IdentityTask(f"{prefix}_{cls:0{width}d}",
                          [Photo(rec, found.source(key), True, offset) for key, offset in keys])
             for cls, keys in sorted(found.photos.items())]
    return Scan(tasks, found.rejected, found.info())


def scan_files(raw: Union[str, Path], aligned: bool = False) -> Tuple[List[IdentityTask], List[Tuple[str, str]]]:
    """A folder of identity folders or a ``.lst`` file; :class:`BuildError` if it does not exist."""
    raw = Path(raw)
    if raw.is_file() and raw.suffix.lower() == ".lst":
        return scan_lst(raw, aligned=True if aligned else None)
    if raw.is_file():
        raise BuildError(f"{raw}: a file, not a folder of identity folders nor an InsightFace .lst file; "
                         f"give RAW_DIR (RAW_DIR/<identity>/<photo>) or a .lst")
    if not raw.is_dir():
        raise BuildError(f"{raw}: no such folder (give a folder of identity folders, or an InsightFace .lst file)")
    return scan_folder(raw, aligned=aligned)


def scan_flat(raw_dir: Union[str, Path], aligned: bool = False) -> Tuple[List[IdentityTask], List[Tuple[str, str]]]:
    """``RAW_DIR/<photo>`` without identities (``--unlabeled``): each photo is an identity of its own,
    named by its file name, for distillation-only training. Folders and hidden files are rejected."""
    root = Path(raw_dir)
    if not root.is_dir():
        raise BuildError(f"{root}: no such folder (--unlabeled takes a flat folder of photos)")
    tasks: List[IdentityTask] = []
    rejected: List[Tuple[str, str]] = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith("."):
            rejected.append((entry.name, "hidden folder" if entry.is_dir() else "hidden file"))
        elif entry.is_dir():
            rejected.append((entry.name, "folder in an --unlabeled input (expected RAW_DIR/<photo>)"))
        elif entry.is_file():
            tasks.append(IdentityTask(entry.name, [Photo(path=entry.path, source=entry.name, aligned=aligned)]))
        else:
            rejected.append((entry.name, "not a regular file (broken link or special file)"))
    return tasks, rejected


def scan_input(raw_dir: Union[str, Path], cfg: BuildConfig) -> Scan:
    """:func:`scan_recordio` for an InsightFace set, else :func:`scan_files` (:func:`scan_flat` with
    ``cfg.unlabeled``), refusing an input without any identity."""
    if insightface_set.locate(raw_dir) is not None:
        return scan_recordio(raw_dir, cfg.identity_prefix)
    tasks, scan_rejected = scan_flat(raw_dir, cfg.aligned) if cfg.unlabeled else scan_files(raw_dir, cfg.aligned)
    if not tasks:
        raise BuildError(f"{raw_dir}: no identity folder with photo files found "
                         f"(expected RAW_DIR/<identity>/<photo>; {len(scan_rejected)} entries rejected)")
    return Scan(tasks, scan_rejected)
