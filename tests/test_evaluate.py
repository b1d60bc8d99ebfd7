"""Evaluation: the verification protocol against plain re-computations, safe .bin files, backends that
agree (Keras, TFLite float/int8, kmodel in the nncase simulator), own-photo pairs, the CLI, and the
training callback."""
import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from mobilefacenet_k210 import cli
from mobilefacenet_k210.evaluate import bins, metrics, pairs


# --- helpers --------------------------------------------------------------------------------------
def unit_pairs(cosines: np.ndarray) -> np.ndarray:
    """Embeddings (2N, 2) whose pair i are unit vectors with cosine ``cosines[i]`` (distance 2 - 2cos)."""
    emb = np.zeros((2 * len(cosines), 2))
    emb[0::2, 0] = 1.0
    emb[1::2, 0] = cosines
    emb[1::2, 1] = np.sqrt(1.0 - np.square(cosines))
    return emb


def plain_fold_indices(n: int, k: int):
    """KFold(shuffle=False) written out: the first n % k folds get one extra item."""
    sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
    start = 0
    for size in sizes:
        test = list(range(start, start + size))
        yield [i for i in range(n) if i not in test], test
        start += size


def plain_distances(emb: np.ndarray) -> list:
    out = []
    for i in range(len(emb) // 2):
        a, b = emb[2 * i], emb[2 * i + 1]
        a = a / np.sqrt(sum(v * v for v in a))
        b = b / np.sqrt(sum(v * v for v in b))
        out.append(sum((x - y) ** 2 for x, y in zip(a, b)))
    return out


def identity_crops(num_ids: int, per_id: int, seed: int = 0) -> dict:
    """Aligned-size crops: each identity a fixed random 4x4 colour pattern, upscaled, plus noise."""
    import cv2

    rng = np.random.default_rng(seed)
    out = {}
    for i in range(num_ids):
        base = cv2.resize(rng.integers(0, 256, (4, 4, 3)).astype(np.float32), (112, 112),
                          interpolation=cv2.INTER_NEAREST)
        out[f"id{i}"] = [np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
                         for _ in range(per_id)]
    return out


def write_crop_tree(root: Path, crops: dict) -> Path:
    import cv2

    for name, images in crops.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for j, img in enumerate(images):
            cv2.imwrite(str(root / name / f"{j}.png"), img[:, :, ::-1])
    return root


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A tiny Keras embedding model saved as a run folder, plus float (batch 1 and dynamic) and int8 TFLite."""
    import tensorflow as tf

    from mobilefacenet_k210.export.tflite import convert_float, convert_int8
    from mobilefacenet_k210.model.io import save_embedding_model

    tf.keras.utils.set_random_seed(1)
    # MobileFaceNet's shape in miniature (explicit padding, global depthwise head): nncase compiles it
    inp = tf.keras.Input((112, 112, 3))
    x = tf.keras.layers.ZeroPadding2D(1)(inp)
    x = tf.keras.layers.Conv2D(8, 3, strides=2, use_bias=False)(x)
    x = tf.keras.layers.BatchNormalization()(x)
    x = tf.keras.layers.ReLU()(x)
    x = tf.keras.layers.ZeroPadding2D(1)(x)
    x = tf.keras.layers.DepthwiseConv2D(3, strides=2)(x)
    x = tf.keras.layers.Conv2D(16, 1, activation="relu")(x)
    x = tf.keras.layers.DepthwiseConv2D(28)(x)
    x = tf.keras.layers.Flatten()(tf.keras.layers.Conv2D(16, 1)(x))
    model = tf.keras.Model(inp, x, name="tiny")
    root = tmp_path_factory.mktemp("models")
    save_embedding_model(model, root / "run")
    convert_float(model, root / "batch1.tflite")
    (root / "dynamic.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    calib = np.concatenate(list(identity_crops(4, 4, seed=5).values()))
    convert_int8(model, calib, root / "int8.tflite")
    return root


# --- metrics --------------------------------------------------------------------------------------
def test_verify_known_accuracy():
    # 10 folds of 10 pairs: 5 genuine at distance 0.5, 4 impostors at 2.0, 1 impostor at 0.5 that no
    # threshold can separate: every fold scores 9/10; the first best threshold on the grid is 0.51.
    cos = np.tile([0.75] * 5 + [0.0] * 4 + [0.75], 10)
    issame = np.tile([True] * 5 + [False] * 5, 10)
    r = metrics.verify(unit_pairs(cos), issame)
    assert r["accuracy"] == pytest.approx(0.9)
    assert r["accuracy_std"] == pytest.approx(0.0)
    assert r["best_threshold"] == pytest.approx(0.51)
    assert r["n_pairs"] == 100 and r["n_genuine"] == 50 and r["n_impostor"] == 50
    assert r["tar_at_far"]["0.1"] is not None and r["tar_at_far"]["0.01"] is None  # 45 impostors per training set


def test_verify_matches_plain_bruteforce():
    rng = np.random.default_rng(3)
    n = 150
    issame = rng.random(n) < 0.5
    a = rng.normal(size=(n, 8))
    b = np.where(issame[:, None], a + rng.normal(scale=1.2, size=(n, 8)), rng.normal(size=(n, 8)))
    emb = np.empty((2 * n, 8))
    emb[0::2], emb[1::2] = a, b

    dist = plain_distances(emb)
    thresholds = [i * 0.01 for i in range(400)]
    fold_acc = []
    for train, test in plain_fold_indices(n, 10):
        def acc(idx, t):
            return sum((dist[i] < t) == issame[i] for i in idx) / len(idx)
        best_t, best = None, -1.0
        for t in thresholds:
            v = acc(train, t)
            if v > best + 1e-12:
                best_t, best = t, v
        fold_acc.append(acc(test, best_t))
    r = metrics.verify(emb, issame)
    assert r["accuracy"] == pytest.approx(np.mean(fold_acc), abs=1e-12)
    assert r["accuracy_std"] == pytest.approx(np.std(fold_acc), abs=1e-12)
    assert 0.6 < r["accuracy"] < 0.99  # neither trivial nor chance: the check can fail
    assert 0.5 < r["roc"]["auc"] <= 1.0


def test_tar_at_far_with_tied_distances():
    # Many impostors share exactly the same distances: InsightFace's interp1d crashes on such data.
    rng = np.random.default_rng(7)
    n = 400
    issame = np.arange(n) % 2 == 0
    levels = np.array([1.0, 0.5, 0.2, 0.0, -0.3])  # cosines; impostors draw from these few values
    cos = np.where(issame, rng.choice([0.9, 0.8, 0.5], size=n), rng.choice(levels, size=n))
    emb = unit_pairs(cos)
    r = metrics.verify(emb, issame)
    dist = plain_distances(emb)
    for far in (0.1, 0.01):
        tars = []
        for train, test in plain_fold_indices(n, 10):
            impostors = [dist[i] for i in train if not issame[i]]
            # largest threshold whose training FAR stays within the target, among all cut points
            candidates = sorted(set(impostors)) + [max(impostors) + 1.0]
            ok = [t for t in candidates if sum(d < t for d in impostors) / len(impostors) <= far]
            t = max(ok)
            genuine = [dist[i] for i in test if issame[i]]
            tars.append(sum(d < t for d in genuine) / len(genuine))
        got = r["tar_at_far"][metrics.far_key(far)]
        assert got["tar"] == pytest.approx(np.mean(tars), abs=1e-12)
    assert r["tar_at_far"]["0.001"] is None  # 180 impostors per training set cannot measure FAR 1e-3


@pytest.mark.parametrize("emb, issame, message", [
    (np.ones((5, 4)), [True, False], "two rows"),
    (np.ones((40, 4)), [True] * 20, "all genuine or all impostor"),
    (np.full((40, 4), np.nan), [True, False] * 10, "NaN"),
    (np.ones((8, 4)), [True, False] * 2, "cannot be split"),
])
def test_verify_refuses_bad_input(emb, issame, message):
    with pytest.raises(metrics.VerificationError, match=message):
        metrics.verify(emb, issame)


# --- .bin files -----------------------------------------------------------------------------------
def test_bin_written_and_read_back_is_identical(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 112, 112, 3), dtype=np.uint8)
    issame = np.array([True, False, True, True, False, False])
    path = bins.write_bin(tmp_path / "set.bin", images, issame)
    back, labels = bins.load_bin(path, progress=False)
    assert back.dtype == np.uint8 and np.array_equal(back, images)
    assert labels.dtype == bool and np.array_equal(labels, issame)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    smooth = np.repeat(np.repeat(rng.integers(0, 256, (12, 14, 14, 3), dtype=np.uint8), 8, 1), 8, 2)
    jpg, _ = bins.load_bin(bins.write_bin(tmp_path / "jpg.bin", smooth, issame, fmt="jpg"), progress=False)
    assert np.abs(jpg.astype(int) - smooth).mean() < 12  # lossy but the same pictures (random ones differ by ~85)


def test_bin_in_insightface_legacy_encodings(tmp_path):
    # Python 3 bytes under protocol 2 go through _codecs.encode; some conversions store numpy bools.
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
    encoded = [bins.encode_image(img) for img in images]
    (tmp_path / "p2.bin").write_bytes(pickle.dumps((encoded, np.array([True, False])), protocol=2))
    back, labels = bins.load_bin(tmp_path / "p2.bin", progress=False)
    assert np.array_equal(back, images) and labels.tolist() == [True, False]


class _Hostile:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


class _HostileEval:
    def __reduce__(self):
        return (eval, ("__import__('pathlib').Path('PWNED').touch()",))


def test_hostile_pickle_is_refused_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "pwned_dir"
    for name, payload in [("a.bin", ([_Hostile(str(target))], [True])), ("b.bin", _HostileEval())]:
        (tmp_path / name).write_bytes(pickle.dumps(payload))
        with pytest.raises(bins.BinFileError, match=rf"{name}.*refused global .*nothing from it was run"):
            bins.load_bin(tmp_path / name, progress=False)
    assert not target.exists() and not (tmp_path / "PWNED").exists()
    # the same file really would run code under a plain pickle.load: the test can fail
    pickle.loads((tmp_path / "a.bin").read_bytes())
    assert target.is_dir()


def test_bad_bins_give_clear_errors(tmp_path):
    img = bins.encode_image(np.zeros((112, 112, 3), np.uint8))
    cases = {
        "short.bin": ([img] * 3, [True, False]),
        "notimg.bin": ([img, b"not an image"], [True]),
        "size.bin": ([img, bins.encode_image(np.zeros((100, 90, 3), np.uint8))], [False]),
        "shape.bin": {"images": [img]},
    }
    expected = {"short.bin": "3 images for 2 pairs", "notimg.bin": "image 1: not a decodable image",
                "size.bin": "90x100, expected aligned 112x112", "shape.bin": "expected a pickled pair"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(pickle.dumps(content))
        with pytest.raises(bins.BinFileError, match=expected[name]):
            bins.load_bin(tmp_path / name, progress=False)
    (tmp_path / "junk.bin").write_bytes(b"\x00garbage")
    with pytest.raises(bins.BinFileError, match="junk.bin: not a readable pickle"):
        bins.load_bin(tmp_path / "junk.bin")
    with pytest.raises(bins.BinFileError, match="no such .bin"):
        bins.load_bin(tmp_path / "missing.bin")


# --- backends -------------------------------------------------------------------------------------
def test_keras_and_tflite_backends_agree(tiny_models):
    from mobilefacenet_k210.runtime.backends import KerasBackend, TFLiteBackend, load_backend

    images = np.concatenate(list(identity_crops(3, 3, seed=2).values()))
    keras = load_backend(tiny_models / "run")
    assert isinstance(keras, KerasBackend)
    ref = keras.embed(images, batch_size=4, progress=False)
    assert ref.shape == (9, 16) and np.abs(ref).max() > 1e-3
    for name in ("batch1.tflite", "dynamic.tflite"):
        lite = load_backend(tiny_models / name)
        assert isinstance(lite, TFLiteBackend) and lite.dynamic_batch == (name == "dynamic.tflite")
        np.testing.assert_allclose(lite.embed(images, batch_size=4, progress=False), ref, rtol=1e-4, atol=1e-4)
    int8 = load_backend(tiny_models / "int8.tflite")
    assert int8.input["dtype"] == np.int8
    agree = metrics.cosine_agreement(ref, int8.embed(images, progress=False))
    assert agree["min"] > 0.95

    flipped = keras.embed(images, batch_size=4, flip=True, progress=False)
    mirror = keras.embed(np.ascontiguousarray(images[:, :, ::-1]), progress=False)
    np.testing.assert_allclose(flipped, ref + mirror, rtol=1e-5, atol=1e-5)


def test_kmodel_backend_matches_keras(tiny_models, tmp_path):
    from mobilefacenet_k210.runtime.backends import KmodelBackend, load_backend
    from mobilefacenet_k210.export.kmodel import compile_kmodel

    compile_kmodel(tiny_models / "batch1.tflite", tmp_path / "float.kmodel", calibration=None)
    images = np.concatenate(list(identity_crops(2, 3, seed=3).values()))
    kmodel = load_backend(tmp_path / "float.kmodel")
    assert isinstance(kmodel, KmodelBackend)
    agree = metrics.cosine_agreement(load_backend(tiny_models / "run").embed(images, progress=False),
                                     kmodel.embed(images, batch_size=4, progress=False))
    assert agree["min"] > 0.999


def test_backends_refuse_bad_inputs(tiny_models, tmp_path):
    from mobilefacenet_k210.runtime.backends import BackendError, load_backend
    from mobilefacenet_k210.model.io import ModelFileError

    with pytest.raises(ModelFileError, match="no such file"):
        load_backend(tmp_path / "nothing")
    with pytest.raises(BackendError, match="no such TFLite"):
        load_backend(tmp_path / "nothing.tflite")
    (tmp_path / "bad.tflite").write_bytes(b"not a flatbuffer")
    with pytest.raises(BackendError, match="bad.tflite: cannot load as TFLite"):
        load_backend(tmp_path / "bad.tflite")
    with pytest.raises(BackendError, match="expected uint8 RGB crops"):
        load_backend(tiny_models / "dynamic.tflite").embed(np.zeros((2, 112, 112, 3), np.float32))


# --- own photos -----------------------------------------------------------------------------------
def test_pairs_file_errors(tmp_path):
    write_crop_tree(tmp_path / "photos", identity_crops(2, 2))
    (tmp_path / "pairs.txt").write_text("id0/0.png id0/1.png 1\nid0/0.png id1/7.png 0\nid9/1.png id1/0.png 0\n")
    with pytest.raises(pairs.PairsError, match=r"2 image\(s\) named in the file do not exist.*id1/7.png"):
        pairs.read_pairs_file(tmp_path / "pairs.txt", tmp_path / "photos")
    (tmp_path / "bad.txt").write_text("# comment\nid0/0.png id0/1.png yes\n")
    with pytest.raises(pairs.PairsError, match=r"bad.txt:2: expected 'IMAGE_A IMAGE_B 1\|0'"):
        pairs.read_pairs_file(tmp_path / "bad.txt", tmp_path / "photos")
    with pytest.raises(pairs.PairsError, match="no such pairs file"):
        pairs.read_pairs_file(tmp_path / "none.txt")


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(pairs.PairsError, match="empty: no identity sub-folders with images"):
        pairs.folder_pairs(tmp_path / "empty")
    write_crop_tree(tmp_path / "one", identity_crops(1, 3))
    with pytest.raises(pairs.PairsError, match="only one identity folder"):
        pairs.folder_pairs(tmp_path / "one")
    write_crop_tree(tmp_path / "singles", identity_crops(3, 1))
    with pytest.raises(pairs.PairsError, match="single image"):
        pairs.folder_pairs(tmp_path / "singles")
    with pytest.raises(pairs.PairsError, match="no such folder"):
        pairs.folder_pairs(tmp_path / "absent")


def test_folder_pairs_are_balanced_capped_and_deterministic(tmp_path):
    crops = identity_crops(4, 5)
    root = write_crop_tree(tmp_path / "tree", crops)

    def crops_of(path):
        return crops[path.parent.name][int(path.stem)]
    first = pairs.folder_pairs(root, max_positive=25, seed=3)
    assert first == pairs.folder_pairs(root, max_positive=25, seed=3)
    assert first != pairs.folder_pairs(root, max_positive=25, seed=4)
    same = [p for p in first if p[2]]
    diff = [p for p in first if not p[2]]
    assert len(same) == 25 and len(diff) == 25  # 40 possible same-person pairs, capped at 25
    assert all(a.parent == b.parent for a, b, _ in same) and all(a.parent != b.parent for a, b, _ in diff)
    assert len({(a, b) for a, b, _ in first}) == 50
    assert len(pairs.folder_pairs(root, max_positive=1000)) == 80
    loaded = pairs.load_pair_images(first, aligned=True, progress=False)
    assert loaded.images.shape == (100, 112, 112, 3) and loaded.issame.sum() == 25 and not loaded.dropped
    assert len(loaded.unique) <= 20 and np.array_equal(loaded.unique[loaded.index], loaded.images)
    a, b, _ = first[0]
    assert np.array_equal(loaded.images[0], crops_of(a)) and np.array_equal(loaded.images[1], crops_of(b))


def test_aligned_flag_refuses_unaligned_photos(tmp_path):
    import cv2

    (tmp_path / "a").mkdir()
    cv2.imwrite(str(tmp_path / "a" / "x.png"), np.zeros((100, 80, 3), np.uint8))
    with pytest.raises(pairs.PairsError, match=r"x.png: 80x100 is not an aligned 112x112 crop"):
        pairs.load_pair_images([(tmp_path / "a" / "x.png", tmp_path / "a" / "x.png", True)], aligned=True,
                               progress=False)


def test_folder_with_mtcnn_alignment_on_real_faces(tmp_path):
    import shutil

    from mobilefacenet_k210.data.orl import fetch_orl

    orl = fetch_orl()
    for person in ("s1", "s2", "s3"):
        (tmp_path / person).mkdir()
        for j in (1, 2, 3):
            shutil.copy(orl / person / f"{j}.pgm", tmp_path / person / f"{j}.pgm")
    (tmp_path / "s3" / "3.pgm").write_bytes(np.full((112, 92), 128, np.uint8).tobytes())  # not an image
    skipped = pairs.load_pair_images(pairs.folder_pairs(tmp_path), progress=False)  # left out, not fatal
    assert [(p.name, lost) for p, _, lost in skipped.unreadable] == [("3.pgm", len(skipped.dropped))]
    assert skipped.dropped and all("unreadable photo" in why and "s3/3.pgm" in why for _, why in skipped.dropped)
    assert len(skipped.issame) + len(skipped.dropped) == 18
    import cv2

    cv2.imwrite(str(tmp_path / "s3" / "3.pgm"), np.full((112, 92), 128, np.uint8))  # a valid photo, no face
    loaded = pairs.load_pair_images(pairs.folder_pairs(tmp_path), progress=False)
    assert loaded.images.shape[1:] == (112, 112, 3)
    assert loaded.dropped and all("s3/3.pgm" in why for _, why in loaded.dropped)
    assert len(loaded.issame) + len(loaded.dropped) == 18


# --- command line and report ----------------------------------------------------------------------
def test_cli_evaluate_bin_pairs_embeddings_compare(tiny_models, tmp_path, capsys):
    crops = identity_crops(6, 4, seed=11)
    root = write_crop_tree(tmp_path / "crops", crops)
    lines = [f"id{i}/0.png id{i}/{j}.png 1" for i in range(6) for j in (1, 2, 3)]
    lines += [f"id{i}/{j}.png id{(i + 1) % 6}/{j}.png 0" for i in range(6) for j in (0, 1, 2)]
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    pair_list = pairs.folder_pairs(root, seed=1)
    loaded = pairs.load_pair_images(pair_list, aligned=True, progress=False)
    bins.write_bin(tmp_path / "lfw.bin", loaded.images, loaded.issame)
    keras, lite = str(tiny_models / "run"), str(tiny_models / "batch1.tflite")
    out = tmp_path / "report"

    code = cli.main(["evaluate", "--model", keras, "--model", lite, "--bin", str(tmp_path / "lfw.bin"),
                     "--pairs", str(tmp_path / "pairs.txt"), "--root", str(root), "--aligned", "--flip",
                     "--nfolds", "4", "--compare", keras, lite, "--json", str(tmp_path / "r.json"),
                     "--out", str(out), "--save-bin", str(tmp_path / "mine.bin")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| Model | LFW | pairs |" in printed and "(+0.00)" in printed and "drop +0.00 points" in printed
    result = json.loads((tmp_path / "r.json").read_text())
    for model in (keras, lite):
        for set_name in ("LFW", "pairs"):
            r = result["results"][model][set_name]
            assert {"accuracy", "accuracy_std", "best_threshold", "tar_at_far"} <= set(r)
    assert result["results"][keras]["LFW"]["accuracy"] == pytest.approx(result["results"][lite]["LFW"]["accuracy"])
    assert result["compare"]["LFW"]["cosine"]["min"] > 0.9999
    for name in ("roc_LFW.png", "roc_pairs.png", "cosine_LFW.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / name).stat().st_size > 10000
    assert "| Model | LFW | pairs |" in (out / "results.md").read_text()
    assert len(list(out.glob("dist_*.png"))) == 4
    assert bins.load_bin(tmp_path / "mine.bin", progress=False)[1].size == 36

    images, issame = bins.load_bin(tmp_path / "lfw.bin", progress=False)
    emb = tmp_path / "emb.npy"
    np.save(emb, np.random.default_rng(0).normal(size=(len(images), 8)))
    np.save(tmp_path / "issame.npy", issame)
    assert cli.main(["evaluate", "--embeddings", str(emb), "--issame", str(tmp_path / "issame.npy"),
                     "--json", str(tmp_path / "e.json")]) == 0
    r = json.loads((tmp_path / "e.json").read_text())["results"]["emb.npy"]["issame"]
    assert {"accuracy", "accuracy_std", "best_threshold", "tar_at_far"} <= set(r)


def test_cli_evaluate_clear_errors(tiny_models, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    cases = [
        (["--model", str(tiny_models / "run")], "no verification set"),
        (["--bin", str(tmp_path / "x.bin")], "no model"),
        (["--model", str(tiny_models / "run"), "--folder", str(tmp_path / "empty")], "no identity sub-folders"),
        (["--embeddings", str(tmp_path / "e.npy")], "--embeddings and --issame go together"),
        (["--embeddings", str(tmp_path / "e.npy"), "--issame", str(tmp_path / "i.npy")], "e.npy: no such"),
    ]
    for argv, message in cases:
        assert cli.main(["evaluate"] + argv) == 2
        assert message in capsys.readouterr().err


def test_markdown_table_orders_known_sets_and_shows_drop():
    from mobilefacenet_k210.evaluate import report

    def r(acc):
        return {"accuracy": acc, "accuracy_std": 0.01, "tar_at_far": {}}
    table = report.markdown_table({"keras": {"mine": r(0.9), "AgeDB-30": r(0.95), "LFW": r(0.99)},
                                   "kmodel": {"LFW": r(0.985), "mine": r(0.91)}})
    lines = table.splitlines()
    assert lines[0] == "| Model | LFW | AgeDB-30 | mine |"
    assert lines[2] == "| keras | 99.00 ± 1.00 | 95.00 ± 1.00 | 90.00 ± 1.00 |"
    assert lines[3] == "| kmodel | 98.50 ± 1.00 (-0.50) | - | 91.00 ± 1.00 (+1.00) |"
    assert report.set_name("/data/cfp_fp.bin") == "CFP-FP" and report.set_name("x/own_set.bin") == "own_set"


# --- training callback ----------------------------------------------------------------------------
def test_callback_under_strategy_feeds_checkpoint(tmp_path):
    import tensorflow as tf

    from mobilefacenet_k210.evaluate.callback import VerificationCallback

    crops = identity_crops(5, 4, seed=4)
    root = write_crop_tree(tmp_path / "crops", crops)
    loaded = pairs.load_pair_images(pairs.folder_pairs(root), aligned=True, progress=False)
    bins.write_bin(tmp_path / "a.bin", loaded.images, loaded.issame)
    bins.write_bin(tmp_path / "b.bin", loaded.images[:20], loaded.issame[:10])

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        inp = tf.keras.Input((112, 112, 3))
        x = tf.keras.layers.Conv2D(4, 5, strides=4)(inp)
        emb = tf.keras.layers.Dense(8)(tf.keras.layers.GlobalAveragePooling2D()(x))
        embedding = tf.keras.Model(inp, emb)
        full = tf.keras.Model(inp, tf.keras.layers.Dense(5)(emb))
        full.compile(tf.keras.optimizers.SGD(0.5),
                     tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = VerificationCallback(embedding, {"a": tmp_path / "a.bin", "b": tmp_path / "b.bin"},
                                    batch_size=16, flip=True, nfolds=5, verbose=0)
    checkpoint = tf.keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"), monitor="verification_accuracy",
                                                    mode="max", save_best_only=True)
    from mobilefacenet_k210.preprocessing import normalize

    x_train = normalize(np.concatenate(list(crops.values())))
    y_train = np.repeat(np.arange(5), 4)
    history = full.fit(x_train, y_train, epochs=3, batch_size=10, verbose=0, callbacks=[callback, checkpoint])
    accs = history.history["verification_accuracy"]
    assert len(accs) == 3
    for epoch in range(3):
        per_set = [history.history[f"verification_accuracy/{n}"][epoch] for n in ("a", "b")]
        assert accs[epoch] == pytest.approx(np.mean(per_set))
    assert checkpoint.best == pytest.approx(max(accs))
    assert (tmp_path / "best.keras").is_file()
    # the callback measures exactly what `evaluate` measures for the same weights
    direct = metrics.verify(_embed(embedding, loaded.images), loaded.issame, nfolds=5)["accuracy"]
    assert callback.evaluate()["verification_accuracy/a"] == pytest.approx(direct)


def _embed(model, images):
    from mobilefacenet_k210.runtime.backends import KerasBackend

    return KerasBackend(model).embed(images, batch_size=16, flip=True, progress=False)


def test_bin_sets_embed_each_distinct_photo_once():
    from mobilefacenet_k210.evaluate import distinct_images

    rng = np.random.default_rng(0)
    photos = rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    rows = photos[[0, 1, 0, 2, 2, 1]]
    unique, index = distinct_images(rows)
    assert len(unique) == 3
    np.testing.assert_array_equal(unique[index], rows)


# --- user errors and what the report really draws --------------------------------------------------
def one_error_line(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mfk210 evaluate: error: "), err
    for needle in needles:
        assert needle in err, err


def test_cli_non_utf8_pairs_file(tiny_models, tmp_path, capsys):
    root = write_crop_tree(tmp_path / "crops", identity_crops(2, 2))
    (tmp_path / "pairs.txt").write_bytes("id0/0.png id0/1.png 1\nid0/0.png id1/0.png 0 # caf\u00e9\n".encode("latin-1"))
    assert cli.main(["evaluate", "--model", str(tiny_models / "run"), "--pairs", str(tmp_path / "pairs.txt"),
                     "--root", str(root), "--aligned"]) == 2
    one_error_line(capsys, "pairs.txt", "not UTF-8", "save the pairs file as UTF-8")


def test_cli_one_undecodable_photo_is_skipped_with_one_warning(tiny_models, tmp_path, capsys):
    root = write_crop_tree(tmp_path / "crops", identity_crops(3, 3, seed=2))
    (root / "id0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code = cli.main(["evaluate", "--model", str(tiny_models / "run"), "--folder", str(root), "--aligned",
                     "--nfolds", "2", "--json", str(tmp_path / "r.json")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = [line for line in re.split(r"[\r\n]+", captured.err) if line.strip()]  # progress bars use \r
    warnings = [line for line in lines if line.startswith("warning")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: skipped ") and "broken.png" in warnings[0], lines
    assert [line for line in lines if "broken.png" in line] == warnings
    assert "pair(s) left out" in warnings[0] and "broken.png" not in captured.out
    r = json.loads((tmp_path / "r.json").read_text())["results"][str(tiny_models / "run")]["crops"]
    assert r["pairs_dropped"] > 0 and r["n_pairs"] == r["pairs_total"] - r["pairs_dropped"]


def test_cli_unwritable_outputs_fail_before_any_work(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    np.save(tmp_path / "e.npy", np.zeros((4, 2)))
    np.save(tmp_path / "i.npy", np.array([True, False]))
    common = ["evaluate", "--embeddings", str(tmp_path / "e.npy"), "--issame", str(tmp_path / "i.npy")]
    assert cli.main(common + ["--json", str(tmp_path / "afile" / "sub" / "r.json")]) == 2
    one_error_line(capsys, "r.json", "--json", "afile is a file, not a folder")
    assert cli.main(common + ["--out", str(tmp_path / "afile")]) == 2
    one_error_line(capsys, "afile", "--out names a file")
    assert cli.main(common + ["--json", str(tmp_path)]) == 2
    one_error_line(capsys, "--json names a folder")


def test_roc_points_written_and_drawn_match_a_recomputation(tmp_path, capsys, monkeypatch):
    from mobilefacenet_k210 import atomic

    rng = np.random.default_rng(4)
    n = 80
    issame = rng.random(n) < 0.5
    a = rng.normal(size=(n, 6))
    b = np.where(issame[:, None], a + rng.normal(scale=1.0, size=(n, 6)), rng.normal(size=(n, 6)))
    emb = np.empty((2 * n, 6))
    emb[0::2], emb[1::2] = a, b
    np.save(tmp_path / "emb.npy", emb)
    np.save(tmp_path / "issame.npy", issame)
    drawn = {}
    real_save = atomic.save_figure

    def recording_save(fig, path, **kwargs):
        drawn[Path(path).name] = {line.get_label(): (np.asarray(line.get_xdata()), np.asarray(line.get_ydata()))
                                  for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")}
        return real_save(fig, path, **kwargs)

    monkeypatch.setattr(atomic, "save_figure", recording_save)
    assert cli.main(["evaluate", "--embeddings", str(tmp_path / "emb.npy"), "--issame", str(tmp_path / "issame.npy"),
                     "--json", str(tmp_path / "r.json"), "--out", str(tmp_path / "report")]) == 0
    roc = json.loads((tmp_path / "r.json").read_text())["results"]["emb.npy"]["issame"]["roc"]
    fpr, tpr, thresholds = np.array(roc["fpr"]), np.array(roc["tpr"]), np.array(roc["thresholds"])
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0) and np.all(np.diff(thresholds) > 0)
    dist = np.array(plain_distances(emb))
    genuine, impostor = dist[issame], dist[~issame]
    for f, t, thr in zip(fpr, tpr, thresholds):  # accepted = distance at most the threshold
        assert t == pytest.approx(np.mean(genuine <= thr + 1e-9)) and f == pytest.approx(np.mean(impostor <= thr + 1e-9))
    auc = np.mean([(g < i) + 0.5 * (g == i) for g in genuine for i in impostor])
    assert roc["auc"] == pytest.approx(auc) and 0.6 < auc < 1.0  # a curve that is neither chance nor perfect
    (label, (x, y)), = drawn["roc_issame.png"].items()
    assert label.startswith("emb.npy") and (tmp_path / "report" / "roc_issame.png").is_file()
    np.testing.assert_array_equal(x, fpr[fpr > 0])
    np.testing.assert_array_equal(y, tpr[fpr > 0])
