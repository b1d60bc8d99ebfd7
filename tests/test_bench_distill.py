"""`make bench`'s distill_trend stage at toy size: the photo-budget subsets (first photos of each identity,
originals before augmented copies), a from-scratch and a distilled student trained and measured on
each, the trend JSON and PNG written, a rerun skipping what is recorded; and `bench --only` replacing
one stage's figures in results.json while keeping the others."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

tf = pytest.importorskip("tensorflow")

from mobilefacenet_k210.bench import distill_trend as bench_distill, run as bench  # noqa: E402
from mobilefacenet_k210.cli import main  # noqa: E402
from mobilefacenet_k210.data import tfrecord  # noqa: E402
from mobilefacenet_k210.demo.steps import write_pairs  # noqa: E402
from mobilefacenet_k210.teacher.loader import load_teacher  # noqa: E402
from mobilefacenet_k210.teacher.shards import add_teacher  # noqa: E402
from conftest import write_tiny_shards  # noqa: E402

DIM = 16
MODEL = {"width_multiplier": 0.25, "embedding_size": DIM, "bn_momentum": 0.5}
COMMON = {"model": MODEL, "pipeline": {"shuffle_buffer": 64, "cycle_length": 2, "validation": False},
          "backup_every_steps": 50, "verification_every": 1}
PHASE = {"epochs": 1, "batch_size": 8, "optimizer": "adam", "lr": 0.003, "weight_decay": 0.0}


def _tiny_teacher(path: Path) -> Path:
    tf.keras.utils.set_random_seed(7)
    inp = tf.keras.Input((112, 112, 3))
    out = tf.keras.layers.Dense(DIM, use_bias=False)(tf.keras.layers.Flatten()(tf.keras.layers.AveragePooling2D(28)(inp)))
    tf.keras.Model(inp, out, name="tiny_teacher").save(path)
    return path


def _aligned_tree(shards: Path, dest: Path) -> Path:
    """The shards' crops as PNG files, one folder per identity (the demo's aligned/ layout)."""
    for f in tfrecord.shard_files(shards, "train"):
        for i, rec in enumerate(tfrecord.read_examples(f)):
            folder = dest / rec[tfrecord.IDENTITY]
            folder.mkdir(parents=True, exist_ok=True)
            image = tf.io.decode_jpeg(rec[tfrecord.IMAGE]).numpy()
            cv2.imwrite(str(folder / f"{Path(rec[tfrecord.SOURCE]).stem}.png"), image[:, :, ::-1])
    return dest


@pytest.fixture(scope="module")
def toy_demo(tmp_path_factory):
    """A demo output folder at toy size: shards_teacher (6 identities x 6 photos), select/test pairs and
    aligned/test of other photos, and two one-epoch recipes."""
    root = tmp_path_factory.mktemp("toy_demo")
    teacher = load_teacher(_tiny_teacher(root / "teacher.keras"))
    add_teacher(write_tiny_shards(root / "shards", num_classes=6, per_class=6, num_shards=2, val_per_class=0),
                teacher, root / "shards_teacher", progress=False)
    for group, seed in (("select", 1), ("test", 2)):
        shards = write_tiny_shards(root / f"{group}_shards", num_classes=4, per_class=3, num_shards=1,
                                   val_per_class=0, seed=seed)
        write_pairs(_aligned_tree(shards, root / "aligned" / group), root / f"{group}.bin")
    configs = {}
    for kind, phase in (("scratch", {"head": "softmax"}), ("distill", {"head": "arcface", "scale": 16.0,
                                                                        "margin": 0.2, "distill_weight": 8.0})):
        configs[kind] = str(root / f"{kind}.yaml")
        Path(configs[kind]).write_text(yaml.safe_dump({**COMMON, "phases": [{**PHASE, **phase}]}))
    return root, teacher, configs


def test_subset_order_takes_originals_of_every_identity_first_and_is_seeded():
    labels = [0] * 5 + [1] * 3 + [2] * 2
    tags = ["original", "opening", "original", "gaussian", "original", "original", "original", "saltpepper",
            "original", "opening"]
    order = bench_distill.subset_order(labels, tags, seed=2)
    assert sorted(order) == list(range(10)) and order == bench_distill.subset_order(labels, tags, seed=2)
    first_six = order[:6]
    assert sorted(labels[i] for i in first_six) == [0, 0, 1, 1, 2, 2]  # two of each identity
    for label in (0, 1, 2):  # each identity's originals before its copies
        mine = [tags[i] == "original" for i in order if labels[i] == label]
        assert mine == sorted(mine, reverse=True), (label, mine)
    assert {tuple(bench_distill.subset_order(labels, tags, seed=s)) for s in range(8)} != {tuple(order)}


def test_write_subset_keeps_the_first_photos_of_each_identity_with_valid_metadata(toy_demo, tmp_path):
    root = toy_demo[0]
    meta = bench_distill.write_subset(root / "shards_teacher", tmp_path / "sub", budget=14, seed=2)
    loaded = tfrecord.load_metadata(tmp_path / "sub")
    assert loaded == meta and meta["num_classes"] == 6 and meta["splits"] == {"train": 14, "val": 0}
    counts = {}
    for f in tfrecord.shard_files(tmp_path / "sub", "train"):
        for rec in tfrecord.read_examples(f):
            counts[rec[tfrecord.LABEL]] = counts.get(rec[tfrecord.LABEL], 0) + 1
            assert rec[tfrecord.TEACHER] is not None and rec[tfrecord.TEACHER].shape == (DIM,)
    assert sorted(counts.values()) == [2, 2, 2, 2, 3, 3]
    assert meta["class_counts"] == {str(k): v for k, v in counts.items()}
    assert meta[tfrecord.TEACHER_META] == tfrecord.load_metadata(root / "shards_teacher")[tfrecord.TEACHER_META]
    with pytest.raises(bench_distill.TrendError, match="at least 6"):
        bench_distill.write_subset(root / "shards_teacher", tmp_path / "too_small", budget=5)


def test_trend_trains_both_students_per_budget_writes_json_and_png_and_a_rerun_skips(toy_demo, tmp_path, capsys):
    root, teacher, configs = toy_demo
    out = tmp_path / "bench"
    figures = bench_distill.trend_figures(root, out, seed=2, budgets=(12, None), configs=configs, teacher=teacher,
                                          progress=False)
    state = json.loads((out / "distill_trend.json").read_text())
    assert len(state["runs"]) == 4
    assert sorted((r["inputs"]["budget"], r["inputs"]["kind"]) for r in state["runs"]) == [
        ("12", "distill"), ("12", "scratch"), ("all", "distill"), ("all", "scratch")]
    assert figures["distill_trend_photos"] == [12, 36] and figures["distill_trend_seed"] == 2
    for key in ("acc_scratch", "acc_distill", "cos_scratch", "cos_distill"):
        values = figures[f"distill_trend_{key}"]
        assert len(values) == 2 and all(isinstance(v, float) and np.isfinite(v) for v in values), (key, values)
    assert all(0.0 <= v <= 1.0 for v in figures["distill_trend_acc_scratch"] + figures["distill_trend_acc_distill"])
    assert (out / "distill_trend.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    again = bench_distill.run_trend(root, out, seed=2, budgets=(12, None), configs=configs, teacher=teacher,
                                    progress=False)
    printed = capsys.readouterr().out
    assert printed.count("recorded, skipped") == 4 and "training" not in printed, printed
    assert again["runs"] == state["runs"]
    table = "\n".join(bench_distill.markdown_section(figures))
    assert "| 12 |" in table and "| 36 |" in table and "](distill_trend.png)" in table


def test_bench_only_replaces_one_stages_figures_and_keeps_the_others(tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps({"machine": "m", "date": "d", "params": 1, "tests_seconds": 5.0}))
    bench.run_bench(tmp_path, demo_out=tmp_path / "no_demo", only=["model"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["params"] > 1 and results["tests_seconds"] == 5.0 and results["date"] == "d"
    assert "bench_model_seconds" in results and "bench_model_date" in results
    assert main(["bench", "--out", str(tmp_path), "--only", "model,nonesuch"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mfk210 bench: error: --only nonesuch"), err
    assert "distill_trend" in err
