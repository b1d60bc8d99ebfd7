"""The tf.data input: normalized batches, real mixing across shards, determinism and exact resume,
P x K batches, and errors that name the bad file."""
import json

import numpy as np
import pytest

from mobilefacenet_k210 import preprocessing
from mobilefacenet_k210.config import PipelineConfig
from mobilefacenet_k210.data import pipeline, tfrecord

CFG = PipelineConfig(shuffle_buffer=64, cycle_length=4)
AUGMENTED = PipelineConfig(shuffle_buffer=64, cycle_length=4, crop_pad=4, rotate_degrees=10, zoom=0.1,
                           brightness=0.1, contrast=0.1)


def _batches(ds):
    return [(x, y, t) for (x, y), t in ds.as_numpy_iterator()]


def test_batches_are_normalized_with_the_right_shapes(tiny_shards):
    data = pipeline.DataInfo(tiny_shards(num_classes=8, per_class=6, num_shards=4))
    assert data.num_classes == 8 and data.train_records == 48 and data.val_records == 8
    ds = pipeline.train_dataset(data, 16, 64, CFG, seed=0, epochs=2, steps_per_epoch=3)
    batches = _batches(ds)
    assert len(batches) == 6
    lo, hi = preprocessing.input_range()
    for x, y, t in batches:
        assert x.shape == (16, 64, 64, 3) and x.dtype == np.float32
        assert lo <= x.min() and x.max() <= hi
        assert y.shape == (16,) and y.dtype == np.int32 and np.array_equal(y, t)
        assert 0 <= y.min() and y.max() < 8
    val = _batches(pipeline.val_dataset(data, 5, 64))
    assert sum(len(y) for _, y, _ in val) == 8


def test_pipeline_mixes_labels_and_shards_better_than_the_seed_stream(tiny_shards):
    # Records are written in identity order (as a name-ordered build), 2 identities per shard.
    root = tiny_shards(num_classes=16, per_class=8, num_shards=8)
    result = pipeline.shuffle_mixing(root, batch_size=16, config=CFG, num_batches=16)
    base, ours = result["baseline"], result["pipeline"]
    assert ours["distinct_labels_per_batch"] > base["distinct_labels_per_batch"] + 2
    assert ours["distinct_shards_per_batch"] > base["distinct_shards_per_batch"] + 2
    assert ours["same_label_neighbours"] < base["same_label_neighbours"]
    assert ours["distinct_labels_per_batch"] <= result["random"]["distinct_labels_per_batch"] + 1


def test_same_seed_same_batches_and_resume_sees_the_tail(tiny_shards):
    data = pipeline.DataInfo(tiny_shards(num_classes=8, per_class=6, num_shards=4))
    full = _batches(pipeline.train_dataset(data, 8, 64, AUGMENTED, seed=3, epochs=3, steps_per_epoch=4))
    again = _batches(pipeline.train_dataset(data, 8, 64, AUGMENTED, seed=3, epochs=3, steps_per_epoch=4))
    resumed = _batches(pipeline.train_dataset(data, 8, 64, AUGMENTED, seed=3, epochs=3, steps_per_epoch=4,
                                              start_epoch=1, start_step=2))
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(full, again))
    assert len(resumed) == len(full) - 6
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(full[6:], resumed))
    # the order changes from one epoch to the next (shard order and buffer reshuffled)
    epoch0 = np.concatenate([b[1] for b in full[:4]])
    epoch1 = np.concatenate([b[1] for b in full[4:8]])
    assert not np.array_equal(epoch0, epoch1)
    other = _batches(pipeline.train_dataset(data, 8, 64, CFG, seed=4, epochs=1, steps_per_epoch=4))
    assert not np.array_equal(np.concatenate([b[1] for b in other]), epoch0)


def test_p_by_k_batches_hold_k_images_of_p_identities(tiny_shards):
    data = pipeline.DataInfo(tiny_shards(num_classes=8, per_class=6, num_shards=4))
    ds = pipeline.train_dataset(data, 12, 64, CFG, seed=0, epochs=1, steps_per_epoch=4, pk=(3, 4))
    for _, y, _ in _batches(ds):
        labels, counts = np.unique(y, return_counts=True)
        assert len(labels) == 3 and set(counts) == {4}
    with pytest.raises(ValueError, match="3 x 4"):
        pipeline.train_dataset(data, 16, 64, CFG, seed=0, epochs=1, steps_per_epoch=1, pk=(3, 4))


def test_throughput_is_measured(tiny_shards):
    result = pipeline.measure_throughput(tiny_shards(num_classes=4, per_class=4, num_shards=2), batch_size=8,
                                         image_size=64, config=CFG, batches=4, warmup=1)
    assert result["images_per_s"] > 0 and result["batches"] == 4


def test_missing_or_bad_metadata_names_the_file(tiny_shards, tmp_path):
    with pytest.raises(tfrecord.ShardError, match="metadata.json"):
        pipeline.DataInfo(tmp_path)
    root = tiny_shards(num_classes=4, per_class=4, num_shards=2)
    meta_path = root / tfrecord.METADATA_FILE
    meta = json.loads(meta_path.read_text())
    meta["shards"][0]["file"] = "train-00099-of-00100.tfrecord"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(tfrecord.ShardError, match="train-00099-of-00100.tfrecord"):
        pipeline.DataInfo(root)
    meta_path.write_text("{not json")
    with pytest.raises(tfrecord.ShardError, match=str(meta_path)):
        pipeline.DataInfo(root)


def test_corrupt_or_changed_shard_names_the_file(tiny_shards):
    root = tiny_shards(num_classes=4, per_class=4, num_shards=2)
    data = pipeline.DataInfo(root)
    pipeline.check_shards(data.train_files, data.meta)
    bad = data.train_files[1]
    bad.write_bytes(b"this is not a tfrecord file at all")
    with pytest.raises(tfrecord.ShardError, match=bad.name):
        pipeline.check_shards(data.train_files, data.meta)
    first = data.train_files[0]
    blob = bytearray(first.read_bytes())
    blob[-5] ^= 0xFF  # a flipped byte inside the last record: readable header, wrong checksum
    first.write_bytes(bytes(blob))
    with pytest.raises(tfrecord.ShardError, match=first.name):
        pipeline.check_shards(data.train_files[:1], data.meta)


def test_teacher_embedding_follows_the_flip(tiny_shards, tmp_path):
    """Records whose left half is dark: a batch image that is dark on the right was mirrored, and its
    teacher input is the mirror's row ([0, 1]); an unmirrored one gets the crop's ([1, 0])."""
    import cv2

    from mobilefacenet_k210 import atomic

    img = np.full((112, 112, 3), 200, np.uint8)
    img[:, :56] = 20
    jpeg = cv2.imencode(".jpg", img)[1].tobytes()
    recs = [tfrecord.encode_example(jpeg, i % 2, f"id{i % 2}", f"{i}.jpg", "original", [1.0, 0.0], [0.0, 1.0])
            for i in range(32)]
    entry = tfrecord.write_shard(tmp_path / tfrecord.shard_name("train", 0, 1), recs)
    atomic.write_json(tmp_path / tfrecord.METADATA_FILE, {
        "schema_version": tfrecord.SCHEMA_VERSION, "num_classes": 2, "shards": [{**entry, "split": "train"}],
        tfrecord.TEACHER_META: {"name": "t", "sha256": "0", "dim": 2, "mirror": True}})
    data = pipeline.DataInfo(tmp_path)
    assert data.teacher() == (2, True)
    ds = pipeline.train_dataset(data, 8, 112, CFG, seed=3, epochs=2, steps_per_epoch=4, teacher=data.teacher())
    seen = set()
    for (x, y, t), label in ds.as_numpy_iterator():
        assert np.array_equal(y, label) and t.shape == (8, 2)
        mirrored = x[:, :, :56].mean(axis=(1, 2, 3)) > x[:, :, 56:].mean(axis=(1, 2, 3))
        np.testing.assert_array_equal(t[:, 1], mirrored.astype(np.float32))
        np.testing.assert_array_equal(t[:, 0], 1.0 - mirrored.astype(np.float32))
        seen.update(mirrored.tolist())
    assert seen == {True, False}
    for (x, y, t), _ in pipeline.plain_dataset(data.train_files, 8, 112, data.teacher()).as_numpy_iterator():
        np.testing.assert_array_equal(t, np.tile([[1.0, 0.0]], (len(y), 1)))  # unaugmented: the crop's row
    plain = tiny_shards(num_classes=2, per_class=2, num_shards=1)
    with pytest.raises(tfrecord.ShardError, match="metadata.json: these shards hold no teacher embeddings"):
        pipeline.DataInfo(plain).teacher()
