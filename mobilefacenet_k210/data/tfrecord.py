"""The shard format: TFRecord feature names, example encoding/parsing, atomic shard files, metadata.

This module is the one contract between the builder (writes), the training pipeline (reads),
``inspect``/``merge`` and the Beam runner. Change a name here and nowhere else; bump
``SCHEMA_VERSION`` when the meaning of a field changes.
"""
import json
import re
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Union

from mobilefacenet_k210 import atomic, folder_lock
from mobilefacenet_k210.errors import Mfk210Error
from mobilefacenet_k210.fileinfo import sha256_file  # noqa: F401  (shard checksums: inspect, pipeline, builder)

SCHEMA_VERSION = 1
METADATA_FILE = "metadata.json"
LABELS_FILE = "labels.txt"
REJECTED_FILE = "rejected.csv"
SPLITS = ("train", "val")

IMAGE = "image/encoded"  # JPEG bytes of the aligned 112x112 RGB crop
LABEL = "image/label"  # int64, 0..num_classes-1
IDENTITY = "image/identity"  # UTF-8 folder name of the identity
SOURCE = "image/source"  # UTF-8 path of the raw photo, relative to the input root
AUGMENTATION = "image/augmentation"  # tag of the copy: original, opening, gaussian, saltpepper, ...
TEACHER = "teacher/embedding"  # optional float list: the teacher's L2-normalised embedding of the crop
TEACHER_MIRROR = "teacher/embedding_mirror"  # optional float list: the same, of the crop's horizontal mirror
TEACHER_META = "teacher"  # metadata.json key: {"name", "sha256", "dim", "mirror"} of the stored teacher


class ShardError(Mfk210Error, ValueError):
    """A shard folder, shard file or metadata file that cannot be used; the message names the file."""


def shard_name(split: str, index: int, count: int) -> str:
    """``train-00003-of-00016.tfrecord``."""
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def encode_example(jpeg: bytes, label: int, identity: str, source: str, augmentation: str,
                   teacher: Any = None, teacher_mirror: Any = None) -> bytes:
    """One serialized ``tf.train.Example`` holding an aligned crop and where it came from.

    ``teacher`` / ``teacher_mirror``: optional (D,) teacher embeddings of the crop and of its mirror.
    Filled in place (a quarter of the time of building ``Feature`` objects and a dict: the shard writer
    calls this once a record) and serialized with sorted keys, so the same record is the same bytes.
    """
    import numpy as np
    import tensorflow as tf

    example = tf.train.Example()
    feature = example.features.feature
    feature[IMAGE].bytes_list.value.append(jpeg)
    feature[LABEL].int64_list.value.append(int(label))
    feature[IDENTITY].bytes_list.value.append(identity.encode("utf-8"))
    feature[SOURCE].bytes_list.value.append(source.encode("utf-8"))
    feature[AUGMENTATION].bytes_list.value.append(augmentation.encode("utf-8"))
    for key, values in ((TEACHER, teacher), (TEACHER_MIRROR, teacher_mirror)):
        if values is not None:
            feature[key].float_list.value.extend(np.asarray(values, np.float32).ravel().tolist())
    return example.SerializeToString(deterministic=True)


def feature_spec(teacher_dim: int = 0, teacher_mirror: bool = False) -> Dict[str, Any]:
    """The ``tf.io.parse_single_example`` spec of a record.

    ``teacher_dim`` > 0 also parses the teacher embedding (and, with ``teacher_mirror``, its mirror's);
    take both from the metadata's :data:`TEACHER_META` entry (:func:`teacher_info`).
    """
    import tensorflow as tf

    spec = {
        IMAGE: tf.io.FixedLenFeature([], tf.string),
        LABEL: tf.io.FixedLenFeature([], tf.int64),
        IDENTITY: tf.io.FixedLenFeature([], tf.string, default_value=""),
        SOURCE: tf.io.FixedLenFeature([], tf.string, default_value=""),
        AUGMENTATION: tf.io.FixedLenFeature([], tf.string, default_value=""),
    }
    if teacher_dim:
        spec[TEACHER] = tf.io.FixedLenFeature([teacher_dim], tf.float32)
        if teacher_mirror:
            spec[TEACHER_MIRROR] = tf.io.FixedLenFeature([teacher_dim], tf.float32)
    return spec


def parse_example(serialized: Any, teacher_dim: int = 0, teacher_mirror: bool = False) -> Dict[str, Any]:
    """Parse one serialized record (a tf string tensor) into a dict of tensors keyed by feature name."""
    import tensorflow as tf

    return tf.io.parse_single_example(serialized, feature_spec(teacher_dim, teacher_mirror))


def decode_record(serialized: bytes) -> Dict[str, Any]:
    """Eager, numpy-side decode of one record (for inspect, merge and tests); teacher features are None if absent."""
    import numpy as np
    import tensorflow as tf

    ex = tf.train.Example.FromString(serialized)
    f = ex.features.feature
    return {
        IMAGE: f[IMAGE].bytes_list.value[0],
        LABEL: int(f[LABEL].int64_list.value[0]),
        IDENTITY: f[IDENTITY].bytes_list.value[0].decode("utf-8"),
        SOURCE: f[SOURCE].bytes_list.value[0].decode("utf-8"),
        AUGMENTATION: f[AUGMENTATION].bytes_list.value[0].decode("utf-8"),
        TEACHER: np.asarray(f[TEACHER].float_list.value, np.float32) if TEACHER in f else None,
        TEACHER_MIRROR: np.asarray(f[TEACHER_MIRROR].float_list.value, np.float32) if TEACHER_MIRROR in f else None,
    }


def read_examples(path: Union[str, Path]) -> Iterator[Dict[str, Any]]:
    """The decoded records of one shard file, in order (:func:`decode_record`).

    A truncated or corrupt file (TensorFlow's ``DataLossError``) or a record that is not one of ours
    raises :class:`ShardError` naming the file and the record.
    """
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    records = iter(tf.data.TFRecordDataset(str(path)))
    index = 0
    while True:
        try:
            raw = next(records)
        except StopIteration:
            return
        except tf.errors.DataLossError as exc:
            why = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", exc.message.splitlines()[0]).strip()  # TF's op decoration
            raise ShardError(f"{path}: truncated or corrupt after {index} records ({why}); "
                             f"rebuild it, or restore it from a copy") from None
        try:
            rec = decode_record(raw.numpy())
        except (DecodeError, IndexError, UnicodeDecodeError) as exc:
            raise ShardError(f"{path}: record {index} is not an example of this package ({type(exc).__name__}); "
                             f"rebuild the shard") from None
        yield rec
        index += 1


def write_shard(path: Union[str, Path], records: Iterable[bytes]) -> Dict[str, Any]:
    """Write serialized records to ``path`` atomically (temp name, fsync, rename).

    A reader never sees a partial shard: until the rename, the shard does not exist under its name.
    Returns the shard's metadata entry (file, records, sha256).
    """
    import tensorflow as tf

    path = Path(path)
    count = 0
    with atomic.atomic_path(path, sync=True) as tmp:
        with tf.io.TFRecordWriter(str(tmp)) as writer:
            for rec in records:
                writer.write(rec)
                count += 1
        digest = sha256_file(tmp)
    return {"file": path.name, "records": count, "sha256": digest}


def load_metadata(shards_dir: Union[str, Path]) -> Dict[str, Any]:
    """Read and validate ``metadata.json``: schema version, classes, and that every listed shard exists.

    The metadata written by the builder holds at least: ``schema_version``, ``num_classes``,
    ``class_counts`` (label -> records in train), ``splits`` (split -> record count), ``shards``
    (list of ``{"file", "split", "records", "sha256"}``), ``policy``, ``build_config``,
    ``package_version``.

    A folder that another process is writing now (it holds the folder's lock, :mod:`folder_lock`) is
    refused as incomplete, whatever its files say at this moment.
    """
    shards_dir = Path(shards_dir)
    writer = folder_lock.live_writer(shards_dir)
    if writer is not None:
        raise ShardError(f"{shards_dir}: incomplete: {writer} is writing it now; wait for it to finish")
    path = shards_dir / METADATA_FILE
    if not path.is_file():
        raise ShardError(f"{path}: no metadata.json in {shards_dir} (build shards with `mfk210 build-tfrecords`)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ShardError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise ShardError(f"{path}: expected a JSON object")
    for key in ("schema_version", "num_classes", "shards"):
        if key not in meta:
            raise ShardError(f"{path}: missing key '{key}'")
    if meta["schema_version"] != SCHEMA_VERSION:
        raise ShardError(f"{path}: schema_version {meta['schema_version']}, this package reads {SCHEMA_VERSION}")
    if not isinstance(meta["num_classes"], int) or meta["num_classes"] < 1:
        raise ShardError(f"{path}: num_classes must be a positive integer, got {meta['num_classes']!r}")
    for shard in meta["shards"]:
        f = shards_dir / shard.get("file", "")
        if not f.is_file():
            raise ShardError(f"{f}: listed in {path} but missing")
    return meta


def shard_files(shards_dir: Union[str, Path], split: str, meta: Dict[str, Any] = None) -> List[Path]:
    """The shard paths of one split, as listed in the metadata (never found by globbing)."""
    meta = meta or load_metadata(shards_dir)
    files = [Path(shards_dir) / s["file"] for s in meta["shards"] if s.get("split") == split]
    return files


def teacher_info(meta: Dict[str, Any], shards_dir: Union[str, Path] = "") -> Dict[str, Any]:
    """The metadata's teacher entry (``name``, ``sha256``, ``dim``, ``mirror``), checked.

    Shards without teacher embeddings raise :class:`ShardError` naming the metadata file and saying
    how to add them (a distillation phase cannot run on them).
    """
    path = Path(shards_dir) / METADATA_FILE
    info = meta.get(TEACHER_META)
    if not info:
        raise ShardError(f"{path}: these shards hold no teacher embeddings; add them with "
                         f"`mfk210 add-teacher {shards_dir or 'SHARDS'} --teacher MODEL --out NEW`")
    if not isinstance(info, dict) or not isinstance(info.get("dim"), int) or info["dim"] < 1:
        raise ShardError(f"{path}: '{TEACHER_META}' must hold name, sha256, dim (a positive integer) and mirror")
    return info
