"""The training input: tf.data over the builder's shards, really shuffled, deterministic under a seed.

Every epoch the shard order is reshuffled (stateless, from ``(seed, epoch)``), ``cycle_length``
shards are read at once by a parallel ``interleave``, records are mixed again in a shuffle buffer,
decoded and augmented in parallel (random flip, optional shift/brightness/contrast, all stateless
from ``(seed, epoch, record index)``), normalized by :func:`preprocessing.normalize` (the one
normalization export compiles into the kmodel), batched with ``drop_remainder`` and prefetched.

The stream of a run is the concatenation of its epochs, each exactly ``steps_per_epoch`` batches,
so that a resumed run can start at ``(start_epoch, start_step)`` and see the very batches the
interrupted run would have seen. A distillation phase (``teacher=(dim, mirror)``) also gets each
record's stored teacher embedding as a third input, the mirror image's when the flip mirrored it. :func:`shuffle_mixing` measures how well batches mix identities
and shards, against the seed project's name-ordered stream through a small buffer.
"""
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import tensorflow as tf

from mobilefacenet_k210 import preprocessing
from mobilefacenet_k210.config import PipelineConfig
from mobilefacenet_k210.data import tfrecord

AUTOTUNE = tf.data.AUTOTUNE
_SEED_MIX = 1_000_003  # spreads (seed, epoch) pairs over distinct stateless seeds


class DataInfo:
    """What training needs to know about a shard folder, read once from its metadata."""

    def __init__(self, data_dir: Union[str, Path]):
        self.data_dir = Path(data_dir)
        self.meta = tfrecord.load_metadata(self.data_dir)
        self.num_classes: int = int(self.meta["num_classes"])
        self.train_files: List[Path] = tfrecord.shard_files(self.data_dir, "train", self.meta)
        self.val_files: List[Path] = tfrecord.shard_files(self.data_dir, "val", self.meta)
        self.train_records: int = _records(self.meta, "train")
        self.val_records: int = _records(self.meta, "val")
        if not self.train_files or self.train_records < 1:
            raise tfrecord.ShardError(f"{self.data_dir / tfrecord.METADATA_FILE}: lists no train records")

    def teacher(self) -> Tuple[int, bool]:
        """``(dim, mirror)`` of the teacher embeddings in the shards; :class:`tfrecord.ShardError` naming
        ``metadata.json`` (and saying how to add them) when the shards hold none."""
        info = tfrecord.teacher_info(self.meta, self.data_dir)
        return int(info["dim"]), bool(info.get("mirror", False))


def _records(meta: Dict[str, Any], split: str) -> int:
    return int(sum(int(s.get("records", 0)) for s in meta["shards"] if s.get("split") == split))


def check_shards(files: List[Path], meta: Optional[Dict[str, Any]] = None, sha256_limit_bytes: int = 1 << 30) -> None:
    """Fail early, naming the file, on a shard that is not a readable TFRecord of our examples.

    Each shard's first record is read and parsed; when the listed shards weigh at most
    ``sha256_limit_bytes`` in all, their sha256 is also checked against ``metadata.json``.
    """
    sums = {s["file"]: s.get("sha256") for s in (meta or {}).get("shards", [])}
    total = sum(f.stat().st_size for f in files)
    for f in files:
        if f.stat().st_size == 0:
            raise tfrecord.ShardError(f"{f}: empty shard file")
        try:
            for rec in tf.data.TFRecordDataset(str(f)).take(1):
                tfrecord.parse_example(rec)
        except (tf.errors.OpError, ValueError) as exc:
            raise tfrecord.ShardError(f"{f}: not a readable shard of this package: "
                                      f"{getattr(exc, 'message', exc)}") from None
        if total <= sha256_limit_bytes and sums.get(f.name) and tfrecord.sha256_file(f) != sums[f.name]:
            raise tfrecord.ShardError(f"{f}: sha256 differs from the one in {tfrecord.METADATA_FILE} "
                                      "(shard changed or truncated after the build)")


def _record_stream(files: List[Path], epoch: int, seed: int, config: PipelineConfig,
                   num_input_pipelines: int = 1, input_index: int = 0) -> tf.data.Dataset:
    """Endless (record, shard index) pairs of one epoch: shard order shuffled, interleaved, buffered."""
    paths = tf.constant([str(f) for f in files])
    order = tf.random.experimental.stateless_shuffle(tf.range(len(files), dtype=tf.int64), seed=[seed, epoch])
    shard_files_by_worker = num_input_pipelines > 1 and len(files) >= num_input_pipelines
    if shard_files_by_worker:
        order = order[input_index::num_input_pipelines]

    def read(i: tf.Tensor) -> tf.data.Dataset:
        return tf.data.TFRecordDataset(tf.gather(paths, i), buffer_size=1 << 20).map(lambda r: (r, i))

    ds = tf.data.Dataset.from_tensor_slices(order).interleave(
        read, cycle_length=max(1, min(config.cycle_length, len(files))), block_length=config.block_length,
        num_parallel_calls=AUTOTUNE, deterministic=True)
    if num_input_pipelines > 1 and not shard_files_by_worker:
        ds = ds.shard(num_input_pipelines, input_index)
    ds = ds.repeat()
    if config.shuffle_buffer > 1:
        ds = ds.shuffle(config.shuffle_buffer, seed=epoch * _SEED_MIX + seed, reshuffle_each_iteration=False)
    return ds


def _label_of(record: tf.Tensor) -> tf.Tensor:
    return tf.io.parse_single_example(record, {tfrecord.LABEL: tf.io.FixedLenFeature([], tf.int64)})[tfrecord.LABEL]


def _record_batches(files: List[Path], epoch: int, seed: int, config: PipelineConfig, batch_size: int,
                    steps: int, pk: Optional[Tuple[int, int]], num_input_pipelines: int,
                    input_index: int) -> tf.data.Dataset:
    """``steps`` batches of serialized records of one epoch; P x K identity groups when ``pk`` is given."""
    ds = _record_stream(files, epoch, seed, config, num_input_pipelines, input_index).map(lambda r, i: r)
    if pk is None:
        return ds.batch(batch_size, drop_remainder=True).take(steps)
    p, k = pk
    ds = ds.map(lambda r: (r, _label_of(r)), num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.group_by_window(key_func=lambda r, label: label,
                            reduce_func=lambda key, window: window.batch(k, drop_remainder=True),
                            window_size=k)
    return ds.map(lambda r, label: r).batch(p, drop_remainder=True).map(lambda r: tf.reshape(r, [-1])).take(steps)


TeacherSpec = Optional[Tuple[int, bool]]
"""``(dim, mirror)`` of the stored teacher embeddings to read (:meth:`DataInfo.teacher`), or None."""


def decode_image(record: tf.Tensor, image_size: int) -> Tuple[tf.Tensor, tf.Tensor]:
    """A serialized record -> (uint8 RGB image image_size x image_size x 3, int32 label)."""
    image, label, _ = decode_record(record, image_size, None)
    return image, label


def decode_record(record: tf.Tensor, image_size: int, teacher: TeacherSpec) -> Tuple[tf.Tensor, ...]:
    """A serialized record -> (uint8 image, int32 label, teacher embeddings (2, dim) or None).

    The teacher rows are the crop's and its mirror's (the crop's twice when the shards hold no mirror).
    """
    dim, mirror = teacher or (0, False)
    ex = tfrecord.parse_example(record, dim, mirror)
    image = tf.io.decode_jpeg(ex[tfrecord.IMAGE], channels=3)
    if image_size != preprocessing.INPUT_SIZE:
        image = tf.cast(tf.round(tf.image.resize(image, [image_size, image_size], antialias=True)), tf.uint8)
    image = tf.ensure_shape(image, [image_size, image_size, 3])
    rows = None
    if dim:
        rows = tf.stack([ex[tfrecord.TEACHER], ex[tfrecord.TEACHER_MIRROR if mirror else tfrecord.TEACHER]])
    return image, tf.cast(ex[tfrecord.LABEL], tf.int32), rows


def _rotate_zoom(image: tf.Tensor, seed: tf.Tensor, degrees: float, zoom: float) -> tf.Tensor:
    """Rotate by a random angle within +-degrees and scale within 1 +- zoom about the centre (reflect fill)."""
    size = float(image.shape[0])
    limits = tf.constant([math.radians(degrees), zoom], tf.float32)
    angle, z = tf.unstack(tf.random.stateless_uniform([2], seed, -1.0, 1.0) * limits)
    z = 1.0 + z
    cos, sin, c = tf.cos(angle) / z, tf.sin(angle) / z, (size - 1.0) / 2.0
    # output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2)
    transform = tf.stack([cos, -sin, c - cos * c + sin * c, sin, cos, c - sin * c - cos * c, 0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(image, tf.float32)[None], transforms=transform[None],
        output_shape=tf.shape(image)[:2], fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")
    return tf.ensure_shape(out[0], image.shape)


def augment(image: tf.Tensor, seed: tf.Tensor, config: PipelineConfig) -> tf.Tensor:
    """Normalize a uint8 crop, with the configured random flip/shift/rotation/zoom/brightness/contrast.

    All draws are stateless, from ``seed``: the same record in the same epoch gets the same augmentation.
    """
    return augment_flip(image, seed, config)[0]


def augment_flip(image: tf.Tensor, seed: tf.Tensor, config: PipelineConfig) -> Tuple[tf.Tensor, tf.Tensor]:
    """:func:`augment`, and whether the crop was mirrored (bool scalar): a distilled student is then
    compared with the teacher's embedding of the mirror image."""
    size = image.shape[0]
    flipped = tf.constant(False)
    seeds = tf.random.experimental.stateless_split(seed, 5)
    if config.rotate_degrees > 0 or config.zoom > 0:
        image = _rotate_zoom(image, seeds[4], config.rotate_degrees, config.zoom)
    if config.crop_pad > 0:
        padded = tf.pad(image, [[config.crop_pad] * 2, [config.crop_pad] * 2, [0, 0]], mode="REFLECT")
        image = tf.image.stateless_random_crop(padded, [size, size, 3], seed=seeds[0])
    if config.flip:  # the draw of tf.image.stateless_random_flip_left_right, kept to know its outcome
        flipped = tf.random.stateless_uniform([], seed=seeds[1], minval=0, maxval=1.0) < 0.5
        image = tf.cond(flipped, lambda: tf.reverse(image, [1]), lambda: image)
    x = preprocessing.normalize(image)
    if config.brightness > 0:
        x = tf.image.stateless_random_brightness(x, config.brightness, seed=seeds[2])
    if config.contrast > 0:
        x = tf.image.stateless_random_contrast(x, 1.0 - config.contrast, 1.0 + config.contrast, seed=seeds[3])
    return x, flipped


def _options(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = True
    # Files are split between workers by _record_stream itself (the same shuffled order on every
    # worker, every n-th shard each), so tf.distribute must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options)


def train_dataset(data: DataInfo, batch_size: int, image_size: int, config: PipelineConfig, seed: int,
                  epochs: int, steps_per_epoch: int, start_epoch: int = 0, start_step: int = 0,
                  pk: Optional[Tuple[int, int]] = None, num_input_pipelines: int = 1,
                  input_index: int = 0, teacher: TeacherSpec = None) -> tf.data.Dataset:
    """Batches ``((image, label), label)`` for epochs ``start_epoch..epochs-1``, from ``start_step`` on.

    Each epoch is exactly ``steps_per_epoch`` batches; the same arguments give the same batches, and
    a resumed stream equals the tail of the uninterrupted one. ``pk=(P, K)`` draws batches of K
    images of each of P identities (for the triplet loss; ``batch_size`` must equal P*K).
    ``teacher=(dim, mirror)``: batches ``((image, label, teacher_embedding), label)``, the embedding
    of the mirror image for a flipped crop.
    """
    if pk is not None and pk[0] * pk[1] != batch_size:
        raise ValueError(f"P x K batches: {pk[0]} x {pk[1]} != batch size {batch_size}")
    if steps_per_epoch < 1:
        raise ValueError(f"{data.data_dir}: {data.train_records} train records make no batch of {batch_size}")
    files = data.train_files

    def one_epoch(epoch: int, skip: int) -> tf.data.Dataset:
        batches = _record_batches(files, epoch, seed, config, batch_size, steps_per_epoch, pk,
                                  num_input_pipelines, input_index).enumerate().skip(skip)
        epoch_seed = epoch * _SEED_MIX + seed

        def elements(step: tf.Tensor, records: tf.Tensor) -> tf.data.Dataset:
            index = step * batch_size + tf.range(batch_size, dtype=tf.int64)
            return tf.data.Dataset.from_tensor_slices((index, records))

        def decode(index: tf.Tensor, record: tf.Tensor):
            image, label, rows = decode_record(record, image_size, teacher)
            x, flipped = augment_flip(image, tf.stack([tf.constant(epoch_seed, tf.int64), index]), config)
            if rows is None:
                return x, label
            return x, label, tf.gather(rows, tf.cast(flipped, tf.int32))

        return batches.flat_map(elements).map(decode, num_parallel_calls=AUTOTUNE, deterministic=True)

    # Epochs are chained in Python (seeds stay Python ints: tf.data refuses tensor seeds once a global
    # seed of 0 is set); each epoch's readers only start when the stream reaches it.
    ds = one_epoch(int(start_epoch), int(start_step))
    for epoch in range(int(start_epoch) + 1, int(epochs)):
        ds = ds.concatenate(one_epoch(epoch, 0))
    ds = ds.batch(batch_size, drop_remainder=True).map(lambda *xs: (xs, xs[1]))
    return _options(ds.prefetch(AUTOTUNE))


def plain_dataset(files: List[Path], batch_size: int, image_size: int, teacher: TeacherSpec = None) -> tf.data.Dataset:
    """Records of ``files`` in order, unaugmented and normalized, as ``((image, label), label)`` batches
    (``((image, label, teacher_embedding), label)`` with ``teacher``)."""
    def decode(record: tf.Tensor):
        image, label, rows = decode_record(record, image_size, teacher)
        x = preprocessing.normalize(image)
        return ((x, label), label) if rows is None else ((x, label, rows[0]), label)

    ds = tf.data.TFRecordDataset([str(f) for f in files])
    ds = ds.map(decode, num_parallel_calls=AUTOTUNE).batch(batch_size)
    return _options(ds.prefetch(AUTOTUNE))


def val_dataset(data: DataInfo, batch_size: int, image_size: int,
                teacher: TeacherSpec = None) -> Optional[tf.data.Dataset]:
    """The "val" split in metadata order, unaugmented, as ``((image, label), label)``; None if empty."""
    if not data.val_files or data.val_records < 1:
        return None
    return plain_dataset(data.val_files, batch_size, image_size, teacher)


def steps_per_epoch(data: DataInfo, batch_size: int, configured: int = 0) -> int:
    """``configured`` if set, else the whole batches in one pass over the train records."""
    return int(configured) if configured > 0 else data.train_records // batch_size


# --- measures ---------------------------------------------------------------------------------------
def _batch_stats(labels: np.ndarray, shards: np.ndarray) -> Dict[str, float]:
    """Mean distinct labels and shards per batch, and how often neighbours share a label."""
    return {
        "distinct_labels_per_batch": float(np.mean([len(np.unique(b)) for b in labels])),
        "distinct_shards_per_batch": float(np.mean([len(np.unique(b)) for b in shards])),
        "same_label_neighbours": float(np.mean(labels[:, 1:] == labels[:, :-1])),
    }


def _collect(ds: tf.data.Dataset, batch_size: int, num_batches: int) -> Dict[str, float]:
    ds = ds.map(lambda r, i: (_label_of(r), i), num_parallel_calls=AUTOTUNE)
    labels, shards = [], []
    for label, shard in ds.batch(batch_size, drop_remainder=True).take(num_batches).as_numpy_iterator():
        labels.append(label)
        shards.append(shard)
    if not labels:
        raise ValueError(f"no full batch of {batch_size} records to measure")
    return _batch_stats(np.stack(labels), np.stack(shards))


def shuffle_mixing(data_dir: Union[str, Path], batch_size: int = 128, config: Optional[PipelineConfig] = None,
                   baseline_buffer: int = 0, num_batches: int = 50, seed: int = 0) -> Dict[str, Any]:
    """How well batches mix identities: this pipeline vs the seed's name-ordered stream vs ideal.

    ``baseline`` reads the shards one after the other in name order through a shuffle buffer of
    ``baseline_buffer`` records (default: a tenth of the data, at most 10000, at least one batch),
    as the seed project did; ``pipeline`` is :func:`train_dataset`'s record order; ``random`` is the
    expectation of distinct labels in a uniformly random batch, from the metadata's class counts.
    Higher distinct labels/shards and fewer same-label neighbours mean better mixing.
    """
    data = DataInfo(data_dir)
    config = config or PipelineConfig()
    batch_size = min(batch_size, data.train_records)
    if baseline_buffer <= 0:
        baseline_buffer = max(batch_size, min(10000, data.train_records // 10))
    names = sorted(data.train_files, key=lambda f: f.name)
    index = {f: i for i, f in enumerate(data.train_files)}

    def in_name_order(f: Path) -> tf.data.Dataset:
        return tf.data.TFRecordDataset(str(f)).map(lambda r: (r, tf.constant(index[f], tf.int64)))

    baseline = in_name_order(names[0])
    for f in names[1:]:
        baseline = baseline.concatenate(in_name_order(f))
    baseline = baseline.repeat().shuffle(baseline_buffer, seed=seed)
    pipeline = _record_stream(data.train_files, 0, seed, config)
    counts = data.meta.get("class_counts") or {}
    n = sum(int(c) for c in counts.values())
    random_labels = (float(sum(1.0 - (1.0 - int(c) / n) ** batch_size for c in counts.values()))
                     if n else float("nan"))
    return {
        "batch_size": batch_size,
        "num_batches": num_batches,
        "baseline_buffer": baseline_buffer,
        "pipeline_buffer": config.shuffle_buffer,
        "pipeline_cycle_length": config.cycle_length,
        "baseline": _collect(baseline, batch_size, num_batches),
        "pipeline": _collect(pipeline, batch_size, num_batches),
        "random": {"distinct_labels_per_batch": random_labels},
    }


def measure_throughput(data_dir: Union[str, Path], batch_size: int = 128, image_size: int = preprocessing.INPUT_SIZE,
                       config: Optional[PipelineConfig] = None, batches: int = 50, warmup: int = 5,
                       seed: int = 0) -> Dict[str, float]:
    """Images per second that :func:`train_dataset` delivers on this machine (decode + augment)."""
    data = DataInfo(data_dir)
    config = config or PipelineConfig()
    steps = max(1, data.train_records // batch_size)
    epochs = math.ceil((batches + warmup) / steps)
    ds = train_dataset(data, batch_size, image_size, config, seed, epochs=epochs, steps_per_epoch=steps)
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    seconds = time.perf_counter() - start
    return {"images_per_s": batches * batch_size / seconds, "batches": batches, "batch_size": batch_size,
            "seconds": seconds}
