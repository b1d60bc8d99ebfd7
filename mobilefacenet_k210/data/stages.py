"""The builder's pure steps, shared by both runners: scan the input, align a photo, an identity's records.

* scan (:func:`scan_folder`, :func:`scan_lst`, :func:`scan_input`): the input as sorted
  :class:`IdentityTask` lists, and the entries that are not photos of an identity (hidden, nested,
  empty, stray) as rejections;
* per photo (:func:`align_photos`): decode, detect, select, align (batched MTCNN; the caller owns
  the one detector per process and reuses it);
* per identity (:func:`identity_records`): policy, augmentation, split, JPEG encoding.

Each is a function of its arguments only (no process state, no files written), so the local runner
and the Beam runner give the same records for the same input and config.
"""
import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from mobilefacenet_k210.config import BuildConfig
from mobilefacenet_k210.data import policy as policy_lib
from mobilefacenet_k210.data import tfrecord
from mobilefacenet_k210.data.augment import augment, stable_seed
from mobilefacenet_k210.errors import Mfk210Error
from mobilefacenet_k210.preprocessing import INPUT_SIZE


class BuildError(Mfk210Error, RuntimeError):
    """The whole build is impossible (no input, unwritable output, nothing left); says what to do."""


@dataclasses.dataclass(frozen=True)
class Photo:
    """One input file: where to read it, its name in the records, whether it is already aligned."""

    path: str
    source: str
    aligned: bool = False


@dataclasses.dataclass
class IdentityTask:
    """One identity's photos in sorted source order (the unit of caching and of the policy)."""

    name: str
    photos: List[Photo]

    def fingerprint(self) -> str:
        """Changes when a photo of the identity is added, removed, renamed or rewritten."""
        h = hashlib.sha256(self.name.encode("utf-8"))
        for p in self.photos:
            try:
                st = os.stat(p.path)
                stamp = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stamp = "missing"
            h.update(f"\x1f{p.source}\x1e{p.aligned}\x1e{stamp}".encode("utf-8"))
        return h.hexdigest()


@dataclasses.dataclass
class PhotoResult:
    """What became of one photo: its aligned crop, or ``None`` and the reason."""

    source: str
    crop: Optional[np.ndarray]
    reason: str = ""


@dataclasses.dataclass
class IdentityOutput:
    """One identity after the policy: records without labels (labels need every identity first)."""

    name: str
    faces: int
    rule: int
    dropped: bool
    records: List[Tuple[str, str, str, bytes]]  # (split, source, tag, jpeg)
    rejected: List[Tuple[str, str]]

    def summary(self) -> Dict[str, Any]:
        """The small JSON part kept in memory by the local runner."""
        counts: Dict[str, int] = {s: 0 for s in tfrecord.SPLITS}
        tags: Dict[str, int] = {}
        for split, _, tag, _ in self.records:
            counts[split] += 1
            tags[tag] = tags.get(tag, 0) + 1
        return {"name": self.name, "faces": self.faces, "rule": self.rule, "dropped": self.dropped,
                "records": counts, "augmentation": tags, "rejected": [list(r) for r in self.rejected]}


# --- scan ------------------------------------------------------------------------------------------
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


def scan(raw: Union[str, Path], aligned: bool = False) -> Tuple[List[IdentityTask], List[Tuple[str, str]]]:
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


def chunks(photos: Sequence[Photo], size: int) -> List[List[Photo]]:
    """The identity's photos cut into detection batches: a fixed function of the sorted list, so a
    photo is detected in the same batch by every runner (MTCNN's output depends on the batch)."""
    ordered = sorted(photos, key=lambda p: p.source)
    return [list(ordered[i:i + size]) for i in range(0, len(ordered), max(1, size))]


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


def scan_input(raw_dir: Union[str, Path], cfg: BuildConfig) -> Tuple[List[IdentityTask], List[Tuple[str, str]]]:
    """:func:`scan` (:func:`scan_flat` with ``cfg.unlabeled``), refusing an input without any identity."""
    tasks, scan_rejected = scan_flat(raw_dir, cfg.aligned) if cfg.unlabeled else scan(raw_dir, cfg.aligned)
    if not tasks:
        raise BuildError(f"{raw_dir}: no identity folder with photo files found "
                         f"(expected RAW_DIR/<identity>/<photo>; {len(scan_rejected)} entries rejected)")
    return tasks, scan_rejected



# --- per photo -------------------------------------------------------------------------------------
def make_aligner(cfg: BuildConfig) -> Any:
    """The detector+aligner ``cfg.detector`` names (one per process; reuse it)."""
    from mobilefacenet_k210.data import detectors

    return detectors.make_aligner(cfg)


def align_photos(photos: Sequence[Photo], aligner: Any) -> List[PhotoResult]:
    """Decode every photo, then detect and align the raw ones in one batched call.

    Never raises for a bad photo: each failure becomes a :class:`PhotoResult` with its reason.
    ``aligner`` may be ``None`` when every photo is already aligned.
    """
    from mobilefacenet_k210.data.align import ImageError, read_image

    results: List[Optional[PhotoResult]] = [None] * len(photos)
    raw_idx, raw_imgs = [], []
    for i, photo in enumerate(photos):
        try:
            image = read_image(photo.path)
        except ImageError as exc:
            results[i] = PhotoResult(photo.source, None, exc.reason)
            continue
        except Exception as exc:  # a decoder bug on one file must not stop the run
            results[i] = PhotoResult(photo.source, None, f"unreadable: {type(exc).__name__}: {exc}")
            continue
        if photo.aligned:
            if image.shape[:2] != (INPUT_SIZE, INPUT_SIZE):
                results[i] = PhotoResult(photo.source, None, f"not an aligned {INPUT_SIZE}x{INPUT_SIZE} crop "
                                                             f"({image.shape[1]}x{image.shape[0]})")
            else:
                results[i] = PhotoResult(photo.source, image)
        else:
            raw_idx.append(i)
            raw_imgs.append(image)
    if raw_imgs:
        if aligner is None:
            raise ValueError("raw photos need a FaceAligner")
        try:
            aligned = aligner.align(raw_imgs)
        except Exception:  # one odd photo must not sink its batch: retry them one by one
            aligned = [_align_one(aligner, img) for img in raw_imgs]
        for k, i in enumerate(raw_idx):
            results[i] = PhotoResult(photos[i].source, aligned[k].crop, aligned[k].reason)
    return [r for r in results if r is not None]


def _align_one(aligner: Any, image: np.ndarray) -> Any:
    from mobilefacenet_k210.data.align import AlignResult

    try:
        return aligner.align([image])[0]
    except Exception as exc:
        return AlignResult(None, f"face detection failed: {type(exc).__name__}: {exc}")


# --- per identity ----------------------------------------------------------------------------------
def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """RGB uint8 -> JPEG bytes (OpenCV; deterministic for the same pixels and quality)."""
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return buf.tobytes()


def identity_records(name: str, results: Sequence[PhotoResult], cfg: BuildConfig) -> IdentityOutput:
    """Policy, augmentation, split and JPEG encoding of one identity's aligned faces.

    Records come out in a seeded shuffled order, so originals and their copies are not adjacent.
    """
    faces = {r.source: r.crop for r in results if r.crop is not None}
    rejected = sorted((r.source, r.reason) for r in results if r.crop is None)
    rule_index, rule = policy_lib.choose_rule(len(faces), cfg.policy)
    plan = policy_lib.plan_identity(name, list(faces), cfg.policy, cfg.seed)
    if not plan:
        return IdentityOutput(name, len(faces), rule_index, True, [], rejected)
    val = policy_lib.split_sources(name, [s for s, _ in plan], cfg.val_fraction, cfg.seed)
    p = cfg.policy
    records = []
    for source, tag in plan:
        image = augment(faces[source], tag, stable_seed(cfg.seed, name, source, tag), p.opening_kernel,
                        p.gaussian_var, p.saltpepper_amount)
        records.append(("val" if source in val else "train", source, tag, encode_jpeg(image, cfg.jpeg_quality)))
    order = np.random.default_rng(stable_seed(cfg.seed, name, "order")).permutation(len(records))
    return IdentityOutput(name, len(faces), rule_index, False, [records[i] for i in order], rejected)


def process_identity(task: IdentityTask, cfg: BuildConfig, aligner: Any) -> IdentityOutput:
    """All the per-photo and per-identity work of one identity (the local runner's unit)."""
    results: List[PhotoResult] = []
    for chunk in chunks(task.photos, cfg.detect_batch_size):
        results.extend(align_photos(chunk, aligner))
    return identity_records(task.name, results, cfg)

