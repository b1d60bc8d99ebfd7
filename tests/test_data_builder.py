"""The dataset builder end to end: shards and metadata, bad input, kill -9 and resume, .lst/merge, Beam."""
import csv
import collections
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import kill_when_cached, rerun_in_process, shard_digests
from mobilefacenet_k210 import folder_lock
from mobilefacenet_k210.data import builder, insightface_set, interop, local_runner, tfrecord, writer
from mobilefacenet_k210.data.builder import build, load_build_config
from mobilefacenet_k210.data.cache import WORK_DIR


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
    and every record decodes to its source crop. Workers on auto: so few photos are done in this process."""
    import cv2

    raw = _write_aligned(tmp_path / "raw", [10, 40, 95, 31])
    cfg = load_build_config(aligned=True, workers=0, val_fraction=0.1, records_per_shard=150)
    summary = build(raw, tmp_path / "out", cfg, progress=False)
    assert summary["workers"] == 1 and 10 + 40 + 95 + 31 < local_runner.POOL_MIN_PHOTOS
    out = tmp_path / "out"
    meta = tfrecord.load_metadata(out)
    assert summary["num_classes"] == meta["num_classes"] == 3  # id00 (10 faces) dropped
    assert summary["records"]["train"] + summary["records"]["val"] == 40 * 4 + 95 * 2 + 31 * 4
    assert meta["augmentation"] == {"gaussian": 71, "opening": 166, "original": 166, "saltpepper": 71}
    assert summary["images_per_s"] > 0 and summary["seconds"] > 0
    assert (out / "labels.txt").read_text().splitlines() == ["id01", "id02", "id03"]
    assert (out / "property").read_text().strip() == "3,112,112"
    assert (out / "contact_sheet.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / WORK_DIR).exists()
    for key in ("class_counts", "splits", "shards", "policy", "build_config", "package_version"):
        assert key in meta
    assert [s["records"] for s in meta["shards"] if s["split"] == "train"] == \
        writer.shard_counts(meta["splits"]["train"], 150)
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
    with pytest.raises(folder_lock.FolderLockError, match="cannot write"):  # the lock beside OUT comes first
        build(orl_small, tmp_path / "file" / "out", load_build_config(workers=1), progress=False)
    raw = _write_aligned(tmp_path / "few", [3, 4])
    with pytest.raises(builder.BuildError, match="--policy none"):
        build(raw, tmp_path / "out2", load_build_config(aligned=True, workers=1), progress=False)
    assert (tmp_path / "out2" / "rejected.csv").is_file()


def _resume_after_kill(tmp_path, capsys, runner: str):
    """Kill a CLI build once 3 identities are cached, plant what a kill can leave, rerun the same command (in
    this process): the rerun resumes the cached identities and removes the leftovers; returns the raw folder."""
    raw = _write_aligned(tmp_path / "raw", [40] * 12 + [95] * 4)
    args = [sys.executable, "-m", "mobilefacenet_k210", "build-tfrecords", str(raw), str(tmp_path / "killed"),
            "--aligned", "--workers", "1", "--val-fraction", "0.05", "--quiet", "--set", "records_per_shard=500",
            "--runner", runner]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    work = tmp_path / "killed" / WORK_DIR
    done = kill_when_cached(args, env, work, 3)
    assert not (tmp_path / "killed" / "metadata.json").exists(), "the build finished before it was killed"
    assert 3 <= done and not list(work.glob("*/*.pkl"))
    leftovers = [tmp_path / "killed" / ".train-00000-of-00006.tfrecord.x1y2.tmp",  # a kill in write_shard
                 next(work.glob("*/config.json")).with_name(".abc.entry.x1y2.tmp"),  # a kill in cache_save
                 tmp_path / "killed" / "beam-temp-train-1234"]  # a kill in a Beam file sink
    for path in leftovers[:2]:
        path.write_bytes(b"half a file")
    leftovers[2].mkdir()
    summary = rerun_in_process(args, capsys)
    assert not any(p.exists() for p in leftovers)
    assert summary["resumed_identities"] >= done and summary["runner"] == runner
    return raw


def test_killed_build_resumes_to_identical_shards(tmp_path, capsys):
    """SIGKILL a CLI build mid-way, rerun the same command: the shards equal an uninterrupted build's."""
    raw = _resume_after_kill(tmp_path, capsys, "local")
    cfg = load_build_config(aligned=True, workers=1, val_fraction=0.05, overrides=["records_per_shard=500"])
    build(raw, tmp_path / "clean", cfg, progress=False)
    assert shard_digests(tmp_path / "killed") == shard_digests(tmp_path / "clean")
    assert (tmp_path / "killed" / "labels.txt").read_bytes() == (tmp_path / "clean" / "labels.txt").read_bytes()


def test_killed_beam_build_resumes_to_identical_shards(tmp_path, capsys):
    """The same with --runner beam: the rerun skips the cached identities and equals an uninterrupted Beam build."""
    pytest.importorskip("apache_beam")
    raw = _resume_after_kill(tmp_path, capsys, "beam")
    cfg = load_build_config(aligned=True, runner="beam", val_fraction=0.05, overrides=["records_per_shard=500"])
    build(raw, tmp_path / "clean", cfg, progress=False)
    assert shard_digests(tmp_path / "killed") == shard_digests(tmp_path / "clean")
    assert (tmp_path / "killed" / "labels.txt").read_bytes() == (tmp_path / "clean" / "labels.txt").read_bytes()


def test_lst_property_and_merge_round_trip(tmp_path):
    import tensorflow as tf

    aligned = _write_aligned(tmp_path / "aligned", [3, 4, 2])
    info = interop.write_lst(aligned, tmp_path / "lst" / "train.lst")
    lines = (tmp_path / "lst" / "train.lst").read_text().splitlines()
    assert len(lines) == 9 and info["num_classes"] == 3
    flag, path, label = lines[3].split("\t")
    assert flag == "1" and Path(path).is_file() and Path(path).parent.name == "id01" and label == "1"
    assert insightface_set.read_property(tmp_path / "lst" / "property") == [3, 112, 112]

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
    assert insightface_set.read_property(tmp_path / "m" / "property") == [6, 112, 112]
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
    from mobilefacenet_k210.data.inspect_shards import inspect_shards

    report = inspect_shards(tmp_path / "out", identities=2, per_identity=5)
    assert report["splits"]["train"]["records"] + report["splits"]["val"]["records"] == 35 * 4 + 100 * 2
    assert report["splits"]["train"]["classes"] == 2
    mix = collections.Counter()
    for s in report["splits"].values():
        mix.update(s["augmentation"])
    assert mix == {"original": 135, "opening": 135, "gaussian": 35, "saltpepper": 35}
    png = Path(report["contact_sheet"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10000


def _live_aligners() -> int:
    import gc

    from mobilefacenet_k210.data.align import FaceAligner

    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, FaceAligner))


def test_two_workers_equal_one(tmp_path, orl_small):
    """Processes change nothing: 2 workers write the same shards as 1 (real MTCNN detection). The one-worker
    build runs in this process and leaves nothing of its worker state behind: no detector, no thread limit,
    no environment variable (the demo trains in the same process)."""
    import cv2
    import mtcnn  # noqa: F401  its first import sets KMP_INIT_AT_FORK (through joblib): a library's, not the build's
    import tensorflow as tf

    from mobilefacenet_k210.data import local_runner

    cv2_threads = cv2.getNumThreads()
    cv2.setNumThreads((os.cpu_count() or 1) + 5)  # a count no build chooses: a limit set by the build would show
    before = (cv2.getNumThreads(), dict(os.environ), _live_aligners(),
              tf.config.threading.get_intra_op_parallelism_threads(),
              tf.config.threading.get_inter_op_parallelism_threads())
    try:
        one = build(orl_small, tmp_path / "one", load_build_config(policy="none", workers=1, val_fraction=0.25),
                    progress=False)
        assert local_runner._WORKER == {}
        assert (cv2.getNumThreads(), dict(os.environ), _live_aligners(),
                tf.config.threading.get_intra_op_parallelism_threads(),
                tf.config.threading.get_inter_op_parallelism_threads()) == before
    finally:
        cv2.setNumThreads(cv2_threads)
    two = build(orl_small, tmp_path / "two", load_build_config(policy="none", workers=2, val_fraction=0.25),
                progress=False)
    assert one["faces"] == two["faces"] == 12 and two["workers"] == 2
    assert shard_digests(tmp_path / "one") == shard_digests(tmp_path / "two")
    assert json.loads((tmp_path / "two" / "metadata.json").read_text())["detector"]["name"] == "mtcnn"


def test_beam_direct_runner_equals_local(tmp_path, orl_small):
    """The DirectRunner in this process, and with 2 worker subprocesses (each builds its own MTCNN):
    the same shards as the local runner, and the photos were aligned in the subprocesses only."""
    pytest.importorskip("apache_beam")
    local = build(orl_small, tmp_path / "local", load_build_config(policy="none", workers=1, val_fraction=0.25),
                  progress=False)
    beam = build(orl_small, tmp_path / "beam",
                 load_build_config(policy="none", runner="beam", val_fraction=0.25), progress=False)
    assert local["records"] == beam["records"] and beam["runner"] == "beam"
    assert shard_digests(tmp_path / "local") == shard_digests(tmp_path / "beam")
    assert beam["align_processes"] == [os.getpid()] and beam["workers"] is None
    multi = build(orl_small, tmp_path / "beam2", load_build_config(
        policy="none", runner="beam", val_fraction=0.25,
        beam_options=["--direct_num_workers=2", "--direct_running_mode=multi_processing"]), progress=False)
    assert multi["workers"] == 2 and multi["faces"] == local["faces"] == 12
    assert 1 <= len(multi["align_processes"]) <= 2 and os.getpid() not in multi["align_processes"]
    assert shard_digests(tmp_path / "local") == shard_digests(tmp_path / "beam2")
    assert (tmp_path / "local" / "labels.txt").read_text() == (tmp_path / "beam" / "labels.txt").read_text()
    meta = tfrecord.load_metadata(tmp_path / "beam")
    assert meta["class_counts"] == tfrecord.load_metadata(tmp_path / "local")["class_counts"]
    # one writer for both runners: the same files, the contact sheet that the metadata names included
    files = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "beam").iterdir())
    assert set(meta["files"].values()) <= set(files) and "contact_sheet.png" in files
    assert (tmp_path / "beam" / "contact_sheet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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


def _one_line_error(capsys, *names) -> str:
    """The CLI's stderr: one error line that names each of ``names``."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ": error: " in err, err
    for name in names:
        assert str(name) in err, (name, err)
    return err


def test_build_input_errors_are_one_line(tmp_path, capsys, monkeypatch):
    """RAW a stray file, RAW unlistable, a non-UTF-8 .lst, OUT equal to or inside RAW: exit 2, one line."""
    from mobilefacenet_k210.cli import main

    quiet = ["--aligned", "--workers", "1", "--quiet"]
    (tmp_path / "photos.txt").write_text("not a folder")
    assert main(["build-tfrecords", str(tmp_path / "photos.txt"), str(tmp_path / "out"), *quiet]) == 2
    assert "not a folder of identity folders" in _one_line_error(capsys, tmp_path / "photos.txt")
    (tmp_path / "bad.lst").write_bytes(b"1\tid0/caf\xe9.png\t0\n")
    assert main(["build-tfrecords", str(tmp_path / "bad.lst"), str(tmp_path / "out"), *quiet]) == 2
    assert "UTF-8" in _one_line_error(capsys, tmp_path / "bad.lst")
    raw = _write_aligned(tmp_path / "raw", [2])
    for out in (raw, raw / "out", tmp_path):
        assert main(["build-tfrecords", str(raw), str(out), *quiet]) == 2
        assert "apart from the input" in _one_line_error(capsys, out, raw)
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == raw:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert main(["build-tfrecords", str(raw), str(tmp_path / "out"), *quiet]) == 2
    assert "cannot list" in _one_line_error(capsys, raw)
    assert not (tmp_path / "out" / "metadata.json").exists()


def test_out_with_another_dataset_needs_overwrite_and_survives_a_failed_one(tmp_path, capsys):
    """OUT built from other input: refused; with --overwrite a build that fails leaves it whole; one that
    succeeds replaces it and leaves nothing beside it."""
    from mobilefacenet_k210.cli import main

    quiet = ["--aligned", "--workers", "1", "--quiet", "--val-fraction", "0"]
    first = _write_aligned(tmp_path / "first", [3, 3], seed=1)
    out = tmp_path / "out"
    assert main(["build-tfrecords", str(first), str(out), "--policy", "none", *quiet]) == 0
    before = shard_digests(out)
    assert main(["build-tfrecords", str(first), str(out), "--policy", "none", *quiet]) == 0  # same input: a rebuild
    assert shard_digests(out) == before
    capsys.readouterr()
    second = _write_aligned(tmp_path / "second", [2, 4, 5], seed=2)
    assert main(["build-tfrecords", str(second), str(out), "--policy", "none", *quiet]) == 2
    assert "--overwrite" in _one_line_error(capsys, out)
    # the seed policy drops every identity of 2..5 faces: this build fails after all its per-identity work
    assert main(["build-tfrecords", str(second), str(out), "--overwrite", *quiet]) == 2
    assert "--policy none" in _one_line_error(capsys)
    assert shard_digests(out) == before and (out / "labels.txt").read_text().splitlines() == ["id00", "id01"]
    assert main(["build-tfrecords", str(second), str(out), "--policy", "none", "--overwrite", *quiet]) == 0
    assert tfrecord.load_metadata(out)["num_classes"] == 3 and sum(_records(out)["train"].values()) == 11
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first", "out", "second"]


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    """Two small shard folders built from aligned crops (3 and 2 identities)."""
    root = tmp_path_factory.mktemp("sets")
    cfg = load_build_config(policy="none", aligned=True, workers=1, val_fraction=0.0)
    for name, counts in (("a", [3, 4, 2]), ("b", [2, 3])):
        build(_write_aligned(root / f"raw_{name}", counts, seed=len(counts)), root / name, cfg, progress=False)
    return root / "a", root / "b"


def _damaged_copy(src: Path, dst: Path, how: str) -> Path:
    """A copy of a shard folder whose first train shard is truncated or has a flipped byte."""
    import shutil

    shutil.copytree(src, dst)
    shard = tfrecord.shard_files(dst, "train")[0]
    data = bytearray(shard.read_bytes())
    if how == "truncated":
        data = data[:-10]
    else:
        data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    return shard


def test_merge_refuses_its_inputs_and_existing_datasets_and_names_a_corrupt_shard(tmp_path, two_sets, capsys):
    from mobilefacenet_k210.cli import main

    a, b = two_sets
    for out in (a, a / "m", a.parent):
        assert main(["merge", str(a), str(b), str(out)]) == 2
        assert "apart from the input" in _one_line_error(capsys, out)
    assert main(["merge", str(a), str(b), str(tmp_path / "m")]) == 0
    capsys.readouterr()
    assert main(["merge", str(b), str(a), str(tmp_path / "m")]) == 2
    assert "--overwrite" in _one_line_error(capsys, tmp_path / "m")
    assert (tmp_path / "m" / "labels.txt").read_text().splitlines()[:2] == ["a/id00", "a/id01"]
    shard = _damaged_copy(b, tmp_path / "bad", "corrupt")
    assert main(["merge", str(a), str(tmp_path / "bad"), str(tmp_path / "m"), "--overwrite"]) == 2
    assert "corrupt" in _one_line_error(capsys, shard)
    assert tfrecord.load_metadata(tmp_path / "m")["num_classes"] == 5  # the failed merge left the old one whole
    assert main(["merge", str(b), str(a), str(tmp_path / "m"), "--overwrite"]) == 0
    assert (tmp_path / "m" / "labels.txt").read_text().splitlines()[:2] == ["b/id00", "b/id01"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "m"]


@pytest.mark.parametrize("how", ["truncated", "corrupt"])
def test_inspect_names_a_damaged_shard(tmp_path, two_sets, capsys, how):
    from mobilefacenet_k210.cli import main

    shard = _damaged_copy(two_sets[0], tmp_path / "bad", how)
    assert main(["inspect", str(tmp_path / "bad")]) == 2
    assert "truncated or corrupt" in _one_line_error(capsys, shard)


def test_yunet_builds_the_same_faces_and_says_so_in_metadata(tmp_path, orl_small):
    """--detector yunet: every real ORL face found, 2 processes, and metadata.json names the detector and its model."""
    from mobilefacenet_k210.data.detector_weights import YUNET_SHA256

    summary = build(orl_small, tmp_path / "yunet", load_build_config(policy="none", workers=2, detector="yunet"),
                    progress=False)
    assert summary["faces"] == 12
    meta = json.loads((tmp_path / "yunet" / "metadata.json").read_text())
    assert meta["detector"]["name"] == "yunet" and meta["detector"]["model_sha256"] == YUNET_SHA256
    assert meta["build_config"]["detector"] == "yunet"
