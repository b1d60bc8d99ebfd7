"""``mfk210 add-teacher``: copy a shard folder, adding each record's teacher embeddings (crop and mirror).

The teacher runs once per image here rather than once per epoch in training. The new folder is built
in a hidden ``.NEW.partial`` folder beside NEW, one shard at a time (each written atomically and
recorded in a state file, so a rerun after a kill skips finished shards), and renamed to NEW only
when complete: NEW never exists half-made. The source folder is only read.
"""
import shutil
from pathlib import Path
from typing import Any, Dict, Iterator, List, Union

import numpy as np

from mobilefacenet_k210 import atomic, folder_lock
from mobilefacenet_k210.data import tfrecord
from mobilefacenet_k210.runtime.contract import TeacherError
from mobilefacenet_k210.teacher.loader import Teacher, load_teacher

STATE_FILE = "add_teacher_state.json"


def partial_dir(out: Union[str, Path]) -> Path:
    """The hidden folder beside ``out`` where it is built: ``.NAME.partial``."""
    out = Path(out)
    return out.with_name(f".{out.name}.partial")


def _decode(jpegs: List[bytes]) -> np.ndarray:
    import tensorflow as tf

    return np.stack([tf.io.decode_jpeg(j, channels=3).numpy() for j in jpegs])


def _with_teacher(path: Path, teacher: Teacher, batch_size: int, bar: Any) -> Iterator[bytes]:
    """The records of shard ``path`` re-encoded with the teacher's embeddings, in the same order."""
    def flush(batch: List[Dict[str, Any]]) -> Iterator[bytes]:
        emb, mirror = teacher.embed_records(_decode([r[tfrecord.IMAGE] for r in batch]),
                                            [r[tfrecord.SOURCE] for r in batch],
                                            [r[tfrecord.AUGMENTATION] for r in batch])
        for i, r in enumerate(batch):
            yield tfrecord.encode_example(r[tfrecord.IMAGE], r[tfrecord.LABEL], r[tfrecord.IDENTITY],
                                          r[tfrecord.SOURCE], r[tfrecord.AUGMENTATION], emb[i],
                                          None if mirror is None else mirror[i])
        bar.update(len(batch))

    batch: List[Dict[str, Any]] = []
    for rec in tfrecord.read_examples(path):
        batch.append(rec)
        if len(batch) == batch_size:
            yield from flush(batch)
            batch = []
    if batch:
        yield from flush(batch)


def add_teacher(shards_dir: Union[str, Path], teacher: Union[str, Path, Teacher], out: Union[str, Path],
                batch_size: int = 32, progress: bool = True, trust_model_code: bool = False) -> Dict[str, Any]:
    """Write ``out``: the shards of ``shards_dir`` with teacher embeddings; return its metadata.

    ``teacher`` is a :class:`Teacher` or what :func:`load_teacher` takes. Resumable: rerun after a
    kill and finished shards are kept (if the source metadata and the teacher are the same). A second
    writer of ``out`` meanwhile is refused (:mod:`folder_lock`).
    """
    src, out = Path(shards_dir), Path(out)
    if out.resolve() == src.resolve():
        raise TeacherError(f"{out}: --out is the shard folder itself; write the shards with teacher "
                           f"embeddings to a new folder")
    with folder_lock.hold(out):  # NEW's lock, beside it, covers .NEW.partial and the rename
        return _add_teacher(src, teacher, out, batch_size, progress, trust_model_code)


def _add_teacher(src: Path, teacher: Union[str, Path, Teacher], out: Path, batch_size: int,
                 progress: bool, trust_model_code: bool) -> Dict[str, Any]:
    """:func:`add_teacher`'s work, under ``out``'s lock."""
    from tqdm import tqdm

    if out.exists():
        raise TeacherError(f"{out}: already exists; remove it or choose another --out")
    meta = tfrecord.load_metadata(src)
    if not isinstance(teacher, Teacher):
        teacher = load_teacher(teacher, trust_model_code)
    work = partial_dir(out)
    state_path = work / STATE_FILE
    key = {"source_metadata": tfrecord.sha256_file(src / tfrecord.METADATA_FILE), "teacher": teacher.info()}
    state = atomic.read_json(state_path, "no state") if state_path.is_file() else {}
    if {k: state.get(k) for k in key} != key:
        shutil.rmtree(work, ignore_errors=True)
        state = {**key, "done": {}}
    work.mkdir(parents=True, exist_ok=True)
    todo = [s for s in meta["shards"] if not (s["file"] in state["done"] and (work / s["file"]).is_file())]
    with tqdm(total=sum(int(s.get("records", 0)) for s in todo), desc=f"add-teacher {teacher.name}",
              unit="img", disable=not progress) as bar:
        for shard in todo:
            entry = tfrecord.write_shard(work / shard["file"], _with_teacher(src / shard["file"], teacher,
                                                                             batch_size, bar))
            state["done"][shard["file"]] = entry
            atomic.write_json(state_path, state)
    shard_names = {s["file"] for s in meta["shards"]}
    for f in sorted(src.iterdir()):
        if f.is_file() and not f.name.startswith(".") and f.name not in shard_names | {tfrecord.METADATA_FILE}:
            shutil.copy2(f, work / f.name)
    new_meta = {**meta, tfrecord.TEACHER_META: teacher.info(),
                "shards": [{**s, **state["done"][s["file"]]} for s in meta["shards"]]}
    atomic.write_json(work / tfrecord.METADATA_FILE, new_meta)
    state_path.unlink()
    work.rename(out)
    return new_meta
