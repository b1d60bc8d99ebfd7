"""The builder's resumable per-identity cache, shared by both runners.

Each finished identity is kept under ``OUT_DIR/.work/<config key>/`` in one ``.entry`` file, written
atomically, whose presence marks the identity done: a JSON header (the identity's summary and its
records' sources, tags and sizes per split) and the JPEGs back to back. Plain data, so reading the
cache never runs code; one small file an identity, since on large sets the file operations (create,
rename, and delete at the end) are what the cache costs. A JPEG kept as it is from an InsightFace
RecordIO set is not copied: the entry holds where it lies in the ``.rec`` (:class:`recordio.RecordRef`),
and reading the entry reads it from there. A runner killed at any moment and rerun with
the same config skips the cached identities; the writer then reads the records from here.
A build with a teacher also keeps each identity's teacher embeddings (crop and mirror), keyed by the
teacher's sha256, so a rerun embeds only the identities it has not embedded with that teacher.
"""
import hashlib
import io
import json
import os
import struct
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from mobilefacenet_k210 import atomic
from mobilefacenet_k210 import config as config_lib
from mobilefacenet_k210.config import BuildConfig
from mobilefacenet_k210.data import tfrecord
from mobilefacenet_k210.data.recordio import RecordIOError, RecordRef, read_payloads
from mobilefacenet_k210.data.stages import BuildError, IdentityOutput, IdentityTask

WORK_DIR = ".work"
# Config fields that do not change the records: they stay out of the cache key.
NOT_IN_KEY = ("runner", "workers", "keep_work", "beam_options")


def config_key(cfg: BuildConfig) -> str:
    """Hash of everything in the config that changes the records (names the work folder)."""
    data = {k: v for k, v in config_lib.to_dict(cfg).items() if k not in NOT_IN_KEY}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def _stem(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8")).hexdigest()[:24]


_MAGIC = b"mfk210 cache 1\n"
_LENGTH = struct.Struct("<Q")
Record = Tuple[str, str, str, Union[bytes, RecordRef]]  # (split, source, tag, JPEG or where it lies in a .rec)


def _entry_path(work: Path, name: str) -> Path:
    return work / f"{_stem(name)}.entry"


def _encode(summary: Dict[str, Any], records: Sequence[Record]) -> bytes:
    """One identity's entry: magic, header length, a JSON header (the summary and, per split, the
    records' sources, tags, sizes and RecordIO references), then the JPEG bytes back to back."""
    splits, blobs = {}, []
    for split in tfrecord.SPLITS:
        mine = [r for r in records if r[0] == split]
        kept = [r[3] for r in mine if not isinstance(r[3], RecordRef)]
        splits[split] = {"source": [r[1] for r in mine], "tag": [r[2] for r in mine],
                         "ref": [list(r[3]) if isinstance(r[3], RecordRef) else None for r in mine],
                         "size": [len(j) for j in kept]}
        blobs.extend(kept)
    header = json.dumps({"summary": summary, "splits": splits}).encode("utf-8")
    return b"".join([_MAGIC, _LENGTH.pack(len(header)), header] + blobs)


def _read_header(path: Path) -> Tuple[Dict[str, Any], int]:
    """The entry's header and where its JPEG bytes start; ValueError when the file is not a whole entry."""
    with open(path, "rb") as f:
        head = f.read(len(_MAGIC) + _LENGTH.size)
        if len(head) != len(_MAGIC) + _LENGTH.size or not head.startswith(_MAGIC):
            raise ValueError("not a cache entry of this package")
        length = _LENGTH.unpack_from(head, len(_MAGIC))[0]
        header = json.loads(f.read(length))
        size = os.fstat(f.fileno()).st_size
    start = len(head) + length
    if start + sum(sum(header["splits"][s]["size"]) for s in tfrecord.SPLITS) != size:
        raise ValueError(f"cut short or padded: {size} bytes")
    return header, start


def cache_save(work: Path, task: IdentityTask, out: IdentityOutput) -> Dict[str, Any]:
    """The identity's records and summary in one file, written atomically: its presence marks the identity done."""
    path = _entry_path(work, task.name)
    if path.exists():  # cached before: drop the embeddings of the records it had then
        _drop_teacher(work, path.stem)
    summary = {**out.summary(), "fingerprint": task.fingerprint()}
    # No fsync (5-7 ms an identity, more than all the rest of a small one): a kill cannot tear a renamed
    # file, and after a power loss an entry that is empty or cut short is no entry (its header gives its
    # size), so the identity is redone.
    atomic.write_bytes(path, _encode(summary, out.records), sync=False)
    return summary


def _drop_teacher(work: Path, stem: str) -> None:
    """Delete an identity's cached teacher embeddings. Only for an identity cached before (its entry is
    there, or was just removed): listing the folder for every new identity would cost O(identities)
    each, quadratic over a build of a large set."""
    for stale in work.glob(f"{stem}.*.teacher-*.npz"):
        stale.unlink()


def cache_load_summary(work: Path, task: IdentityTask) -> Optional[Dict[str, Any]]:
    """The cached summary of a finished identity, or ``None`` (missing, stale or damaged)."""
    path = _entry_path(work, task.name)
    if not path.is_file():
        return None
    try:
        summary = _read_header(path)[0]["summary"]
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
    if not isinstance(summary, dict) or summary.get("name") != task.name or \
            summary.get("fingerprint") != task.fingerprint():
        return None
    return summary


def cache_load_records(work: Path, name: str, split: str) -> List[Tuple[str, str, str, bytes]]:
    """The cached records of one identity and split, RecordIO references read from their ``.rec``. A
    damaged entry is dropped (so that a rerun redoes that identity) and raises :class:`BuildError`."""
    path = _entry_path(work, name)
    try:
        header, start = _read_header(path)
        index = header["splits"][split]
        before = sum(sum(header["splits"][s]["size"]) for s in tfrecord.SPLITS[:tfrecord.SPLITS.index(split)])
        with open(path, "rb") as f:
            f.seek(start + before)
            blob = f.read(sum(index["size"]))
        kept, at = [], 0
        for size in index["size"]:
            kept.append(blob[at:at + size])
            at += size
        refs = [RecordRef(*r) for r in index["ref"] if r is not None]
        resolved = iter(read_payloads(refs)) if refs else iter(())
        kept_iter = iter(kept)
        return [(split, src, tag, next(resolved) if ref is not None else next(kept_iter))
                for src, tag, ref in zip(index["source"], index["tag"], index["ref"])]
    except (OSError, ValueError, KeyError, TypeError, StopIteration, struct.error, RecordIOError) as exc:
        path.unlink(missing_ok=True)
        _drop_teacher(work, path.stem)
        raise BuildError(f"{path}: damaged cache entry of identity {name!r} ({exc}), now removed; rerun the same "
                         f"command to redo that identity") from None


def _teacher_path(work: Path, name: str, split: str, teacher: Any) -> Path:
    return work / f"{_stem(name)}.{split}.teacher-{teacher.info()['sha256'][:16]}.npz"


def cache_teacher(work: Path, name: str, split: str, teacher: Any,
                  records: Sequence[Tuple[str, str, str, bytes]]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """The teacher's embeddings (crop, mirror or None) of one identity's records of one split, computed
    once with ``teacher.embed_records`` and cached atomically beside the records."""
    path = _teacher_path(work, name, split, teacher)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                emb, mirror = z["emb"], (z["mirror"] if "mirror" in z.files else None)
            if len(emb) == len(records):
                return emb, mirror
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # damaged: embedded again below
    if not records:
        return np.zeros((0, int(teacher.info()["dim"])), np.float32), None
    import tensorflow as tf

    crops = np.stack([tf.io.decode_jpeg(r[3], channels=3).numpy() for r in records])
    emb, mirror = teacher.embed_records(crops, [r[1] for r in records], [r[2] for r in records])
    buf = io.BytesIO()
    np.savez(buf, emb=np.asarray(emb, np.float32), **({} if mirror is None else {"mirror": np.asarray(mirror, np.float32)}))
    atomic.write_bytes(path, buf.getvalue(), sync=False)
    return emb, mirror
