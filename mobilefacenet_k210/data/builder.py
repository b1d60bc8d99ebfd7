"""The dataset builder: folders of raw photos -> aligned, balanced, sharded TFRecords.

The work is split into pure functions that both runners share:

* scan (:func:`scan_folder`, :func:`scan_lst`): the input as sorted :class:`IdentityTask` lists, and
  the entries that are not photos of an identity (hidden, nested, empty, stray) as rejections;
* per photo (:func:`align_photos`): decode, detect, select, align (batched MTCNN, one detector per
  process, reused);
* per identity (:func:`identity_records`): policy, augmentation, split, JPEG encoding;
* global (:func:`write_outputs`): labels, shards, ``metadata.json``, ``labels.txt``, ``rejected.csv``.

The local runner (:func:`build`) runs the per-identity work in ``workers`` processes and caches each
identity's result atomically under ``OUT_DIR/.work/<config hash>/`` (``.npz`` arrays read with
``allow_pickle=False`` plus a JSON summary: reading the cache never runs code): a build killed at
any moment and rerun with the same command skips the cached identities and ends with the same
shards, byte for byte, as an uninterrupted run. ``--runner beam`` (``data/beam_runner.py``) runs
the same functions as an Apache Beam pipeline that fills the same cache; both runners then write
the shards with :func:`write_outputs`.

OUT_DIR is checked first (:func:`plan_output`): it may not be, contain or lie inside an input, and
a dataset built there from another input is replaced only with ``overwrite``, by building beside it
and swapping the folders at the end, so the old dataset stays whole until the new one is.
"""
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from mobilefacenet_k210 import atomic
from mobilefacenet_k210 import config as config_lib
from mobilefacenet_k210.config import BuildConfig
from mobilefacenet_k210.data import policy as policy_lib
from mobilefacenet_k210.data import tfrecord
from mobilefacenet_k210.data.augment import augment, stable_seed
from mobilefacenet_k210.preprocessing import INPUT_SIZE
from mobilefacenet_k210.errors import Mfk210Error

WORK_DIR = ".work"
PROPERTY_FILE = "property"
CONTACT_SHEET = "contact_sheet.png"
# Config fields that do not change the records: they stay out of the cache key.
NOT_IN_KEY = ("runner", "workers", "keep_work", "beam_options")


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


# --- config ----------------------------------------------------------------------------------------
def load_build_config(path: Optional[Union[str, Path]] = None, overrides: Optional[List[str]] = None,
                      **flags: Any) -> BuildConfig:
    """Defaults, then the config file, then the CLI's own flags (``None`` = not given), then ``--set``;
    validated. ``policy`` may be given as a preset name (``seed``/``none``) in the file or as a flag.
    """
    return config_lib.load(BuildConfig, path, overrides, flags=flags, presets={"policy": policy_lib.preset})


def config_key(cfg: BuildConfig) -> str:
    """Hash of everything in the config that changes the records (names the work folder)."""
    data = {k: v for k, v in config_lib.to_dict(cfg).items() if k not in NOT_IN_KEY}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()[:16]


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


# --- per photo -------------------------------------------------------------------------------------
def make_aligner(cfg: BuildConfig) -> Any:
    """The MTCNN :class:`FaceAligner` this config asks for (one per process; reuse it)."""
    from mobilefacenet_k210.data.align import FaceAligner

    return FaceAligner(min_face_size=cfg.min_face_size, select=cfg.select, detect_max_side=cfg.detect_max_side,
                       pad_multiple=cfg.detect_pad_multiple, batch_size=cfg.detect_batch_size)


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


# --- the resumable cache ---------------------------------------------------------------------------
def _stem(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8")).hexdigest()[:24]


def _pack(records: Sequence[Tuple[str, str, str, bytes]]) -> bytes:
    """Records of one split as ``.npz`` bytes: plain arrays only, so loading them cannot run code."""
    jpegs = [r[3] for r in records]
    buf = io.BytesIO()
    np.savez(buf, source=np.array([r[1] for r in records], dtype=str), tag=np.array([r[2] for r in records], dtype=str),
             size=np.array([len(j) for j in jpegs], np.int64), jpeg=np.frombuffer(b"".join(jpegs), np.uint8))
    return buf.getvalue()


def cache_save(work: Path, task: IdentityTask, out: IdentityOutput) -> Dict[str, Any]:
    """Records (one file per split, so writing a split reads only its own) first, then the summary:
    the summary's presence marks the identity done."""
    stem = _stem(task.name)
    sizes = {}
    for split in tfrecord.SPLITS:
        data = _pack([r for r in out.records if r[0] == split])
        # no fsync here (6 ms each): a kill cannot tear a renamed file, and after a power loss the
        # sizes recorded in the fsynced summary no longer match, so the identity is redone
        atomic.write_bytes(work / f"{stem}.{split}.npz", data, sync=False)
        sizes[split] = len(data)
    summary = {**out.summary(), "fingerprint": task.fingerprint(), "cache_bytes": sizes}
    atomic.write_json(work / f"{stem}.json", summary)
    return summary


def cache_load_summary(work: Path, task: IdentityTask) -> Optional[Dict[str, Any]]:
    """The cached summary of a finished identity, or ``None`` (missing, stale or damaged)."""
    stem = _stem(task.name)
    js = work / f"{stem}.json"
    if not js.is_file():
        return None
    try:
        summary = json.loads(js.read_text(encoding="utf-8"))
    except ValueError:
        return None
    if not isinstance(summary, dict) or summary.get("name") != task.name or \
            summary.get("fingerprint") != task.fingerprint():
        return None
    for split in tfrecord.SPLITS:
        npz = work / f"{stem}.{split}.npz"
        if not npz.is_file() or npz.stat().st_size != summary.get("cache_bytes", {}).get(split):
            return None
    return summary


def cache_load_records(work: Path, name: str, split: str) -> List[Tuple[str, str, str, bytes]]:
    """The cached records of one identity and split. A damaged entry is dropped (so that a rerun
    redoes that identity) and raises :class:`BuildError`."""
    path = work / f"{_stem(name)}.{split}.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            sources, tags, sizes, blob = z["source"].tolist(), z["tag"].tolist(), z["size"], z["jpeg"].tobytes()
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        (work / f"{_stem(name)}.json").unlink(missing_ok=True)
        raise BuildError(f"{path}: damaged cache entry of identity {name!r} ({exc}), now removed; rerun the same "
                         f"command to redo that identity") from None
    ends = np.cumsum(sizes).tolist()
    starts = [0] + ends[:-1]
    return [(split, src, tag, blob[a:b]) for src, tag, a, b in zip(sources, tags, starts, ends)]


# --- workers ---------------------------------------------------------------------------------------
_WORKER: Dict[str, Any] = {}


def _worker_init(cfg_dict: Dict[str, Any], work: str, threads: int, needs_detector: bool,
                 barrier: Any = None) -> None:
    """Runs once per worker process: quiet TF, limit its threads, build and warm the one MTCNN detector.

    Never raises (a raising initializer makes ``multiprocessing.Pool`` respawn workers forever): the
    error is kept and raised by the first task instead. Waits on ``barrier`` so that timing starts
    when every worker is ready.
    """
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import cv2

        from mobilefacenet_k210.data.align import configure_threads

        cv2.setNumThreads(threads)
        if needs_detector:  # aligned input never touches TensorFlow: do not pay its import
            configure_threads(threads)
        cfg = config_lib.from_dict(BuildConfig, cfg_dict)
        aligner = make_aligner(cfg) if needs_detector else None
        if aligner is not None:  # the first MTCNN call initializes TF kernels: do it before timing starts
            aligner.detect([np.zeros((INPUT_SIZE, INPUT_SIZE, 3), np.uint8)])
        _WORKER.update(cfg=cfg, work=Path(work), aligner=aligner, error=None)
    except Exception as exc:
        _WORKER["error"] = f"worker start failed: {type(exc).__name__}: {exc}"
    if barrier is not None:
        barrier.wait()


def _worker_run(task: IdentityTask) -> Dict[str, Any]:
    if _WORKER.get("error"):
        raise BuildError(_WORKER["error"])
    cpu = time.process_time()
    out = process_identity(task, _WORKER["cfg"], _WORKER["aligner"])
    summary = cache_save(_WORKER["work"], task, out)
    summary["cpu_seconds"] = time.process_time() - cpu  # this run's cost, not cached
    return summary


# --- global outputs --------------------------------------------------------------------------------
def write_rejected(path: Path, rows: Iterable[Tuple[str, str]]) -> None:
    """``rejected.csv``: one ``path,reason`` row per input entry that gave no face."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "reason"])
    for row in rows:
        writer.writerow(row)
    atomic.write_text(path, buf.getvalue(), sync=True)


def write_labels(path: Path, names: Sequence[str]) -> None:
    """``labels.txt``: line ``i`` is the identity name of label ``i``."""
    atomic.write_text(path, "".join(f"{n}\n" for n in names), sync=True)


def write_property(path: Path, num_classes: int) -> None:
    """InsightFace's ``property`` file: ``num_classes,112,112``."""
    atomic.write_text(path, f"{num_classes},{INPUT_SIZE},{INPUT_SIZE}\n", sync=True)


def shard_counts(total: int, per_shard: int) -> List[int]:
    """Near-equal contiguous shard sizes for ``total`` records, none over ``per_shard``."""
    if total <= 0:
        return []
    n = math.ceil(total / per_shard)
    base, extra = divmod(total, n)
    return [base + (1 if i < extra else 0) for i in range(n)]


def shard_order(names: Sequence[str], seed: int) -> List[str]:
    """Identities in a seeded random order, so each shard mixes identities from the whole set."""
    ordered = sorted(names)
    perm = np.random.default_rng(stable_seed(seed, "shard-order")).permutation(len(ordered))
    return [ordered[i] for i in perm]


def build_metadata(cfg: BuildConfig, names: Sequence[str], class_counts: Dict[int, Dict[str, int]],
                   shards: List[Dict[str, Any]], summaries: Sequence[Dict[str, Any]], rejected_count: int,
                   input_path: str) -> Dict[str, Any]:
    """The ``metadata.json`` contents (keys of :func:`tfrecord.load_metadata` plus build details)."""
    from mobilefacenet_k210 import __version__

    splits = {s: sum(sh["records"] for sh in shards if sh["split"] == s) for s in tfrecord.SPLITS}
    faces = {s["name"]: s["faces"] for s in summaries}
    aug: Dict[str, int] = {}
    for s in summaries:
        for tag, n in s["augmentation"].items():
            aug[tag] = aug.get(tag, 0) + n
    return {
        "schema_version": tfrecord.SCHEMA_VERSION,
        "num_classes": len(names),
        "class_counts": {str(i): class_counts[i]["train"] for i in range(len(names))},
        "class_counts_val": {str(i): class_counts[i]["val"] for i in range(len(names))},
        "class_faces": {str(i): faces[n] for i, n in enumerate(names)},
        "splits": splits,
        "total_records": sum(splits.values()),
        "augmentation": dict(sorted(aug.items())),
        "shards": shards,
        "identities": {"input": len(summaries), "kept": len(names),
                       "dropped": sum(1 for s in summaries if s["dropped"])},
        "rejected": rejected_count,
        "policy": config_lib.to_dict(cfg.policy),
        "build_config": config_lib.to_dict(cfg),
        "config_key": config_key(cfg),
        "input": input_path,
        "package_version": __version__,
        "image_size": [INPUT_SIZE, INPUT_SIZE, 3],
        "files": {"labels": tfrecord.LABELS_FILE, "rejected": tfrecord.REJECTED_FILE, "property": PROPERTY_FILE,
                  "contact_sheet": CONTACT_SHEET},
    }


def kept_names(summaries: Sequence[Dict[str, Any]]) -> List[str]:
    """Identities that survive the policy, in input order (folder names sorted, or ``.lst`` labels
    ascending): their position is their label."""
    return [s["name"] for s in summaries if not s["dropped"] and sum(s["records"].values()) > 0]


def all_rejected(scan_rejected: Sequence[Tuple[str, str]], summaries: Sequence[Dict[str, Any]],
                 cfg: BuildConfig) -> List[Tuple[str, str]]:
    """Scan rejections, per-photo rejections and identities dropped by the policy, sorted by path."""
    rows = list(scan_rejected)
    for s in summaries:
        rows.extend(tuple(r) for r in s["rejected"])
        if s["dropped"]:
            rows.append((s["name"], f"identity dropped by policy '{cfg.policy.name}' ({s['faces']} aligned faces)"))
    return sorted(rows)


def write_outputs(out_dir: Path, work: Path, cfg: BuildConfig, summaries: Sequence[Dict[str, Any]],
                  scan_rejected: Sequence[Tuple[str, str]], input_path: str) -> Dict[str, Any]:
    """Labels, shards (each written atomically), labels.txt, property, rejected.csv, then metadata.json
    last: a folder with metadata is complete. Returns the metadata."""
    from tqdm import tqdm

    names = kept_names(summaries)
    rejected = all_rejected(scan_rejected, summaries, cfg)
    write_rejected(out_dir / tfrecord.REJECTED_FILE, rejected)
    if not names:
        raise BuildError(f"nothing left after the policy '{cfg.policy.name}': {len(summaries)} identities, none kept "
                         f"(see {out_dir / tfrecord.REJECTED_FILE}). For a small set use --policy none, or lower the "
                         f"thresholds with --set policy.rules...")
    label = {n: i for i, n in enumerate(names)}
    by_name = {s["name"]: s for s in summaries}
    order = shard_order(names, cfg.seed)
    class_counts = {label[n]: dict(by_name[n]["records"]) for n in names}
    shards: List[Dict[str, Any]] = []
    written = set()
    for split in tfrecord.SPLITS:
        sizes = shard_counts(sum(by_name[n]["records"][split] for n in names), cfg.records_per_shard)
        if not sizes:
            continue

        def stream(split: str = split) -> Iterator[bytes]:
            for n in order:
                for _, source, tag, jpeg in cache_load_records(work, n, split):
                    yield tfrecord.encode_example(jpeg, label[n], n, source, tag)

        records = stream()
        bar = tqdm(total=sum(sizes), desc=f"write {split}", unit="rec", leave=False)
        for i, size in enumerate(sizes):
            name = tfrecord.shard_name(split, i, len(sizes))
            entry = tfrecord.write_shard(out_dir / name, _take(records, size, bar))
            if entry["records"] != size:
                raise RuntimeError(f"{name}: wrote {entry['records']} records, expected {size}")
            shards.append({**entry, "split": split})
            written.add(name)
        bar.close()
    for old in out_dir.glob("*.tfrecord"):
        if old.name not in written and old.name.split("-")[0] in tfrecord.SPLITS:
            old.unlink()
    write_labels(out_dir / tfrecord.LABELS_FILE, names)
    write_property(out_dir / PROPERTY_FILE, len(names))
    write_contact_sheet(out_dir, work, names, cfg)
    meta = build_metadata(cfg, names, class_counts, shards, summaries, len(rejected), input_path)
    atomic.write_json(out_dir / tfrecord.METADATA_FILE, meta)
    return meta


def write_contact_sheet(out_dir: Path, work: Path, names: Sequence[str], cfg: BuildConfig,
                        identities: int = 8, per_identity: int = 8) -> Path:
    """``contact_sheet.png``: seeded random crops of seeded random identities, captioned with their
    tag and split, drawn from the cache (no pass over the shards; ``mfk210 inspect`` draws others)."""
    from mobilefacenet_k210.data.inspect import contact_sheet

    rng = np.random.default_rng(stable_seed(cfg.seed, "contact-sheet"))
    picked = sorted(rng.choice(len(names), size=min(identities, len(names)), replace=False).tolist())
    samples = {}
    for label in picked:
        recs = [r for split in tfrecord.SPLITS for r in cache_load_records(work, names[label], split)]
        chosen = rng.choice(len(recs), size=min(per_identity, len(recs)), replace=False)
        samples[names[label]] = [{"jpeg": recs[i][3], "tag": recs[i][2], "split": recs[i][0], "label": label}
                                 for i in sorted(chosen.tolist())]
    title = f"{out_dir.name}: {len(names)} classes, policy {cfg.policy.name}"
    return contact_sheet(samples, out_dir / CONTACT_SHEET, title)


def _take(records: Iterator[bytes], size: int, bar: Any) -> Iterator[bytes]:
    """The next ``size`` records of a stream, ticking the progress bar."""
    for _, rec in zip(range(size), records):
        bar.update(1)
        yield rec


def remove_partial_files(out_dir: Path) -> None:
    """Delete what a killed run leaves behind, never valid output: hidden temporary files
    (``.<name>.<random>.tmp``, also in the cache folders, and the contact sheet's ``.png`` one) and
    the ``beam-temp-*`` folders of Beam's file sinks."""
    patterns = (".*.tmp", f".{CONTACT_SHEET}.*.png", f"{WORK_DIR}/*/.*.tmp", "beam-temp-*", f"{WORK_DIR}/*/beam-temp-*")
    for pattern in patterns:
        for path in out_dir.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.is_file():
                path.unlink()


def prepare_out_dir(out_dir: Path) -> None:
    """Create OUT_DIR and prove it is writable, or stop with what to do."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=out_dir)
        os.close(fd)
        os.remove(tmp)
    except OSError as exc:
        raise BuildError(f"{out_dir}: cannot write the output folder ({exc.strerror or exc}); "
                         f"choose another OUT_DIR or fix its permissions") from None


def _beside(out_dir: Path, what: str) -> Path:
    return out_dir.with_name(f".{out_dir.name}.{what}")


def plan_output(out_dir: Union[str, Path], inputs: Sequence[Union[str, Path]], overwrite: bool,
                reusable: Callable[[Dict[str, Any]], bool], error: Optional[type] = None) -> Path:
    """The folder to write into: OUT_DIR, or with ``overwrite`` a staging folder beside it when OUT_DIR
    already holds a dataset that ``reusable(metadata)`` refuses (:func:`finish_output` swaps it in).

    Refuses (``error``, default :class:`BuildError`) an OUT_DIR that is, contains or lies inside an
    input. First completes or undoes a swap that a kill interrupted.
    """
    error = error or BuildError
    out_dir = Path(out_dir)
    out = out_dir.resolve()
    for inp in inputs:
        src = Path(inp).resolve()
        if out == src or src in out.parents or out in src.parents:
            rel = "is" if out == src else ("lies inside" if src in out.parents else "contains")
            raise error(f"{out_dir}: the output folder {rel} the input {inp}; choose an OUT_DIR apart from the input")
    staging, old = _beside(out_dir, "overwrite"), _beside(out_dir, "old")
    if old.is_dir() and not out_dir.exists():  # killed between the two renames of finish_output
        os.replace(staging if (staging / tfrecord.METADATA_FILE).is_file() else old, out_dir)
    shutil.rmtree(old, ignore_errors=True)
    meta_path = out_dir / tfrecord.METADATA_FILE
    if not meta_path.is_file():
        return out_dir
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        ok = isinstance(meta, dict) and reusable(meta)
    except (ValueError, UnicodeDecodeError):
        ok = False
    if ok:
        return out_dir
    if not overwrite:
        raise error(f"{out_dir}: already holds a dataset ({meta_path.name}) made from other input; give --overwrite "
                    f"to replace it (it stays whole until the new one is complete) or choose another OUT_DIR")
    return staging


def finish_output(staging: Path, out_dir: Path) -> None:
    """Swap a complete staging folder in place of OUT_DIR, then delete the old dataset."""
    if staging == out_dir:
        return
    old = _beside(out_dir, "old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out_dir, old)
    os.replace(staging, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def same_input(raw_dir: Union[str, Path]) -> Callable[[Dict[str, Any]], bool]:
    """``reusable`` of :func:`plan_output` for a build: the dataset was built from this input."""
    here = Path(raw_dir).resolve()
    return lambda meta: isinstance(meta.get("input"), str) and Path(meta["input"]).resolve() == here


def open_work(out_dir: Path, cfg: BuildConfig, tasks: Sequence[IdentityTask]
              ) -> Tuple[Path, Dict[str, Dict[str, Any]], List[IdentityTask]]:
    """Ready OUT_DIR for a (re)run, shared by both runners: writable, marked incomplete, leftovers of a
    killed run removed, the cache folder made. Returns it, the cached summaries and the tasks to do."""
    prepare_out_dir(out_dir)
    meta_path = out_dir / tfrecord.METADATA_FILE
    if meta_path.exists():
        meta_path.unlink()  # the folder is incomplete until the new metadata is written
    remove_partial_files(out_dir)
    work = out_dir / WORK_DIR / config_key(cfg)
    work.mkdir(parents=True, exist_ok=True)
    atomic.write_json(work / "config.json", config_lib.to_dict(cfg))
    summaries: Dict[str, Dict[str, Any]] = {}
    todo: List[IdentityTask] = []
    for task in tasks:
        cached = cache_load_summary(work, task)
        if cached is not None:
            summaries[task.name] = cached
        else:
            todo.append(task)
    return work, summaries, todo


# --- the local runner ------------------------------------------------------------------------------
def run_summary(runner: str, meta: Dict[str, Any], ordered: List[Dict[str, Any]], out_dir: Path,
                seconds: float, photos: int, photos_processed: int, resumed: int) -> Dict[str, Any]:
    """The summary keys both runners report, read from the metadata they wrote and the identity summaries."""
    return {
        "runner": runner,
        "photos": photos,
        "photos_processed": photos_processed,
        "faces": sum(s["faces"] for s in ordered),
        "rejected": meta["rejected"],
        "identities": meta["identities"],
        "num_classes": meta["num_classes"],
        "records": meta["splits"],
        "augmentation": meta["augmentation"],
        "shards": len(meta["shards"]),
        "resumed_identities": resumed,
        "seconds": round(seconds, 3),
        "out_dir": str(out_dir),
    }


def build(raw_dir: Union[str, Path], out_dir: Union[str, Path], config: Optional[BuildConfig] = None,
          progress: bool = True, overwrite: bool = False) -> Dict[str, Any]:
    """Build shards from ``raw_dir`` (identity folders or a ``.lst``) into ``out_dir``; returns a summary.

    Summary keys: ``photos``, ``faces``, ``rejected``, ``identities`` (input/kept/dropped),
    ``num_classes``, ``records`` (per split), ``shards``, ``seconds`` (wall, all of it),
    ``align_seconds`` (the per-identity phase after the workers are up), ``images_per_s``
    (photos processed in this run / align_seconds), ``cpu_ms_per_image`` (worker CPU time per photo
    in that phase: with ``align_seconds`` it tells a busy machine from a slow build),
    ``resumed_identities``, ``workers``, ``runner``.

    ``overwrite``: replace a dataset that OUT_DIR holds from another input (see :func:`plan_output`).
    """
    cfg = config or BuildConfig()
    cfg.validate()
    out_dir = Path(out_dir)
    target = plan_output(out_dir, [raw_dir], overwrite, same_input(raw_dir))
    if cfg.runner == "beam":
        from mobilefacenet_k210.data import beam_runner

        summary = beam_runner.build_beam(raw_dir, target, cfg, progress=progress)
    else:
        summary = _build_local(raw_dir, target, cfg, progress)
    finish_output(target, out_dir)
    return {**summary, "out_dir": str(out_dir)}


def scan_input(raw_dir: Union[str, Path], cfg: BuildConfig) -> Tuple[List[IdentityTask], List[Tuple[str, str]]]:
    """:func:`scan`, refusing an input without any identity."""
    tasks, scan_rejected = scan(raw_dir, cfg.aligned)
    if not tasks:
        raise BuildError(f"{raw_dir}: no identity folder with photo files found "
                         f"(expected RAW_DIR/<identity>/<photo>; {len(scan_rejected)} entries rejected)")
    return tasks, scan_rejected


def _build_local(raw_dir: Union[str, Path], out_dir: Path, cfg: BuildConfig, progress: bool) -> Dict[str, Any]:
    """The local runner: per-identity work in processes, cached, then :func:`write_outputs`."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    tasks, scan_rejected = scan_input(raw_dir, cfg)
    work, summaries, todo = open_work(out_dir, cfg, tasks)
    resumed = len(summaries)
    workers = cfg.workers if cfg.workers > 0 else (os.cpu_count() or 1)
    workers = max(1, min(workers, len(todo) or 1))
    needs_detector = any(not p.aligned for t in todo for p in t.photos)
    threads = max(1, (os.cpu_count() or 1) // workers)
    photos_todo = sum(len(t.photos) for t in todo)
    # largest identities first: the pool's last tasks are short, so workers finish together
    todo.sort(key=lambda t: (-len(t.photos), t.name))
    cfg_dict = config_lib.to_dict(cfg)
    t_start = time.perf_counter()
    t_align = t_aligned = t_start
    if todo:
        bar = tqdm(total=photos_todo, desc="align", unit="img", disable=not progress, smoothing=0.1)
        if workers == 1:
            _worker_init(cfg_dict, str(work), threads, needs_detector)
            t_align = time.perf_counter()
            for task in todo:
                summaries[task.name] = _worker_run(task)
                bar.update(len(task.photos))
            t_aligned = time.perf_counter()
        else:
            import multiprocessing as mp
            import threading
            from concurrent.futures import ProcessPoolExecutor, as_completed
            from concurrent.futures.process import BrokenProcessPool

            ctx = mp.get_context("spawn")  # fork after TensorFlow is loaded is unsafe
            barrier = ctx.Barrier(workers + 1, timeout=900)
            sizes = {t.name: len(t.photos) for t in todo}
            # a dead worker (out of memory, killed) raises BrokenProcessPool instead of hanging the run
            pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                       initargs=(cfg_dict, str(work), threads, needs_detector, barrier))
            try:
                futures = [pool.submit(_worker_run, t) for t in todo]
                try:
                    barrier.wait()
                except threading.BrokenBarrierError:
                    raise BuildError(f"the {workers} worker processes did not start within 900 s; "
                                     f"try --workers 1 to see the error") from None
                t_align = time.perf_counter()
                try:
                    for future in as_completed(futures):
                        summary = future.result()
                        summaries[summary["name"]] = summary
                        bar.update(sizes[summary["name"]])
                except BrokenProcessPool:
                    raise BuildError("a worker process died (out of memory or killed); the finished identities "
                                     "are cached: rerun the same command to continue, with fewer --workers if "
                                     "memory is short") from None
                t_aligned = time.perf_counter()
            finally:
                # no waiting: the workers tear TensorFlow down (seconds) while the shards are written
                pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
    cpu_seconds = sum(summaries[t.name].get("cpu_seconds", 0.0) for t in todo)
    ordered = [summaries[t.name] for t in tasks]
    meta = write_outputs(out_dir, work, cfg, ordered, scan_rejected, str(Path(raw_dir).resolve()))
    if not cfg.keep_work:
        shutil.rmtree(out_dir / WORK_DIR, ignore_errors=True)
    seconds = time.perf_counter() - t0
    align_seconds = t_aligned - t_align
    return {
        **run_summary("local", meta, ordered, out_dir, seconds, photos=sum(len(t.photos) for t in tasks),
                      photos_processed=photos_todo, resumed=resumed),
        "workers": workers,
        "startup_seconds": round(t_align - t_start, 3),
        "align_seconds": round(align_seconds, 3),
        "images_per_s": round(photos_todo / align_seconds, 2) if photos_todo and align_seconds > 0 else 0.0,
        "cpu_ms_per_image": round(1000 * cpu_seconds / photos_todo, 2) if photos_todo else 0.0,
    }
