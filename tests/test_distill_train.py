"""Training with a teacher, end to end: a tiny Keras teacher's embeddings are added to tiny shards,
a tiny student is distilled from them (``head: distill``, and a margin head with ``distill_weight``),
and its cosine to the teacher on held-out faces rises; a distillation phase on shards without
teacher embeddings is a one-line error naming their metadata.json."""
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from mobilefacenet_k210 import cli  # noqa: E402
from mobilefacenet_k210.config import TrainConfig, from_dict  # noqa: E402
from mobilefacenet_k210.data import tfrecord  # noqa: E402
from mobilefacenet_k210.model.io import load_embedding_model  # noqa: E402
from mobilefacenet_k210.model.mobilefacenet import MobileFaceNet  # noqa: E402
from mobilefacenet_k210.teacher.loader import load_teacher  # noqa: E402
from mobilefacenet_k210.teacher.shards import add_teacher  # noqa: E402
from mobilefacenet_k210.training import run as training_run  # noqa: E402
from conftest import write_tiny_shards  # noqa: E402

TEACHER_DIM = 16
# bn_momentum 0.5: the inference statistics must follow the few steps a tiny run trains (at 0.9 they
# lag behind weights that are still moving, and an inference-mode student is not the trained one)
STUDENT = {"model": {"input_size": 64, "width_multiplier": 0.25, "embedding_size": TEACHER_DIM, "bn_momentum": 0.5},
           "pipeline": {"shuffle_buffer": 64, "cycle_length": 4, "validation": False},
           "backup_every_steps": 50, "seed": 0}


def _tiny_teacher(path: Path) -> Path:
    """A fixed random Keras embedding model on 112 x 112 crops: pooled colours -> 16-d (what a student can learn)."""
    tf.keras.utils.set_random_seed(7)
    inp = tf.keras.Input((112, 112, 3))
    x = tf.keras.layers.AveragePooling2D(28)(inp)
    out = tf.keras.layers.Dense(TEACHER_DIM, use_bias=False)(tf.keras.layers.Flatten()(x))
    tf.keras.Model(inp, out, name="tiny_teacher").save(path)
    return path


def _held_out_cosine(model: tf.keras.Model, teacher, crops: np.ndarray) -> float:
    """Mean cosine between the student's embeddings (its own input size) and the teacher's, per crop."""
    from mobilefacenet_k210 import preprocessing

    x = tf.image.resize(crops, model.input_shape[1:3], antialias=True)
    student = model(preprocessing.normalize(tf.cast(tf.round(x), tf.uint8)), training=False).numpy()
    student /= np.linalg.norm(student, axis=1, keepdims=True)
    return float(np.mean(np.sum(student * teacher.embed(crops), axis=1)))


@pytest.fixture(scope="module")
def distill_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    shards = write_tiny_shards(root / "plain", num_classes=8, per_class=8, num_shards=4, val_per_class=2)
    teacher = load_teacher(_tiny_teacher(root / "teacher.keras"))
    with_teacher = root / "with_teacher"
    add_teacher(shards, teacher, with_teacher, progress=False)
    held_out = tfrecord.shard_files(shards, "val")  # other photos of the same faces; training never reads them
    crops = np.stack([tf.io.decode_jpeg(r[tfrecord.IMAGE]).numpy() for f in held_out for r in tfrecord.read_examples(f)])
    return shards, with_teacher, teacher, crops


@pytest.mark.parametrize("phase", [
    {"head": "distill", "relation_weight": 0.5},
    {"head": "arcface", "scale": 16.0, "margin": 0.2, "distill_weight": 8.0},
], ids=["distill", "arcface+distill"])
def test_distilled_student_moves_towards_the_teacher_on_held_out_faces(distill_shards, tmp_path, phase):
    _, with_teacher, teacher, crops = distill_shards
    # 48 steps as 3 epochs of 16 (4 passes over the shards each): the steps teach, each epoch end only saves
    config = from_dict(TrainConfig, {**STUDENT, "steps_per_epoch": 16, "phases": [{
        **phase, "epochs": 3, "batch_size": 16, "optimizer": "adam", "lr": 0.003, "lr_steps": [2], "weight_decay": 0.0}]})
    tf.keras.utils.set_random_seed(config.seed * 1009)  # the initial student of the run
    before = _held_out_cosine(MobileFaceNet(config.model), teacher, crops)
    summary = training_run.train(config, with_teacher, tmp_path / "run", progress=False)
    after = _held_out_cosine(load_embedding_model(tmp_path / "run"), teacher, crops)
    assert after > before + 0.2 and after > 0.5, (before, after, summary)
    history = (tmp_path / "run" / "logs" / "phase0.csv").read_text()
    assert "teacher_cosine" in history.splitlines()[0]


def test_distill_phase_on_shards_without_teacher_is_one_line_naming_the_file(distill_shards, tmp_path, capsys):
    import yaml

    plain = distill_shards[0]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**STUDENT, "phases": [{"head": "distill", "epochs": 1, "batch_size": 8}]}))
    assert cli.main(["train", "--config", str(cfg), "--data", str(plain), "--out", str(tmp_path / "run"),
                     "--no-progress"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mfk210 ")]
    assert len(errors) == 1 and errors[0].startswith("mfk210 train: error: "), errors
    assert str(plain / "metadata.json") in errors[0] and "add-teacher" in errors[0], errors


def test_heldout_cosine_is_one_for_the_teacher_itself_and_nan_across_sizes(distill_shards, tmp_path):
    """The demo's held-out cosine: a student that is the teacher scores 1; one of another size cannot be
    compared without the training-only projection, so it is NaN rather than a made-up number."""
    from mobilefacenet_k210.bench.students import heldout_cosine

    _, _, teacher, crops = distill_shards
    assert heldout_cosine(str(teacher.path), teacher, crops) == pytest.approx(1.0, abs=1e-5)
    other = tmp_path / "other.keras"
    inp = tf.keras.Input((112, 112, 3))
    tf.keras.Model(inp, tf.keras.layers.Dense(TEACHER_DIM + 1)(tf.keras.layers.GlobalAveragePooling2D()(inp))).save(other)
    assert np.isnan(heldout_cosine(str(other), teacher, crops))
