"""Heads and losses: hand-checked margin logits, the fallback past pi, float32 under mixed precision,
config round trips, and every head lowering its loss on a tiny separable set."""
import math

import numpy as np
import pytest
import tensorflow as tf

from mobilefacenet_k210.config import PhaseConfig
from mobilefacenet_k210.model import heads


def _head_on(head: tf.keras.layers.Layer, embeddings: np.ndarray, labels: np.ndarray, centers: np.ndarray) -> np.ndarray:
    head([tf.constant(embeddings, tf.float32), tf.constant(labels, tf.int32)])  # build
    head.centers.assign(centers)
    return head([tf.constant(embeddings, tf.float32), tf.constant(labels, tf.int32)]).numpy()


# Two class centres on the axes; the embedding (length 3, not normalized) sits at 60 degrees from
# class 0 and 30 degrees from class 1, so cos = 0.5 and 0.8660254.
CENTERS = np.eye(2, dtype=np.float32)
AT_60_DEGREES = 3.0 * np.array([[0.5, math.sqrt(3) / 2]], np.float32)


def test_arcface_logits_match_hand_computation():
    logits = _head_on(heads.ArcFace(2, scale=64.0, margin=0.5), AT_60_DEGREES, np.array([0]), CENTERS)
    # true class 0: 64 * cos(60 deg + 0.5 rad) = 64 * cos(1.5471976) = 64 * 0.0235966 = 1.5101815
    np.testing.assert_allclose(logits, [[1.5101815, 64 * 0.8660254]], rtol=1e-5)


def test_cosface_logits_match_hand_computation():
    logits = _head_on(heads.CosFace(2, scale=64.0, margin=0.35), AT_60_DEGREES, np.array([1]), CENTERS)
    # true class 1: 64 * (0.8660254 - 0.35) = 33.025626; class 0 untouched: 64 * 0.5 = 32
    np.testing.assert_allclose(logits, [[32.0, 33.025626]], rtol=1e-5)


def test_combined_margin_logits_match_hand_computation():
    head = heads.MarginHead(2, scale=10.0, m1=1.5, m2=0.1, m3=0.2)
    logits = _head_on(head, AT_60_DEGREES, np.array([0]), CENTERS)
    # 10 * (cos(1.5 * 1.0471976 + 0.1) - 0.2) = 10 * (cos(1.6707963) - 0.2) = 10 * (-0.0998334 - 0.2)
    np.testing.assert_allclose(logits, [[-2.998334, 8.660254]], rtol=1e-5)


def test_arcface_falls_back_past_pi():
    # 170 degrees from class 0: theta + m = 2.967 + 0.5 > pi, so the target logit is
    # cos(theta) - m*sin(m) = -0.9848078 - 0.5 * 0.4794255 = -1.2245206 (not cos(theta + m), which rises again)
    angle = math.radians(170)
    emb = np.array([[math.cos(angle), math.sin(angle)]], np.float32)
    logits = _head_on(heads.ArcFace(2, scale=1.0, margin=0.5), emb, np.array([0]), CENTERS)
    np.testing.assert_allclose(logits[0, 0], -1.2245206, rtol=1e-5)
    assert logits[0, 0] < math.cos(angle)


def test_margin_logits_are_float32_and_finite_under_mixed_precision():
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inputs = tf.keras.Input((16,))
        emb = tf.keras.layers.Dense(8)(inputs)  # float16 output under the policy
        label = tf.keras.Input((), dtype=tf.int32)
        out = heads.ArcFace(1000, scale=64.0, margin=0.5)([emb, label])
        model = tf.keras.Model([inputs, label], out)
        logits = model([np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32), np.arange(4)])
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)
    assert emb.dtype == tf.float16
    assert logits.dtype == tf.float32
    assert np.all(np.isfinite(logits.numpy()))


@pytest.mark.parametrize("layer", [heads.SoftmaxHead(5), heads.ArcFace(5, scale=30.0, margin=0.3),
                                   heads.CosFace(5), heads.MarginHead(5, 20.0, 1.0, 0.3, 0.2), heads.L2Embedding()])
def test_heads_round_trip_through_config(layer):
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


def _separable(num_classes: int = 4, per_class: int = 8, dim: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim)) * 1.5
    x = np.concatenate([c + rng.normal(scale=0.7, size=(per_class, dim)) for c in centres]).astype(np.float32)
    y = np.repeat(np.arange(num_classes), per_class).astype(np.int32)
    return x, y


@pytest.mark.parametrize("phase", [
    PhaseConfig(head="softmax"), PhaseConfig(head="arcface", scale=16.0, margin=0.3),
    PhaseConfig(head="cosface", scale=16.0, margin=0.2), PhaseConfig(head="combined", scale=16.0),
    PhaseConfig(head="triplet", triplet_margin=0.2)], ids=lambda p: p.head)
def test_every_head_lowers_a_finite_loss_on_separable_data(phase):
    tf.keras.utils.set_random_seed(1)
    x, y = _separable()
    backbone = tf.keras.Sequential([tf.keras.Input((x.shape[1],)), tf.keras.layers.Dense(8)])
    model, _ = heads.build_training_model(backbone, phase, num_classes=4)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.02), loss=heads.make_loss(phase))
    before = model.evaluate((x, y), y, batch_size=len(x), verbose=0)
    model.fit((x, y), y, batch_size=len(x), epochs=60, verbose=0)
    after = model.evaluate((x, y), y, batch_size=len(x), verbose=0)
    assert np.isfinite(before) and np.isfinite(after)
    assert after < 0.7 * before, (before, after)


def test_imprint_points_each_centre_at_its_class_and_keeps_empty_classes():
    head = heads.ArcFace(3, scale=16.0, margin=0.2)
    head([tf.zeros((1, 4)), tf.zeros((1,), tf.int32)])
    random_centre = head.centers.numpy()[:, 2].copy()
    sums = np.array([[2.0, 0, 0, 0], [0, 0, -5.0, 0], [0, 0, 0, 0]], np.float32)
    heads.imprint(head, sums)
    centres = head.centers.numpy()
    np.testing.assert_allclose(centres[:, 0] / np.linalg.norm(centres[:, 0]), [1, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(centres[:, 1] / np.linalg.norm(centres[:, 1]), [0, 0, -1, 0], atol=1e-6)
    np.testing.assert_array_equal(centres[:, 2], random_centre)
    with pytest.raises(ValueError, match="do not match"):
        heads.imprint(head, np.ones((2, 4)))
    with pytest.raises(TypeError):
        heads.imprint(heads.SoftmaxHead(3), sums)


def test_sampled_margin_head_scores_the_batch_classes_and_a_draw_of_the_others():
    """Partial FC: in training, the batch's classes are always scored, exactly as by the full head; the
    classes left out get SAMPLED_OUT; outside training (and at sample_rate 1) the head is the full one."""
    tf.keras.utils.set_random_seed(3)
    full = heads.ArcFace(50, scale=16.0, margin=0.3)
    sampled = heads.ArcFace(50, scale=16.0, margin=0.3, sample_rate=0.2)
    x = tf.random.normal((6, 8))
    y = tf.constant([3, 3, 17, 41, 0, 49])
    full([x, y])
    sampled([x, y])
    sampled.centers.assign(full.centers)
    reference = full([x, y], training=True).numpy()
    np.testing.assert_allclose(sampled([x, y], training=False).numpy(), reference, rtol=1e-5, atol=1e-5)
    few = heads.ArcFace(50, sample_rate=0.02)  # one class by rate, five in the batch: all five scored
    few([x, y])
    assert (few([x, y], training=True).numpy()[0] != heads.SAMPLED_OUT).sum() == 5
    for _ in range(5):
        logits = sampled([x, y], training=True).numpy()
        scored = np.flatnonzero(logits[0] != heads.SAMPLED_OUT)
        assert len(scored) == 10 and set(y.numpy()) <= set(scored)
        assert (logits[:, scored] != heads.SAMPLED_OUT).all()
        np.testing.assert_allclose(logits[:, scored], reference[:, scored], rtol=1e-5, atol=1e-5)
        loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits).numpy()
        restricted = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
            np.searchsorted(scored, y.numpy()), reference[:, scored]).numpy()
        np.testing.assert_allclose(loss, restricted, rtol=1e-5)


def test_sampled_head_trains_and_is_refused_where_it_means_nothing():
    tf.keras.utils.set_random_seed(1)
    x, y = _separable(num_classes=8)
    phase = PhaseConfig(head="arcface", scale=16.0, margin=0.3, sample_rate=0.5)
    backbone = tf.keras.Sequential([tf.keras.Input((x.shape[1],)), tf.keras.layers.Dense(8)])
    model, head = heads.build_training_model(backbone, phase, num_classes=8)
    assert head.sample_rate == 0.5 and heads.ArcFace.from_config(head.get_config()).sample_rate == 0.5
    model.compile(optimizer=tf.keras.optimizers.Adam(0.02), loss=heads.make_loss(phase))
    before = model.evaluate((x, y), y, batch_size=len(x), verbose=0)
    model.fit((x, y), y, batch_size=16, epochs=60, verbose=0)  # about 2 classes a batch: the others sampled
    assert model.evaluate((x, y), y, batch_size=len(x), verbose=0) < 0.7 * before  # scored by the full head
    for bad in (PhaseConfig(head="softmax", sample_rate=0.5), PhaseConfig(head="arcface", sample_rate=0.0)):
        with pytest.raises(ValueError, match="sample_rate"):
            bad.validate()


@pytest.mark.parametrize("phase", [
    PhaseConfig(head="distill", relation_weight=0.5),
    PhaseConfig(head="arcface", scale=16.0, margin=0.3, distill_weight=4.0)], ids=lambda p: p.head)
def test_distilling_phases_take_the_teacher_and_pull_the_student_to_it(phase):
    """``(image, label, teacher)`` in; a 6-d teacher against an 8-d student goes through a projection
    inside the training model only; training raises the logged teacher_cosine; a margin head still
    reports its accuracy."""
    from mobilefacenet_k210.model import distill

    tf.keras.utils.set_random_seed(1)
    x, y = _separable()
    teacher = np.random.default_rng(2).normal(size=(4, 6)).astype(np.float32)[y]  # one target per class
    backbone = tf.keras.Sequential([tf.keras.Input((x.shape[1],)), tf.keras.layers.Dense(8)])
    model, _ = heads.build_training_model(backbone, phase, num_classes=4, teacher_dim=6)
    term = model.get_layer("distill")
    assert isinstance(term.projection, distill.TeacherProjection) and term.projection.teacher_dim == 6
    assert not any("projection" in w.name for w in backbone.weights)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.02), loss=heads.make_loss(phase),
                  metrics=heads.make_metrics(phase))
    before = model.evaluate((x, y, teacher), y, batch_size=len(x), verbose=0, return_dict=True)
    model.fit((x, y, teacher), y, batch_size=len(x), epochs=60, verbose=0)
    after = model.evaluate((x, y, teacher), y, batch_size=len(x), verbose=0, return_dict=True)
    assert after["teacher_cosine"] > before["teacher_cosine"] + 0.2 and after["loss"] < before["loss"], (before, after)
    assert ("accuracy" in after) == (phase.head == "arcface")
    with pytest.raises(ValueError, match="teacher"):
        heads.build_training_model(backbone, phase, num_classes=4)


def test_distill_settings_are_refused_where_they_mean_nothing():
    for bad, field in ((PhaseConfig(head="softmax", distill_weight=1.0), "distill_weight"),
                       (PhaseConfig(head="triplet", distill_weight=1.0), "distill_weight"),
                       (PhaseConfig(head="arcface", relation_weight=1.0), "relation_weight"),
                       (PhaseConfig(head="distill", relation_weight=-1.0), "relation_weight")):
        with pytest.raises(ValueError, match=field):
            bad.validate()
    assert PhaseConfig(head="distill").uses_teacher and PhaseConfig(head="cosface", distill_weight=2).uses_teacher
    assert not PhaseConfig(head="arcface").uses_teacher
