"""Classification heads and their losses, apart from the backbone (which only makes embeddings).

Every head is a Keras layer called on ``[embeddings, labels]`` and computing in float32 whatever
the mixed-precision policy (``dtype="float32"``; the float16 embeddings are cast first), so that
``s * cos`` with s=64 never overflows half precision:

- :class:`SoftmaxHead`: a Dense layer (the labels are ignored).
- :class:`MarginHead`: the combined margin of InsightFace, target logit ``s*(cos(m1*theta + m2) - m3)``
  on L2-normalized embeddings and class centres; :class:`ArcFace` (m2, default s=64 m=0.5) and
  :class:`CosFace` (m3, default m=0.35) are its two common cases. When ``m1*theta + m2`` passes pi
  the target logit would grow again with theta, so InsightFace's fallback
  ``cos(theta) - m2*sin(m2) - m3`` is used there instead (it keeps the penalty monotonic).
- :class:`L2Embedding`: L2-normalized embeddings, for ``tfa.losses.TripletSemiHardLoss``, and the
  output of a ``distill`` phase, whose only loss is the one :class:`model.distill.DistillTerm` adds.

:func:`build_training_model` wraps an embedding model into ``(image, label) -> logits``.
"""
import math
from typing import Any, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from mobilefacenet_k210.config import EMBEDDING_LOSS_HEADS, HEADS, PhaseConfig
from mobilefacenet_k210.model.distill import DistillTerm, feature_distill


class SoftmaxHead(tf.keras.layers.Layer):
    """Plain softmax classifier: logits = embeddings @ W + b (float32)."""

    def __init__(self, num_classes: int, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.dense = tf.keras.layers.Dense(self.num_classes, dtype="float32", name="logits")

    def call(self, inputs):
        embeddings, _ = inputs
        return self.dense(tf.cast(embeddings, tf.float32))

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "num_classes": self.num_classes}


SAMPLED_OUT = -1e4
"""The logit of a class left out of a sampled step: exp() of it is 0 next to any scaled cosine."""


class MarginHead(tf.keras.layers.Layer):
    """Combined angular margin: logit of the true class ``s*(cos(m1*theta + m2) - m3)``, others ``s*cos``.

    ``sample_rate`` < 1 is Partial FC (An et al. 2022, arcface_torch): in training, each step scores
    only the classes of the batch plus a random draw of the others, ``sample_rate`` of all classes
    in total, and every class left out gets the logit ``SAMPLED_OUT``, so the softmax, the loss and
    the accuracy are those over the sample while the costly (batch x classes) product shrinks.
    """

    def __init__(self, num_classes: int, scale: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0,
                 sample_rate: float = 1.0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.scale, self.m1, self.m2, self.m3 = float(scale), float(m1), float(m2), float(m3)
        self.sample_rate = float(sample_rate)

    def build(self, input_shape):
        dim = int(input_shape[0][-1])
        self.centers = self.add_weight(name="centers", shape=(dim, self.num_classes), dtype=tf.float32,
                                       initializer=tf.keras.initializers.GlorotNormal(), trainable=True)
        super().build(input_shape)

    def cosine(self, embeddings: tf.Tensor, centers: Optional[tf.Tensor] = None) -> tf.Tensor:
        """Cosine between each embedding and each class centre (or each of ``centers``), (N, classes) float32."""
        x = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=1)
        w = tf.math.l2_normalize(self.centers if centers is None else centers, axis=0)
        return tf.clip_by_value(tf.matmul(x, w), -1.0, 1.0)

    def sample(self, labels: tf.Tensor) -> tf.Tensor:
        """Sorted class indices of one sampled step: every label of the batch, then random others up to
        ``sample_rate`` of all classes (more when the batch alone holds more classes than that)."""
        positives = tf.unique(labels).y
        count = tf.maximum(max(1, int(round(self.sample_rate * self.num_classes))), tf.size(positives))
        priority = tf.tensor_scatter_nd_update(tf.random.uniform([self.num_classes]), positives[:, None],
                                               tf.fill(tf.shape(positives), 2.0))
        return tf.sort(tf.math.top_k(priority, k=count).indices)

    def target_logit(self, cos: tf.Tensor) -> tf.Tensor:
        """``cos(m1*theta + m2) - m3`` with the monotonic fallback past pi (before scaling)."""
        if self.m1 == 1.0 and self.m2 == 0.0:
            return cos - self.m3
        if self.m1 == 1.0:  # cos(theta + m) by the angle sum: no acos, exact gradient near cos = +-1
            sin = tf.sqrt(tf.maximum(1.0 - tf.square(cos), 0.0))
            shifted = cos * math.cos(self.m2) - sin * math.sin(self.m2)
            valid = cos > math.cos(math.pi - self.m2)
        else:
            theta = tf.acos(tf.clip_by_value(cos, -1.0 + 1e-7, 1.0 - 1e-7))
            shifted = tf.cos(self.m1 * theta + self.m2)
            valid = self.m1 * theta + self.m2 < math.pi
        fallback = cos - self.m2 * math.sin(self.m2)
        return tf.where(valid, shifted, fallback) - self.m3

    def _margin_logits(self, cos: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        onehot = tf.one_hot(labels, tf.shape(cos)[1], dtype=tf.float32)
        return self.scale * tf.where(onehot > 0, self.target_logit(cos), cos)

    def call(self, inputs, training=None):
        embeddings, labels = inputs
        labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
        if not training or self.sample_rate >= 1.0:
            return self._margin_logits(self.cosine(embeddings), labels)
        index = self.sample(labels)
        local = tf.searchsorted(index, labels)  # a label's position in the sorted sample
        sampled = self._margin_logits(self.cosine(embeddings, tf.gather(self.centers, index, axis=1)), local)
        full = tf.fill([self.num_classes, tf.shape(sampled)[0]], SAMPLED_OUT)
        return tf.transpose(tf.tensor_scatter_nd_update(full, index[:, None], tf.transpose(sampled)))

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "num_classes": self.num_classes, "scale": self.scale,
                "m1": self.m1, "m2": self.m2, "m3": self.m3, "sample_rate": self.sample_rate}


class ArcFace(MarginHead):
    """Additive angular margin (Deng et al. 2019): true-class logit ``s*cos(theta + m)``."""

    def __init__(self, num_classes: int, scale: float = 64.0, margin: float = 0.5, **kwargs):
        for key in ("m1", "m2", "m3"):
            kwargs.pop(key, None)
        super().__init__(num_classes, scale=scale, m1=1.0, m2=margin, m3=0.0, **kwargs)
        self.margin = float(margin)

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "margin": self.margin}


class CosFace(MarginHead):
    """Additive cosine margin (Wang et al. 2018): true-class logit ``s*(cos(theta) - m)``."""

    def __init__(self, num_classes: int, scale: float = 64.0, margin: float = 0.35, **kwargs):
        for key in ("m1", "m2", "m3"):
            kwargs.pop(key, None)
        super().__init__(num_classes, scale=scale, m1=1.0, m2=0.0, m3=margin, **kwargs)
        self.margin = float(margin)

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "margin": self.margin}


class L2Embedding(tf.keras.layers.Layer):
    """L2-normalized float32 embeddings (labels ignored): the output a triplet loss compares."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, inputs):
        embeddings, _ = inputs
        return tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=1)




def imprint(head: MarginHead, class_sums: np.ndarray) -> None:
    """Point each class centre of a margin head along its class's summed (or mean) embedding.

    Weight imprinting (Qi et al., CVPR 2018): the centres start where the backbone already puts
    each class. A class with no embedding (a zero row) keeps its random centre.
    """
    if not isinstance(head, MarginHead):
        raise TypeError(f"imprinting needs a margin head, not {type(head).__name__}")
    sums = np.asarray(class_sums, np.float32)
    centers = head.centers.numpy()
    if sums.shape != centers.T.shape:
        raise ValueError(f"class embeddings {sums.shape} do not match the head's centres {centers.T.shape}")
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    filled = norms[:, 0] > 0
    # keep the random centres' scale: only their directions matter to the head, not their length
    scale = np.linalg.norm(centers, axis=0).mean()
    centers[:, filled] = (sums[filled] / norms[filled]).T * scale
    head.centers.assign(centers)


CUSTOM_OBJECTS = {c.__name__: c for c in (SoftmaxHead, MarginHead, ArcFace, CosFace, L2Embedding)}


def make_head(phase: PhaseConfig, num_classes: int) -> tf.keras.layers.Layer:
    """The head layer a phase asks for."""
    if phase.head == "softmax":
        return SoftmaxHead(num_classes, name="head")
    if phase.head == "arcface":
        return ArcFace(num_classes, scale=phase.scale, margin=phase.margin, sample_rate=phase.sample_rate, name="head")
    if phase.head == "cosface":
        return CosFace(num_classes, scale=phase.scale, margin=phase.margin, sample_rate=phase.sample_rate, name="head")
    if phase.head == "combined":
        return MarginHead(num_classes, scale=phase.scale, m1=phase.m1, m2=phase.m2, m3=phase.m3,
                          sample_rate=phase.sample_rate, name="head")
    if phase.head in EMBEDDING_LOSS_HEADS:
        return L2Embedding(name="head")
    raise ValueError(f"head {phase.head!r}: choose one of {HEADS}")


def make_loss(phase: PhaseConfig) -> Optional[tf.keras.losses.Loss]:
    """Cross-entropy on the logits of a classification head; semi-hard triplet loss for ``triplet``;
    None for ``distill`` and ``feature_distill`` (their loss is added by the model's distillation layer)."""
    if phase.head in ("distill", "feature_distill"):
        return None
    if phase.head == "triplet":
        import tensorflow_addons as tfa

        return tfa.losses.TripletSemiHardLoss(margin=phase.triplet_margin)
    return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def make_metrics(phase: PhaseConfig) -> list:
    """Training accuracy of the head (on the logits it trains with, margins included)."""
    return [] if phase.head in EMBEDDING_LOSS_HEADS else [tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


def build_training_model(embedding_model: tf.keras.Model, phase: PhaseConfig, num_classes: int,
                         teacher_dim: int = 0) -> Tuple[tf.keras.Model, tf.keras.layers.Layer]:
    """``(image, label) -> logits`` (or normalized embeddings for triplet) around ``embedding_model``.

    The embedding model is used as one layer, so its weights are shared: what the training model
    learns is what :func:`model.io.save_embedding_model` saves. Returns the model and its head.
    A phase that uses a teacher (:attr:`PhaseConfig.uses_teacher`) takes ``(image, label, teacher)``,
    the teacher's ``teacher_dim`` embedding of each image, and distils it through a :class:`DistillTerm`
    (weight 1 for ``distill``, ``distill_weight`` beside a margin head). A ``feature_distill`` phase runs
    its teacher model beside the student (:func:`feature_distill`). With ``frozen_bn`` the backbone's
    BatchNorm computes on its stored statistics.
    """
    image = tf.keras.Input(embedding_model.input_shape[1:], name="image")
    label = tf.keras.Input((), dtype=tf.int32, name="label")
    inputs = [image, label]
    if phase.head == "feature_distill":
        embedding = feature_distill(embedding_model, image, phase.teacher_model, phase.feature_weight, phase.frozen_bn,
                                    phase.relation_weight)
    else:
        embedding = embedding_model(image, training=False if phase.frozen_bn else None)
    if phase.uses_teacher:
        if teacher_dim < 1:
            raise ValueError(f"head {phase.head!r} with distill_weight {phase.distill_weight}: needs the teacher's "
                             f"embedding size")
        teacher = tf.keras.Input((teacher_dim,), name="teacher")
        inputs.append(teacher)
        weight = 1.0 if phase.head == "distill" else phase.distill_weight
        embedding = DistillTerm(teacher_dim, weight, phase.relation_weight, name="distill")([embedding, teacher])
    head = make_head(phase, num_classes)
    outputs = head([embedding, label])
    return tf.keras.Model(inputs, outputs, name=f"train_{phase.head}"), head
