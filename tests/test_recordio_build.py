"""`mfk210 build-tfrecords` on InsightFace RecordIO sets that real mxnet wrote (tests/fixtures/recordio):
every photo once with its class, JPEG bytes passed through, RGB order, both runners, damaged input,
kill and resume, merge and inspect on the result."""
import collections
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import kill_when_cached, rerun_in_process, shard_digests
from mobilefacenet_k210.data import interop, recordio, tfrecord
from mobilefacenet_k210.data.builder import build, load_build_config
from mobilefacenet_k210.data.cache import WORK_DIR
from mobilefacenet_k210.data.inspect_shards import inspect_shards
from mobilefacenet_k210.data.insightface_set import INSIGHTFACE

FIXTURE = Path(__file__).parent / "fixtures" / "recordio"


def _expected(name: str) -> dict:
    return json.loads((FIXTURE / name / "expected.json").read_text())["keys"]


def _examples(out: Path) -> list:
    meta = tfrecord.load_metadata(out)
    return [dict(rec, split=s) for s in tfrecord.SPLITS for f in tfrecord.shard_files(out, s, meta)
            for rec in tfrecord.read_examples(f)]


def _rgb_mean(jpeg: bytes) -> np.ndarray:
    import tensorflow as tf

    return tf.io.decode_jpeg(jpeg, channels=3).numpy().reshape(-1, 3).mean(0)


def _check_set(out: Path, name: str, classes: list) -> list:
    """Every photo of the mxnet set once, in its class, labels dense in class order, names PREFIX_<class>;
    returns the examples."""
    expected = _expected(name)
    photos = {int(k): v for k, v in expected.items() if v["kind"] == "photo"}
    examples = _examples(out)
    assert sorted(e[tfrecord.SOURCE] for e in examples) == sorted(f"train.rec#{k}" for k in photos)
    names = [f"{name}_{c:06d}" for c in classes]
    assert (out / "labels.txt").read_text().splitlines() == names
    for e in examples:
        cls = photos[int(e[tfrecord.SOURCE].split("#")[1])]["class"]
        assert (e[tfrecord.IDENTITY], e[tfrecord.LABEL]) == (names[classes.index(cls)], classes.index(cls))
    return examples


def test_mxnet_set_builds_with_jpegs_passed_through_and_beam_writes_the_same(tmp_path):
    """InsightFace's layout, local runner with 2 workers and the Beam DirectRunner: the same shards; the
    crops are mxnet's JPEG bytes unchanged and decode to mxnet's RGB; the .bin beside the .rec is listed."""
    pytest.importorskip("apache_beam")
    src = FIXTURE / "insightface"
    local = build(src, tmp_path / "local", load_build_config(policy="none", workers=2, val_fraction=0.25),
                  progress=False)
    examples = _check_set(tmp_path / "local", "insightface", [0, 1, 2, 3])
    expected = _expected("insightface")
    for e in examples:
        want = expected[e[tfrecord.SOURCE].split("#")[1]]
        assert hashlib.sha256(e[tfrecord.IMAGE]).hexdigest() == want["sha256"]
        # TensorFlow's and mxnet's (OpenCV's) JPEG decoders differ by a level or two; the tints set the
        # channels 20-50 levels apart, so swapped channels could not pass
        assert np.abs(_rgb_mean(e[tfrecord.IMAGE]) - want["rgb_mean"]).max() < 3.0
    assert collections.Counter(e["split"] for e in examples) == local["records"] and local["records"]["val"] > 0
    bins = {"lfw": str((src / "lfw.bin").resolve())}
    assert local["source"]["verification"] == bins and local["source"]["layout"] == INSIGHTFACE
    assert local["source"]["train_with"] == f"--set verification.lfw={bins['lfw']}"
    meta = tfrecord.load_metadata(tmp_path / "local")
    assert meta["source"]["classes"] == 4 and meta["build_config"]["aligned"] and meta["detector"] is None
    beam = build(src, tmp_path / "beam", load_build_config(policy="none", runner="beam", val_fraction=0.25),
                 progress=False)
    assert beam["runner"] == "beam" and beam["records"] == local["records"]
    assert shard_digests(tmp_path / "beam") == shard_digests(tmp_path / "local")
    assert (tmp_path / "beam" / "labels.txt").read_text() == (tmp_path / "local" / "labels.txt").read_text()


def test_other_layouts_relabel_densely_and_a_png_record_is_reencoded_in_rgb(tmp_path):
    """No header (classes 5, 9, 12 in mixed key order, key 4 a PNG) and array labels: labels 0..K-1 in class
    order; the PNG becomes a JPEG of the same RGB picture; merge and inspect read the results."""
    build(FIXTURE / "noheader", tmp_path / "noheader", load_build_config(policy="none", workers=1,
                                                                          val_fraction=0.0), progress=False)
    examples = _check_set(tmp_path / "noheader", "noheader", [5, 9, 12])
    png = next(e for e in examples if e[tfrecord.SOURCE] == "train.rec#4")
    assert png[tfrecord.IMAGE][:2] == b"\xff\xd8"
    want = _expected("noheader")["4"]["rgb_mean"]
    assert np.abs(_rgb_mean(png[tfrecord.IMAGE]) - want).max() < 3.0 and np.argmax(want) == 2  # class 5 is tinted blue
    build(FIXTURE / "arraylabels", tmp_path / "array", load_build_config(policy="none", workers=1,
                                                                          val_fraction=0.0), progress=False)
    _check_set(tmp_path / "array", "arraylabels", [0, 1, 3])
    meta = interop.merge([tmp_path / "noheader", tmp_path / "array"], tmp_path / "merged")
    assert meta["num_classes"] == 6 and meta["splits"] == {"train": 15, "val": 0}
    report = inspect_shards(tmp_path / "merged", identities=2, per_identity=2)
    assert report["splits"]["train"]["classes"] == 6
    assert (tmp_path / "merged" / "labels.txt").read_text().splitlines()[3] == "arraylabels_000000"


def test_augmented_copies_keep_rgb_order_and_a_damaged_rec_keeps_its_readable_records(tmp_path):
    """With a policy adding opened copies, those are decoded and re-encoded in RGB order (class 0 is
    tinted red). A .rec cut inside key 8: keys 1-7 are built, the lost keys are in rejected.csv."""
    import csv

    policy = tmp_path / "policy.yaml"
    policy.write_text("val_fraction: 0.0\nworkers: 1\npolicy:\n  name: open\n  rules:\n"
                      "    - {more_than: -1, action: keep, augment: [opening]}\n")
    cut = shutil.copytree(FIXTURE / "insightface", tmp_path / "cut")
    offsets, _ = recordio.read_idx(cut / "train.idx")
    data = (cut / "train.rec").read_bytes()
    (cut / "train.rec").write_bytes(data[:offsets[8] + 64])
    summary = build(cut, tmp_path / "out", load_build_config(policy), progress=False)
    examples = _examples(tmp_path / "out")
    assert sorted({e[tfrecord.SOURCE] for e in examples}) == sorted(f"train.rec#{k}" for k in range(1, 8))
    assert collections.Counter(e[tfrecord.AUGMENTATION] for e in examples) == {"original": 7, "opening": 7}
    expected = _expected("insightface")
    for e in examples:
        want = np.array(expected[e[tfrecord.SOURCE].split("#")[1]]["rgb_mean"])
        got = _rgb_mean(e[tfrecord.IMAGE])
        assert list(np.argsort(got)) == list(np.argsort(want)), (e[tfrecord.SOURCE], got, want)
        assert -12 < (got - want).mean() < 3.0  # opening never brightens; the originals are mxnet's bytes
    with open(tmp_path / "out" / "rejected.csv", newline="") as f:
        rows = {r["path"]: r["reason"] for r in csv.DictReader(f)}
    assert {f"train.rec#{k}" for k in [0, *range(8, 17)]} <= set(rows) and "cut short" in rows["train.rec#8"]
    assert summary["source"]["notes"] and summary["num_classes"] == 3


def test_killed_recordio_build_resumes_to_identical_shards(tmp_path, capsys):
    """A RecordIO set of 8 classes of 31 photos (the fixture's repeated; the seed policy adds 3 augmented
    copies of each), built by the CLI and SIGKILLed once 3 classes are cached, then the same command rerun: the
    shards equal an uninterrupted build's."""
    src = FIXTURE / "insightface"
    with recordio.RecordFile(src / "train.rec") as f:
        offsets, _ = recordio.read_idx(src / "train.idx")
        jpegs = [recordio.unpack(f.read(offsets[k]))[1] for k in range(1, 13)]
    items = [(1 + i, recordio.pack(i // 31, jpegs[i % len(jpegs)], 1 + i)) for i in range(8 * 31)]
    recordio.write_recordio(tmp_path / "set" / "train.rec", tmp_path / "set" / "train.idx", items)
    args = [sys.executable, "-m", "mobilefacenet_k210", "build-tfrecords", str(tmp_path / "set"),
            str(tmp_path / "killed"), "--workers", "1", "--val-fraction", "0.05", "--quiet"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = kill_when_cached(args, env, tmp_path / "killed" / WORK_DIR, 3)
    assert not (tmp_path / "killed" / "metadata.json").exists(), "the build finished before it was killed"
    assert rerun_in_process(args, capsys)["resumed_identities"] >= done
    build(tmp_path / "set", tmp_path / "clean", load_build_config(workers=1, val_fraction=0.05), progress=False)
    assert shard_digests(tmp_path / "killed") == shard_digests(tmp_path / "clean")
    assert tfrecord.load_metadata(tmp_path / "clean")["augmentation"] == {
        "gaussian": 248, "opening": 248, "original": 248, "saltpepper": 248}
