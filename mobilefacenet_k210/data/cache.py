"""The builder's resumable per-identity cache, shared by both runners.

Each finished identity is kept under ``OUT_DIR/.work/<config key>/``: one ``.npz`` of records per
split (plain arrays read with ``allow_pickle=False``: reading the cache never runs code) and then a
JSON summary, whose presence marks the identity done. A runner killed at any moment and rerun with
the same config skips the cached identities; the writer then reads the records from here.
A build with a teacher also keeps each identity's teacher embeddings (crop and mirror), keyed by the
teacher's sha256, so a rerun embeds only the identities it has not embedded with that teacher.
"""
import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from mobilefacenet_k210 import atomic
from mobilefacenet_k210 import config as config_lib
from mobilefacenet_k210.config import BuildConfig
from mobilefacenet_k210.data import tfrecord
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
    for stale in work.glob(f"{stem}.*.teacher-*.npz"):  # embeddings of the records this identity had before
        stale.unlink()
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
