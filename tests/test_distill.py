"""Distillation losses against hand-computed values, and the training-only projection."""
import math

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from mobilefacenet_k210.model import distill  # noqa: E402

TEACHER = np.array([[1.0, 0.0], [0.0, 3.0]], np.float32)  # unit after normalising: e1, e2
STUDENT = np.array([[2.0, 0.0], [1.0, 1.0]], np.float32)  # unit: e1, (e1 + e2) / sqrt 2


def test_cosine_loss_hand_computed():
    """1 - cos per sample: 0 for the aligned pair, 1 - 1/sqrt(2) for the 45-degree pair; scale-free."""
    got = distill.cosine_distill_loss(TEACHER, STUDENT).numpy()
    np.testing.assert_allclose(got, [0.0, 1.0 - 1.0 / math.sqrt(2.0)], atol=1e-6)
    np.testing.assert_allclose(distill.cosine_distill_loss(TEACHER, -TEACHER).numpy(), [2.0, 2.0], atol=1e-6)


def test_relation_loss_hand_computed():
    """Teacher similarities: the identity; student: 1/sqrt 2 off the diagonal -> mean of (1/2, 1/2, 0, 0)."""
    np.testing.assert_allclose(distill.relation_loss(TEACHER, STUDENT).numpy(), 0.25, atol=1e-6)
    assert float(distill.relation_loss(TEACHER, 5 * TEACHER)) == pytest.approx(0.0, abs=1e-7)


def test_distill_loss_combines_and_reloads():
    """Keras loss = mean cosine + relation_weight * relation; its config rebuilds the same loss."""
    loss = distill.DistillLoss(relation_weight=0.5)
    want = (1.0 - 1.0 / math.sqrt(2.0)) / 2 + 0.5 * 0.25
    assert float(loss(TEACHER, STUDENT)) == pytest.approx(want, abs=1e-6)
    again = distill.DistillLoss.from_config(loss.get_config())
    assert float(again(TEACHER, STUDENT)) == pytest.approx(want, abs=1e-6)
    assert float(distill.DistillLoss()(TEACHER, STUDENT)) == pytest.approx((1.0 - 1.0 / math.sqrt(2.0)) / 2, abs=1e-6)


def test_loss_gradient_moves_student_towards_teacher():
    """One gradient step on the student's embedding lowers the cosine loss (the loss trains)."""
    student = tf.Variable(STUDENT)
    with tf.GradientTape() as tape:
        before = distill.DistillLoss(relation_weight=1.0)(TEACHER, student)
    student.assign_sub(0.1 * tape.gradient(before, student))
    assert float(distill.DistillLoss(relation_weight=1.0)(TEACHER, student)) < float(before)


def test_projection_is_training_only(tmp_path):
    """A 16-d student against a 128-d teacher gets a projection beside the embedding model, not in it;
    equal sizes get none. The training model with the projection saves and reloads."""
    inp = tf.keras.Input((8,))
    embedding = tf.keras.Model(inp, tf.keras.layers.Dense(16, name="emb")(inp), name="embedding")
    projected = distill.match_teacher(embedding.output, 128)
    assert projected.shape[-1] == 128
    assert distill.match_teacher(embedding.output, 16) is embedding.output
    training = tf.keras.Model(inp, projected)
    assert any(isinstance(layer, distill.TeacherProjection) for layer in training.layers)
    assert not any(isinstance(layer, distill.TeacherProjection) for layer in embedding.layers)
    path = tmp_path / "train.keras"
    training.save(path)
    x = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    np.testing.assert_allclose(tf.keras.models.load_model(path).predict(x, verbose=0),
                               training.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
