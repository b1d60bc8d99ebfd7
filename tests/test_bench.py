"""`make bench-gpu`'s stage: a clear refusal without a GPU, the mixed vs float32 measurement path (run here
on the CPU at a tiny size) merged into results.json and the table, and a broken results.json named.
`make bench`'s detector stages (issue 15) at toy size: Beam with 2 processes, YuNet vs the plain MTCNN
loop, and the demo's protocol on YuNet crops."""
import json
import shutil
from pathlib import Path

import pytest
import tensorflow as tf

from mobilefacenet_k210.bench import run as bench
from mobilefacenet_k210.cli import main

TINY_MODEL = ["model.input_size=64", "model.width_multiplier=0.25", "model.embedding_size=32"]
TINY = {"batch_size": 8, "steps": 2, "require_gpu": False, "model_overrides": TINY_MODEL}


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="a GPU is visible")
def test_bench_gpu_refuses_without_a_gpu_and_says_how_to_get_one(tmp_path):
    with pytest.raises(bench.NoGPUError, match="tensorflow\\[and-cuda\\]"):
        bench.run_bench_gpu(tmp_path)
    assert not (tmp_path / "results.json").exists()


def test_gpu_figures_recomputed_from_raw_timings_and_merged_into_the_results(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"machine": "m", "date": "d", "params": 1_015_168}))
    bench.run_bench_gpu(tmp_path, **TINY)
    merged = json.loads((tmp_path / "results.json").read_text())
    assert merged["params"] == 1_015_168  # kept from `make bench`
    rates = {}
    for precision in ("mixed", "fp32"):
        images, seconds = merged[f"gpu_train_images_{precision}_b8"], merged[f"gpu_train_seconds_{precision}_b8"]
        assert images == 8 * 2 and seconds > 0
        rates[precision] = images / seconds
        assert merged[f"gpu_train_img_per_s_{precision}_b8"] == pytest.approx(rates[precision])
    ratio = rates["mixed"] / rates["fp32"]
    assert merged["gpu_mixed_over_fp32"] == pytest.approx(ratio)
    table = (tmp_path / "results.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| gpu_mixed_over_fp32 |"))
    assert row == (f"| gpu_mixed_over_fp32 | {merged['gpu_mixed_over_fp32']:,.4f} | > 1 (mixed precision pays on "
                   f"the GPU) | {'pass' if ratio > 1 else '**fail**'} |")
    assert merged["gpu"] in table


@pytest.mark.parametrize("text, why", [("{broken", "not valid JSON"), ("[1, 2]", "not an object of figures")])
def test_malformed_results_json_is_named(tmp_path, text, why, capsys):
    (tmp_path / "results.json").write_text(text)
    assert main(["bench", "--gpu", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mfk210 bench: error: "), err
    assert str(tmp_path / "results.json") in err and why in err
    assert (tmp_path / "results.json").read_text() == text


@pytest.fixture(scope="module")
def orl_demo_raw(tmp_path_factory):
    """A toy demo layout of real ORL photos: raw/train (3 people x 5), raw/select (2 x 4), raw/test (3 x 4)."""
    from mobilefacenet_k210.data.orl import fetch_orl

    src, root = fetch_orl(), tmp_path_factory.mktemp("demo")
    for group, people, count in (("train", (1, 2, 3), 5), ("select", (4, 5), 4), ("test", (6, 7, 8), 4)):
        for i in people:
            (root / "raw" / group / f"s{i}").mkdir(parents=True)
            for p in sorted((src / f"s{i}").glob("*.pgm"))[:count]:
                shutil.copy(p, root / "raw" / group / f"s{i}" / p.name)
    return root


def test_detector_figures_measure_beam_yunet_and_the_plain_loop_on_the_same_photos(tmp_path, orl_demo_raw):
    raw = orl_demo_raw / "raw" / "train"
    figures = bench.detector_figures(tmp_path, raw=raw)
    assert figures["detector_photos"] == 15
    for key in ("builder_beam_img_per_s_2w", "builder_yunet_img_per_s_2w", "builder_mtcnn_plain_loop_img_per_s"):
        assert figures[key] > 0, key
    assert figures["yunet_over_plain_mtcnn"] == pytest.approx(
        figures["builder_yunet_img_per_s_2w"] / figures["builder_mtcnn_plain_loop_img_per_s"])
    for name, detector in (("builder_beam_img_per_s_2w", "mtcnn"), ("builder_yunet_img_per_s_2w", "yunet")):
        meta = json.loads((tmp_path / name / "metadata.json").read_text())
        assert meta["detector"]["name"] == detector and meta["build_config"]["detector"] == detector
        assert sum(meta["class_counts"].values()) == 15, name  # every ORL face found
    # both detectors found the face on every photo, and put the points on the same face (within a
    # quarter of the 112-pixel crop: a different face or a swapped order would be far off)
    assert figures["landmark_photos"] == 15
    assert 0 <= figures["landmark_distance_px"] <= figures["landmark_distance_px_max"] < 28


TOY_TRAIN = ["model.width_multiplier=0.25", "model.embedding_size=32", "verification_every=1",
             "verification_batch_size=8", *(f"phases.{i}.{k}" for i in (0, 1) for k in (
                 "epochs=1", "lr_steps=[]", "warmup_epochs=0", "batch_size=8"))]


def test_detector_accuracy_trains_and_evaluates_on_that_detectors_crops(tmp_path, orl_demo_raw):
    from mobilefacenet_k210.config import DemoConfig
    from mobilefacenet_k210.evaluate import bins

    figures = bench.detector_accuracy(orl_demo_raw, tmp_path, "yunet", DemoConfig().build_config,
                                      DemoConfig().train_config, train_overrides=TOY_TRAIN, workers=1)
    base = tmp_path / "demo_yunet"
    for folder in (base / "shards", base / "aligned" / "select_shards", base / "aligned" / "test_shards"):
        assert json.loads((folder / "metadata.json").read_text())["detector"]["name"] == "yunet", folder
    assert figures["yunet_train_faces"] == 15 and figures["yunet_train_rejected"] == 0
    assert sorted(p.name for p in (base / "aligned" / "test").iterdir()) == ["s6", "s7", "s8"]
    _, issame = bins.load_bin(base / "test.bin")
    assert len(issame) == 36 and sum(issame) == 18  # 3 people x C(4, 2) same-person pairs, as many others
    saved = json.loads((base / "evaluate.json").read_text())
    accuracy = next(iter(next(iter(saved["results"].values())).values()))
    assert figures["orl_acc_keras_yunet"] == accuracy["accuracy"] and 0 <= accuracy["accuracy"] <= 1


def test_accuracy_row_compares_with_the_mtcnn_figure_when_both_are_measured():
    row = lambda results: next(line for line in bench.render_markdown(results).splitlines()
                               if line.startswith("| orl_acc_keras_yunet |"))
    base = {"machine": "m", "date": "d"}
    assert row({**base, "orl_acc_keras_yunet": 0.9}).endswith("| - |")  # nothing to compare with
    assert row({**base, "orl_acc_keras_yunet": 0.9, "orl_acc_keras": 0.92}).endswith("| **fail** |")
    assert row({**base, "orl_acc_keras_yunet": 0.92, "orl_acc_keras": 0.92}).endswith("| pass |")


def test_recordio_stage_builds_a_recordio_set_and_a_folder_of_the_same_jpegs(tmp_path):
    """`make bench`'s recordio stage at toy size (2 and 4 classes of 68 photos, the mxnet fixture's crops):
    both sets hold the same JPEG bytes under the same classes, and the figures follow from the builds."""
    from mobilefacenet_k210.bench import recordio as bench_recordio
    from mobilefacenet_k210.data import insightface_set, recordio

    fixture = Path(__file__).parent / "fixtures" / "recordio" / "insightface"
    offsets, _ = recordio.read_idx(fixture / "train.idx")
    with recordio.RecordFile(fixture / "train.rec") as f:
        crops = [recordio.unpack(f.read(offsets[k]))[1] for k in range(1, 13)]
    figures = bench_recordio.recordio_figures(tmp_path, sizes=(60, 136), crops=crops)  # 60 -> one class of 68
    assert (figures["rec_records_small"], figures["rec_records"], figures["rec_per_class"]) == (68, 136, 68)
    rates = figures["rec_records_per_s"], figures["rec_folder_records_per_s"]
    assert figures["rec_over_folder"] == pytest.approx(rates[0] / rates[1])
    assert figures["rec_ms1m_hours"] >= bench_recordio.MS1M_PHOTOS / figures["rec_records_per_s"] / 3600
    rec_dir, folder, count = bench_recordio.scaled_sets(tmp_path / "recordio", 136, crops)
    found = insightface_set.scan(rec_dir)
    assert found.layout == insightface_set.INSIGHTFACE and found.notes == [] and count == 136
    with recordio.RecordFile(found.rec) as f:
        for cls, keys in found.photos.items():
            for key, offset in keys:
                jpeg = recordio.unpack(f.read(offset))[1]
                assert (folder / f"{cls:06d}" / f"{key}.jpg").read_bytes() == jpeg == crops[(key - 1) % 12]
