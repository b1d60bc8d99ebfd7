"""Shared fixtures and helpers of the test suite: tiny shards, synthetic and ORL faces, the small K210-legal
model compiled once for the whole session, the identification people, one-line CLI errors."""
import json
import signal
import struct
import subprocess
import time
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


def synthetic_faces(count: int, seed: int, size: int = 112) -> np.ndarray:
    """Smooth colour fields plus noise: natural-image statistics without shipping photos."""
    import cv2

    rng = np.random.default_rng(seed)
    faces = []
    for _ in range(count):
        low = rng.uniform(0, 255, (6, 6, 3)).astype(np.float32)
        img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 8, (size, size, 3))
        faces.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(faces)


def write_faces(folder: Path, faces: np.ndarray) -> Path:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    for i, face in enumerate(faces):
        cv2.imwrite(str(folder / f"face_{i:03d}.png"), face[:, :, ::-1])
    return folder


def orl_crop(path: Path) -> np.ndarray:
    """An ORL photo (92x112 gray) stretched to a 112x112 RGB 'aligned' crop."""
    import cv2

    from mobilefacenet_k210.data.align import read_image

    return cv2.resize(read_image(path), (112, 112), interpolation=cv2.INTER_LINEAR)


def tiny_k210_model(orientation: str = "upright"):
    """A small K210-legal embedding model (3 stride-2 convs, GDC, 1x1 to 32-d), fixed random weights;
    ``orientation`` rot180 makes its first layer turn the crop (``InputOrientation``)."""
    import tensorflow as tf

    from mobilefacenet_k210.model.mobilefacenet import InputOrientation

    tf.keras.utils.set_random_seed(0)
    layers = tf.keras.layers
    inp = tf.keras.Input((112, 112, 3))
    x = inp if orientation == "upright" else InputOrientation(orientation, name="input_orientation")(inp)
    for i, channels in enumerate((16, 32, 32)):
        x = layers.ZeroPadding2D(1, name=f"pad{i}")(x)
        x = layers.Conv2D(channels, 3, strides=2, padding="valid", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
    x = layers.DepthwiseConv2D(14, padding="valid", use_bias=False, name="gdc")(x)
    x = layers.BatchNormalization(name="gdc_bn")(x)
    x = layers.Conv2D(32, 1, use_bias=False, name="embedding")(x)
    return tf.keras.Model(inp, layers.Flatten(name="flatten")(x), name="tiny")


TINY_K210_CALIBRATION = [(f"s{p}", k) for p in range(1, 7) for k in (1, 2, 3, 4)]
"""ORL photos (person, photo) the tiny kmodel is calibrated on: the board tests' enrolled photos."""


@pytest.fixture(scope="session")
def tiny_k210(tmp_path_factory):
    """:func:`tiny_k210_model` as .keras, float .tflite and a uint8 kmodel (nncase, with its compile record),
    made once for every test that needs a kmodel to pack, flash, enroll with or run on the emulated board.
    Read only: a test that changes one copies it first."""
    from mobilefacenet_k210.data.orl import fetch_orl
    from mobilefacenet_k210.export.kmodel import compile_kmodel
    from mobilefacenet_k210.export.tflite import convert_float

    orl = fetch_orl()
    out = tmp_path_factory.mktemp("tiny_k210")
    model = tiny_k210_model()
    model.save(out / "tiny.keras")
    convert_float(model, out / "tiny.tflite")
    calibration = np.stack([orl_crop(orl / p / f"{k}.pgm") for p, k in TINY_K210_CALIBRATION])
    compile_kmodel(out / "tiny.tflite", out / "tiny.kmodel", calibration=calibration, timeout_s=300)
    return {"keras": out / "tiny.keras", "tflite": out / "tiny.tflite", "kmodel": out / "tiny.kmodel", "orl": orl}


def fake_kmodel(path: Path, version: int = 5, size: int = 4096) -> Path:
    """A kmodel header of ``version`` padded to ``size`` bytes: enough for the packing checks (never run)."""
    header = struct.pack("<I", version) if version == 3 else b"LDMK" + struct.pack("<I", version)
    with path.open("wb") as f:
        f.write(header)
        f.truncate(size)
    return path


def one_line_error(capsys, command: str, *needles: str) -> str:
    """The CLI's stderr after a user error: one line, `mfk210 COMMAND: error: ...`, holding every needle."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"mfk210 {command}: error: "), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.fixture(scope="session")
def people(tmp_path_factory):
    """Aligned 112x112 crops of 4 ORL people x 4 photos, and a small fixed-weight Keras embedding model."""
    import cv2
    import tensorflow as tf

    from mobilefacenet_k210.data.align import read_image
    from mobilefacenet_k210.data.orl import fetch_orl

    orl = fetch_orl()
    root = tmp_path_factory.mktemp("people")
    for person in ("s1", "s2", "s3", "s4"):
        (root / "faces" / person).mkdir(parents=True)
        for k in range(1, 5):
            crop = cv2.resize(read_image(orl / person / f"{k}.pgm"), (112, 112))
            cv2.imwrite(str(root / "faces" / person / f"{k}.png"), crop[:, :, ::-1])
    tf.keras.utils.set_random_seed(0)
    inp = tf.keras.Input((112, 112, 3))
    x = tf.keras.layers.Conv2D(8, 3, strides=4, activation="relu")(inp)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    tf.keras.Model(inp, tf.keras.layers.Dense(16)(x)).save(root / "m.keras")
    return {"faces": root / "faces", "model": root / "m.keras"}


def recorded_pid(target: Path) -> int:
    """The pid in ``target``'s lock file (0: no lock file, or its record not written yet)."""
    from mobilefacenet_k210 import folder_lock

    try:
        return int(json.loads(folder_lock.lock_path(target).read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return 0


def snapshot(root: Path) -> dict:
    """Every file under ``root``: its bytes by relative path (an absent ``root``: empty)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def shard_digests(out: Path) -> list:
    """(file, records, sha256) of every shard a build wrote: equal lists mean byte-identical shard sets."""
    from mobilefacenet_k210.data import tfrecord

    return [(s["file"], s["records"], s["sha256"]) for s in tfrecord.load_metadata(out)["shards"]]


def cached_identities(work: Path) -> int:
    """Identities whose cache entry is complete (an entry file appears under its name only when whole)."""
    return sum(1 for p in work.glob("*/*.entry"))


def kill_when_cached(args, env, work: Path, identities: int, timeout: float = 900) -> int:
    """Start the CLI build and SIGKILL it once ``identities`` identities are observably cached in ``work``
    (a state, not a delay); returns the number cached at the kill. ``timeout`` only turns a hang into a failure."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while cached_identities(work) < identities:
            if proc.poll() is not None:
                pytest.fail(f"the build exited (rc {proc.returncode}) before {identities} identities were cached "
                            f"in {work}: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"waited {timeout} s for {identities} identities to be cached in {work}")
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    return cached_identities(work)


def rerun_in_process(args: list, capsys) -> dict:
    """The killed CLI command ``args`` (``python -m mobilefacenet_k210 ...``) run again to its end, in this process
    (no second interpreter and TensorFlow import to pay); returns the JSON summary it printed."""
    from mobilefacenet_k210 import cli

    assert args[1:3] == ["-m", "mobilefacenet_k210"], args
    capsys.readouterr()
    code = cli.main(args[3:])
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    return json.loads(out.out[out.out.index("{"):])
