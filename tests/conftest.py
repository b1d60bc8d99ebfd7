"""Shared fixtures of the test suite."""
from pathlib import Path

import numpy as np
import pytest


def write_tiny_shards(root: Path, num_classes: int = 8, per_class: int = 6, num_shards: int = 4,
                      val_per_class: int = 1, size: int = 112, seed: int = 0) -> Path:
    """A shard folder as the builder writes it, records in identity order (as a name-ordered build).

    Each identity is a fixed random 4x4 colour pattern, upscaled, plus noise: separable but not trivial.
    """
    import cv2

    from mobilefacenet_k210 import atomic
    from mobilefacenet_k210.data import tfrecord

    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 256, size=(num_classes, 4, 4, 3)).astype(np.float32)

    def record(label: int, i: int) -> bytes:
        base = cv2.resize(patterns[label], (size, size), interpolation=cv2.INTER_NEAREST)
        img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        ok, jpeg = cv2.imencode(".jpg", img[:, :, ::-1])
        return tfrecord.encode_example(jpeg.tobytes(), label, f"id{label:03d}", f"id{label:03d}/{i}.jpg", "original")

    train = [record(c, i) for c in range(num_classes) for i in range(per_class)]
    val = [record(c, per_class + i) for c in range(num_classes) for i in range(val_per_class)]
    shards = []
    for k, chunk in enumerate(np.array_split(np.arange(len(train)), num_shards)):
        entry = tfrecord.write_shard(root / tfrecord.shard_name("train", k, num_shards), [train[j] for j in chunk])
        shards.append({**entry, "split": "train"})
    if val:
        entry = tfrecord.write_shard(root / tfrecord.shard_name("val", 0, 1), val)
        shards.append({**entry, "split": "val"})
    atomic.write_json(root / tfrecord.METADATA_FILE, {
        "schema_version": tfrecord.SCHEMA_VERSION, "num_classes": num_classes,
        "class_counts": {str(c): per_class for c in range(num_classes)},
        "splits": {"train": len(train), "val": len(val)}, "shards": shards,
        "policy": {}, "build_config": {}, "package_version": "test"})
    return root


@pytest.fixture
def tiny_shards(tmp_path_factory):
    """Factory: ``tiny_shards(**kwargs)`` -> a fresh shard folder (see :func:`write_tiny_shards`)."""
    def make(**kwargs) -> Path:
        return write_tiny_shards(tmp_path_factory.mktemp("shards"), **kwargs)
    return make
