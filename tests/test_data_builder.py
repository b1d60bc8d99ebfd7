"""The dataset builder end to end: shards and metadata, bad input, kill -9 and resume, .lst/merge, Beam."""
import csv
import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mobilefacenet_k210.data import builder, interop, tfrecord
from mobilefacenet_k210.data.builder import build, load_build_config


def _write_aligned(root: Path, counts, seed=0) -> Path:
    """Identity folders of synthetic 112x112 PNG crops (a colour pattern per identity plus noise)."""
    import cv2

    rng = np.random.default_rng(seed)
    for k, n in enumerate(counts):
        d = root / f"id{k:02d}"
        d.mkdir(parents=True)
        base = cv2.resize(rng.integers(0, 256, (4, 4, 3)).astype(np.float32), (112, 112),
                          interpolation=cv2.INTER_NEAREST)
        for i in range(n):
            img = np.clip(base + rng.normal(0, 15, base.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(d / f"{i:03d}.png"), img)
    return root


def _records(out: Path):
    """split -> Counter of serialized records, read through the metadata contract."""
    import tensorflow as tf

    meta = tfrecord.load_metadata(out)
    return {s: collections.Counter(bytes(r.numpy()) for f in tfrecord.shard_files(out, s, meta)
                                   for r in tf.data.TFRecordDataset(str(f)))
            for s in tfrecord.SPLITS}


def _shard_digests(out: Path):
    return [(s["file"], s["records"], s["sha256"]) for s in tfrecord.load_metadata(out)["shards"]]


@pytest.fixture(scope="module")
def orl_small(tmp_path_factory):
    """3 ORL identities x 4 real photos (MTCNN input)."""
    import shutil

    from mobilefacenet_k210.data.orl import fetch_orl

    src = fetch_orl()
    root = tmp_path_factory.mktemp("orl")
    for i in (1, 2, 3):
        (root / f"s{i}").mkdir()
        for p in sorted((src / f"s{i}").glob("*.pgm"))[:4]:
            shutil.copy(p, root / f"s{i}" / p.name)
    return root


def test_aligned_build_round_trip(tmp_path):
    """--aligned input, seed policy: exact counts per branch, metadata and labels agree with the shards,
    and every record decodes to its source crop."""
    import cv2

    raw = _write_aligned(tmp_path / "raw", [10, 40, 95, 31])
    cfg = load_build_config(aligned=True, workers=1, val_fraction=0.1, records_per_shard=150)
    summary = build(raw, tmp_path / "out", cfg, progress=False)
    out = tmp_path / "out"
    meta = tfrecord.load_metadata(out)
    assert summary["num_classes"] == meta["num_classes"] == 3  # id00 (10 faces) dropped
    assert summary["records"]["train"] + summary["records"]["val"] == 40 * 4 + 95 * 2 + 31 * 4
    assert meta["augmentation"] == {"gaussian": 71, "opening": 166, "original": 166, "saltpepper": 71}
    assert summary["images_per_s"] > 0 and summary["seconds"] > 0
    assert (out / "labels.txt").read_text().splitlines() == ["id01", "id02", "id03"]
    assert (out / "property").read_text().strip() == "3,112,112"
    assert (out / "contact_sheet.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / builder.WORK_DIR).exists()
    for key in ("class_counts", "splits", "shards", "policy", "build_config", "package_version"):
        assert key in meta
    assert [s["records"] for s in meta["shards"] if s["split"] == "train"] == \
        builder.shard_counts(meta["splits"]["train"], 150)
    for s in meta["shards"]:
        assert tfrecord.sha256_file(out / s["file"]) == s["sha256"]
    labels = {}
    for split, recs in _records(out).items():
        for raw_rec in recs:
            rec = tfrecord.decode_record(raw_rec)
            labels.setdefault(rec[tfrecord.IDENTITY], set()).add(rec[tfrecord.LABEL])
            if rec[tfrecord.AUGMENTATION] == "original":
                crop = cv2.imdecode(np.frombuffer(rec[tfrecord.IMAGE], np.uint8), cv2.IMREAD_COLOR)
                src = raw / rec[tfrecord.SOURCE]
                other = sorted(p for p in src.parent.iterdir() if p != src)[0]
                own = np.abs(crop.astype(int) - cv2.imread(str(src))).mean()
                assert own < 12 and own < 0.7 * np.abs(crop.astype(int) - cv2.imread(str(other))).mean()
    assert labels == {"id01": {0}, "id02": {1}, "id03": {2}}
    rows = list(csv.DictReader(open(out / "rejected.csv", encoding="utf-8")))
    assert rows == [{"path": "id00", "reason": "identity dropped by policy 'seed' (10 aligned faces)"}]


def test_messy_folder_rejects_every_bad_kind(tmp_path):
    """Real faces in many formats and names are kept; every kind of bad entry is listed with a reason."""
    import cv2
    from PIL import Image

    from mobilefacenet_k210.data.orl import fetch_orl

    orl = sorted((fetch_orl() / "s5").glob("*.pgm"))
    faces = [cv2.imread(str(p)) for p in orl[:6]]
    raw = tmp_path / "raw"
    good = raw / "Zoë Smith"
    good.mkdir(parents=True)
    cv2.imwrite(str(good / "a photo (1).JPG"), faces[0])
    Image.fromarray(faces[1][:, :, ::-1]).convert("CMYK").save(good / "cmyk.jpg")
    cv2.imwrite(str(good / "deep.png"), faces[2].astype(np.uint16) * 257)
    cv2.imwrite(str(good / "alpha.png"), np.dstack([faces[3], np.full(faces[3].shape[:2], 255, np.uint8)]))
    Image.fromarray(faces[4][:, :, ::-1]).save(good / "frame.gif")
    Image.fromarray(faces[5][:, :, ::-1]).save(good / "photo.webp")
    (good / "notes.jpg").write_bytes(b"this is not a photo\n")
    (good / "empty.png").write_bytes(b"")
    (good / ".DS_Store").write_bytes(b"\x00\x01")
    (good / "nested").mkdir()
    cv2.imwrite(str(good / "nested" / "x.png"), faces[0])
    cv2.imwrite(str(good / "blank.png"), np.full((120, 100, 3), 128, np.uint8))
    small = np.full((400, 400, 3), 90, np.uint8)
    small[150:206, 150:196] = cv2.resize(faces[0], (46, 56))
    cv2.imwrite(str(good / "far away.png"), small)
    (good / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (raw / "nobody").mkdir()
    (raw / ".cache").mkdir()
    (raw / "stray.jpg").write_bytes(b"x")
    cfg = load_build_config(policy="none", workers=1, val_fraction=0.0, min_face_size=40)
    summary = build(raw, tmp_path / "out", cfg, progress=False)
    assert summary["faces"] == 6 and summary["num_classes"] == 1 and summary["records"]["train"] == 6
    rows = {r["path"]: r["reason"] for r in csv.DictReader(open(tmp_path / "out" / "rejected.csv", encoding="utf-8"))}
    expected = {
        "Zoë Smith/notes.jpg": "not an image", "Zoë Smith/empty.png": "empty file",
        "Zoë Smith/.DS_Store": "hidden file", "Zoë Smith/nested": "nested folder",
        "Zoë Smith/blank.png": "no face", "Zoë Smith/far away.png": "face too small",
        "Zoë Smith/dangling.jpg": "not a regular file", "nobody": "empty folder", ".cache": "hidden folder",
        "stray.jpg": "file outside an identity folder",
    }
    assert set(rows) == set(expected)
    for path, reason in expected.items():
        assert reason in rows[path], (path, rows[path])
    assert summary["rejected"] == len(expected)


def test_nothing_to_build_and_unwritable_output_stop_with_advice(tmp_path, orl_small):
    (tmp_path / "empty").mkdir()
    with pytest.raises(builder.BuildError, match="no identity folder"):
        build(tmp_path / "empty", tmp_path / "out", load_build_config(workers=1), progress=False)
    with pytest.raises(builder.BuildError, match="no such folder"):
        build(tmp_path / "missing", tmp_path / "out", load_build_config(workers=1), progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(builder.BuildError, match="cannot write"):
        build(orl_small, tmp_path / "file" / "out", load_build_config(workers=1), progress=False)
    raw = _write_aligned(tmp_path / "few", [3, 4])
    with pytest.raises(builder.BuildError, match="--policy none"):
        build(raw, tmp_path / "out2", load_build_config(aligned=True, workers=1), progress=False)
    assert (tmp_path / "out2" / "rejected.csv").is_file()


def test_killed_build_resumes_to_identical_shards(tmp_path):
    """SIGKILL a CLI build mid-way, rerun the same command: the shards equal an uninterrupted build's."""
    raw = _write_aligned(tmp_path / "raw", [40] * 12 + [95] * 4)
    args = [sys.executable, "-m", "mobilefacenet_k210", "build-tfrecords", str(raw), str(tmp_path / "killed"),
            "--aligned", "--workers", "1", "--val-fraction", "0.05", "--quiet", "--set", "records_per_shard=500"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = tmp_path / "killed" / builder.WORK_DIR
    deadline = time.time() + 120
    while time.time() < deadline and len(list(work.glob("*/*.json"))) < 4:  # config.json + 3 identities
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "metadata.json").exists(), "the build finished before it was killed"
    done = len(list(work.glob("*/*.json"))) - 1
    assert 3 <= done < 16
    partial = tmp_path / "killed" / ".train-00000-of-00006.tfrecord.x1y2.tmp"  # as a kill in write_shard leaves
    partial.write_bytes(b"half a shard")
    rerun = subprocess.run(args, env=env, capture_output=True, text=True)
    assert not partial.exists()
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads(rerun.stdout[rerun.stdout.index("{"):])
    assert summary["resumed_identities"] >= done
    cfg = load_build_config(aligned=True, workers=1, val_fraction=0.05, overrides=["records_per_shard=500"])
    build(raw, tmp_path / "clean", cfg, progress=False)
    assert _shard_digests(tmp_path / "killed") == _shard_digests(tmp_path / "clean")
    assert (tmp_path / "killed" / "labels.txt").read_bytes() == (tmp_path / "clean" / "labels.txt").read_bytes()


def test_lst_property_and_merge_round_trip(tmp_path):
    import tensorflow as tf

    aligned = _write_aligned(tmp_path / "aligned", [3, 4, 2])
    info = interop.write_lst(aligned, tmp_path / "lst" / "train.lst")
    lines = (tmp_path / "lst" / "train.lst").read_text().splitlines()
    assert len(lines) == 9 and info["num_classes"] == 3
    flag, path, label = lines[3].split("\t")
    assert flag == "1" and Path(path).is_file() and Path(path).parent.name == "id01" and label == "1"
    assert interop.read_property(tmp_path / "lst" / "property") == [3, 112, 112]

    cfg = load_build_config(policy="none", workers=1, val_fraction=0.0)
    a = build(tmp_path / "lst" / "train.lst", tmp_path / "a", cfg, progress=False)
    b = build(aligned, tmp_path / "b", load_build_config(policy="none", workers=1, val_fraction=0.0, aligned=True),
              progress=False)
    assert a["records"] == b["records"] == {"train": 9, "val": 0} and a["num_classes"] == 3
    images_a = sorted(tfrecord.decode_record(r)[tfrecord.IMAGE] for r in _records(tmp_path / "a")["train"])
    images_b = sorted(tfrecord.decode_record(r)[tfrecord.IMAGE] for r in _records(tmp_path / "b")["train"])
    assert images_a == images_b

    meta = interop.merge([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    assert meta["num_classes"] == 6 and meta["splits"]["train"] == 18
    assert tfrecord.load_metadata(tmp_path / "m")["num_classes"] == 6
    assert interop.read_property(tmp_path / "m" / "property") == [6, 112, 112]
    names = (tmp_path / "m" / "labels.txt").read_text().splitlines()
    assert names == ["0", "1", "2", "id00", "id01", "id02"]
    merged = collections.Counter()
    for raw_rec in _records(tmp_path / "m")["train"]:
        rec = tfrecord.decode_record(raw_rec)
        assert names[rec[tfrecord.LABEL]] == rec[tfrecord.IDENTITY]
        merged[rec[tfrecord.LABEL]] += 1
    assert merged == {0: 3, 1: 4, 2: 2, 3: 3, 4: 4, 5: 2}
    assert sum(1 for f in tfrecord.shard_files(tmp_path / "m", "train") for _ in tf.data.TFRecordDataset(str(f))) == 18


def test_inspect_counts_and_contact_sheet(tmp_path):
    from mobilefacenet_k210.cli import main

    raw = _write_aligned(tmp_path / "raw", [35, 100])
    build(raw, tmp_path / "out", load_build_config(aligned=True, workers=1, val_fraction=0.1), progress=False)
    assert main(["inspect", str(tmp_path / "out"), "--identities", "2", "--per-identity", "5", "--verify"]) == 0
    from mobilefacenet_k210.data.inspect import inspect_shards

    report = inspect_shards(tmp_path / "out", identities=2, per_identity=5)
    assert report["splits"]["train"]["records"] + report["splits"]["val"]["records"] == 35 * 4 + 100 * 2
    assert report["splits"]["train"]["classes"] == 2
    mix = collections.Counter()
    for s in report["splits"].values():
        mix.update(s["augmentation"])
    assert mix == {"original": 135, "opening": 135, "gaussian": 35, "saltpepper": 35}
    png = Path(report["contact_sheet"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10000


def test_two_workers_equal_one(tmp_path, orl_small):
    """Processes change nothing: 2 workers write the same shards as 1 (real MTCNN detection)."""
    one = build(orl_small, tmp_path / "one", load_build_config(policy="none", workers=1, val_fraction=0.25),
                progress=False)
    two = build(orl_small, tmp_path / "two", load_build_config(policy="none", workers=2, val_fraction=0.25),
                progress=False)
    assert one["faces"] == two["faces"] == 12 and two["workers"] == 2
    assert _shard_digests(tmp_path / "one") == _shard_digests(tmp_path / "two")


def test_beam_direct_runner_equals_local(tmp_path, orl_small):
    pytest.importorskip("apache_beam")
    local = build(orl_small, tmp_path / "local", load_build_config(policy="none", workers=1, val_fraction=0.25),
                  progress=False)
    beam = build(orl_small, tmp_path / "beam",
                 load_build_config(policy="none", runner="beam", val_fraction=0.25), progress=False)
    assert local["records"] == beam["records"] and beam["runner"] == "beam"
    assert _records(tmp_path / "local") == _records(tmp_path / "beam")
    assert (tmp_path / "local" / "labels.txt").read_text() == (tmp_path / "beam" / "labels.txt").read_text()
    meta = tfrecord.load_metadata(tmp_path / "beam")
    assert meta["class_counts"] == tfrecord.load_metadata(tmp_path / "local")["class_counts"]


def test_lst_labels_keep_their_numeric_order(tmp_path):
    """A .lst with labels 0..11 keeps label L as output label L (not "10" before "2")."""
    aligned = _write_aligned(tmp_path / "aligned", [1] * 12)
    interop.write_lst(aligned, tmp_path / "all.lst")
    build(tmp_path / "all.lst", tmp_path / "out", load_build_config(policy="none", workers=1, val_fraction=0.0),
          progress=False)
    assert (tmp_path / "out" / "labels.txt").read_text().splitlines() == [str(i) for i in range(12)]
    for raw_rec in _records(tmp_path / "out")["train"]:
        rec = tfrecord.decode_record(raw_rec)
        assert rec[tfrecord.SOURCE].split("/")[-2] == f"id{rec[tfrecord.LABEL]:02d}"
