"""Distillation losses: the student's embedding pulled towards the teacher's stored embedding.

- :func:`cosine_distill_loss`: ``1 - cos(student, teacher)`` per sample, the batch mean.
- :func:`relation_loss`: the mean squared difference between the batch's pairwise cosine-similarity
  matrices of student and teacher (relational knowledge distillation: the student copies how the
  teacher places faces relative to each other, not only where).
- :class:`DistillLoss`: both as a Keras loss, ``cosine + relation_weight * relation``.
- :class:`TeacherProjection`: a linear map from the student's embedding size to the teacher's, for
  training only; it sits beside the embedding model and is never part of the exported model.
- :class:`DistillTerm`: the layer a training model uses: it passes the student's embedding through
  unchanged and adds ``weight * DistillLoss`` to the model's loss (``add_loss``) and the batch's mean
  student-to-teacher cosine as the ``teacher_cosine`` metric, so a margin head keeps its own loss,
  labels and accuracy, and a ``distill`` phase needs no loss of its own.
- :func:`feature_nmse` / :func:`feature_matching_loss`: how far a student's feature maps are from its
  teacher's, each map's squared error over the teacher map's energy, per sample; the loss averages it
  over the batch and the matched layers.
- :class:`FeatureDistillTerm`: the layer of a ``feature_distill`` phase, whose teacher runs beside
  the student on every batch: the :class:`DistillLoss` of the embeddings plus ``feature_weight``
  times the feature matching loss, with the ``teacher_cosine`` and ``feature_nmse`` metrics.

``y_true`` is the teacher embedding (B, D_t), ``y_pred`` the student's (B, D_t) (projected if need be).
Neither has to be normalised: the losses normalise both.
"""
from typing import Any, Dict, List

import tensorflow as tf


def _unit(x: tf.Tensor) -> tf.Tensor:
    return tf.math.l2_normalize(tf.cast(x, tf.float32), axis=-1, epsilon=1e-12)


def cosine_distill_loss(teacher: tf.Tensor, student: tf.Tensor) -> tf.Tensor:
    """Per-sample ``1 - cos(student, teacher)`` (B,): 0 when aligned, 2 when opposite."""
    return 1.0 - tf.reduce_sum(_unit(teacher) * _unit(student), axis=-1)


def relation_loss(teacher: tf.Tensor, student: tf.Tensor) -> tf.Tensor:
    """Scalar: mean over the B x B entries of ``(cos_s(i, j) - cos_t(i, j))^2``."""
    t, s = _unit(teacher), _unit(student)
    diff = tf.matmul(s, s, transpose_b=True) - tf.matmul(t, t, transpose_b=True)
    return tf.reduce_mean(tf.square(diff))


@tf.keras.utils.register_keras_serializable(package="mfk210")
class DistillLoss(tf.keras.losses.Loss):
    """Cosine distillation plus ``relation_weight`` times the relation term, as one Keras loss."""

    def __init__(self, relation_weight: float = 0.0, name: str = "distill", **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.relation_weight = float(relation_weight)

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        loss = cosine_distill_loss(y_true, y_pred)
        if self.relation_weight:
            loss = loss + self.relation_weight * relation_loss(y_true, y_pred)
        return loss

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "relation_weight": self.relation_weight}


@tf.keras.utils.register_keras_serializable(package="mfk210")
class TeacherProjection(tf.keras.layers.Layer):
    """Training-only linear map (no bias) from the student's embedding to the teacher's size."""

    def __init__(self, teacher_dim: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.teacher_dim = int(teacher_dim)
        self.dense = tf.keras.layers.Dense(self.teacher_dim, use_bias=False, name="kernel_map")

    def call(self, embedding: tf.Tensor) -> tf.Tensor:
        return self.dense(tf.cast(embedding, tf.float32))

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "teacher_dim": self.teacher_dim}


def match_teacher(student_embedding: tf.Tensor, teacher_dim: int) -> tf.Tensor:
    """The student's embedding as compared with the teacher's: itself if the sizes agree, else projected."""
    if int(student_embedding.shape[-1]) == int(teacher_dim):
        return student_embedding
    return TeacherProjection(teacher_dim, name="teacher_projection")(student_embedding)


@tf.keras.utils.register_keras_serializable(package="mfk210")
class DistillTerm(tf.keras.layers.Layer):
    """``[student (B, D_s), teacher (B, D_t)] -> student``, adding ``weight * DistillLoss`` to the model's loss.

    A student whose size differs from the teacher's is compared through a :class:`TeacherProjection`
    owned by this layer (so it trains, resumes from backups, and stays out of the embedding model).
    """

    def __init__(self, teacher_dim: int, weight: float = 1.0, relation_weight: float = 0.0, **kwargs: Any):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.teacher_dim, self.weight, self.relation_weight = int(teacher_dim), float(weight), float(relation_weight)
        self.loss_fn = DistillLoss(relation_weight=self.relation_weight)
        self.projection = None

    def build(self, input_shape: Any) -> None:
        if int(input_shape[0][-1]) != self.teacher_dim:
            self.projection = TeacherProjection(self.teacher_dim, name="teacher_projection")
        super().build(input_shape)

    def embedding_loss(self, student: tf.Tensor, teacher: tf.Tensor) -> tf.Tensor:
        """``weight`` times the batch's :class:`DistillLoss`, with the ``teacher_cosine`` metric."""
        matched = tf.cast(student, tf.float32) if self.projection is None else self.projection(student)
        teacher = tf.cast(teacher, tf.float32)
        self.add_metric(tf.reduce_mean(1.0 - cosine_distill_loss(teacher, matched)), name="teacher_cosine")
        return self.weight * tf.reduce_mean(self.loss_fn.call(teacher, matched))

    def call(self, inputs: Any) -> tf.Tensor:
        student, teacher = inputs
        self.add_loss(self.embedding_loss(student, teacher))
        return student

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "teacher_dim": self.teacher_dim, "weight": self.weight,
                "relation_weight": self.relation_weight}


def feature_nmse(teacher: tf.Tensor, student: tf.Tensor) -> tf.Tensor:
    """Per sample ``sum((student - teacher)^2) / sum(teacher^2)`` over a feature map's pixels and channels (B,)."""
    t, s = tf.cast(teacher, tf.float32), tf.cast(student, tf.float32)
    axes = list(range(1, len(t.shape)))
    return tf.reduce_sum(tf.square(s - t), axis=axes) / tf.maximum(tf.reduce_sum(tf.square(t), axis=axes), 1e-12)


def feature_matching_loss(teachers: List[tf.Tensor], students: List[tf.Tensor]) -> tf.Tensor:
    """Scalar: :func:`feature_nmse` averaged over the batch and over the matched feature maps."""
    if len(teachers) != len(students) or not teachers:
        raise ValueError(f"{len(students)} student and {len(teachers)} teacher feature maps: match them one to one")
    return tf.add_n([tf.reduce_mean(feature_nmse(t, s)) for t, s in zip(teachers, students)]) / len(teachers)


@tf.keras.utils.register_keras_serializable(package="mfk210")
class FeatureDistillTerm(DistillTerm):
    """``[student emb, teacher emb, student maps..., teacher maps...] -> student emb``, adding the
    :class:`DistillTerm` loss (weight 1) plus ``feature_weight * feature_matching_loss`` of the maps to the
    model's loss, with the ``feature_nmse`` metric beside ``teacher_cosine``."""

    def __init__(self, teacher_dim: int, feature_weight: float = 1.0, relation_weight: float = 0.0, **kwargs: Any):
        kwargs.pop("weight", None)
        super().__init__(teacher_dim, 1.0, relation_weight, **kwargs)
        self.feature_weight = float(feature_weight)

    def call(self, inputs: Any) -> tf.Tensor:
        student, teacher, *maps = inputs
        loss = self.embedding_loss(student, teacher)
        half = len(maps) // 2
        if half:
            nmse = feature_matching_loss(maps[half:], maps[:half])
            loss = loss + self.feature_weight * nmse
            self.add_metric(nmse, name="feature_nmse")
        self.add_loss(loss)
        return student

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "feature_weight": self.feature_weight}


def _feature_view(model: tf.keras.Model, names: List[str], name: str) -> tf.keras.Model:
    """``model`` answering its embedding and the outputs of the layers ``names`` (weights shared)."""
    return tf.keras.Model(model.input, [model.output] + [model.get_layer(n).output for n in names], name=name)


def feature_distill(student: tf.keras.Model, image: tf.Tensor, teacher_path: str, feature_weight: float,
                    frozen_bn: bool, relation_weight: float = 0.0) -> tf.Tensor:
    """The student's embedding of ``image`` in a training model that also runs the frozen teacher saved at
    ``teacher_path`` on it and adds the :class:`FeatureDistillTerm` loss over every bottleneck's output.

    The teacher must have the student's bottleneck layers, same names and shapes (the exact copy and
    the K210 twin of `mfk210 import-model` do); BatchNorm of the student runs on its stored statistics
    when ``frozen_bn``.
    """
    from mobilefacenet_k210.model.io import ModelFileError, load_embedding_model
    from mobilefacenet_k210.model.mobilefacenet import block_outputs

    teacher = load_embedding_model(teacher_path)
    teacher.trainable = False
    names = block_outputs(student)
    for n in names:
        try:
            shape = teacher.get_layer(n).output_shape
        except ValueError:
            raise ModelFileError(f"{teacher_path}: the teacher has no layer {n}; feature distillation matches the "
                                 f"student's bottleneck outputs by name") from None
        if shape != student.get_layer(n).output_shape:
            raise ModelFileError(f"{teacher_path}: layer {n} gives {shape}, the student's {student.get_layer(n).output_shape}")
    s = _feature_view(student, names, "student_features")(image, training=False if frozen_bn else None)
    t = _feature_view(teacher, names, "teacher_features")(image, training=False)
    term = FeatureDistillTerm(int(teacher.output_shape[-1]), feature_weight, relation_weight, name="distill")
    return term([s[0], t[0], *s[1:], *t[1:]])
