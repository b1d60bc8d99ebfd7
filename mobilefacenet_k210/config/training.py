"""Configs of training: the model's shape, the tf.data input, the phases (heads, losses, schedules) and the
run, each with its choice lists beside its fields and its own ``validate()``."""
import dataclasses
from typing import Dict, List

from mobilefacenet_k210.config.loader import ConfigError, check_choice, check_positive
from mobilefacenet_k210.preprocessing import ORIENTATIONS, UPRIGHT

ACTIVATIONS = ("relu", "relu6", "prelu")
"""prelu (one slope per channel) only for models that stay on the host, such as the exact copy of an
imported model that teaches its K210 twin: nncase keeps PReLU in float, more RAM than the K210 has, so
`mfk210 check` and export refuse it."""
EMBEDDING_HEADS = ("gdc_linear", "gdc_linear_kpu")
"""gdc_linear: the paper's head. gdc_linear_kpu: the same function and weights, with the 512->128 projection
run on a map repeated to the KPU's smallest size and cropped back, so nncase 1.1 puts it on the KPU."""
HEADS = ("softmax", "arcface", "cosface", "combined", "triplet", "distill", "feature_distill")
EMBEDDING_LOSS_HEADS = ("triplet", "distill", "feature_distill")
"""Heads trained on embeddings alone (no labels, no classification accuracy)."""
MARGIN_HEADS = ("arcface", "cosface", "combined")
OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("steps", "cosine")
"""steps: ``lr * lr_decay`` at each of ``lr_steps``; cosine: from ``lr`` down to 0 over the phase."""
PHASE_INITS = ("previous", "scratch")
HEAD_INITS = ("random", "imprint")
STRATEGIES = ("default", "mirrored", "multiworker")


@dataclasses.dataclass
class ModelConfig:
    """MobileFaceNet shape. Defaults give the paper's ~0.99M parameters and ~221M multiply-adds.

    ``input_orientation`` ``rot180``: the network computes on the aligned crop turned by 180 degrees,
    which makes its symmetric stride-2 padding equal TensorFlow's 'same' padding of the model it was
    imported from (``mfk210 import-model``); the Keras model still takes upright crops.
    ``split_conv_last``: the last 1x1 conv gives twice its channels through ReLU, room for ``y`` and
    ``-y``; since ``prelu(y) = relu(y) - a * relu(-y)`` and the GDConv and the projection after it
    are linear, an imported per-channel PReLU there is reproduced exactly with ReLU alone (the
    GDConv weighs the second half by ``-a``, the projection sums the halves), for twice conv_last's
    multiply-adds (about 3M at width 1.0) and a wider 7x7 map.
    """

    input_size: int = 112
    width_multiplier: float = 1.0
    embedding_size: int = 128
    activation: str = "relu"  # one of ACTIVATIONS
    bn_momentum: float = 0.9  # Keras' 0.99 leaves inference statistics untrained on small data
    bn_epsilon: float = 1e-3
    embedding_head: str = "gdc_linear_kpu"  # one of EMBEDDING_HEADS
    stem_project: bool = False  # a linear 1x1 conv after the stem's depthwise conv (sirius-ai MobileFaceNet_TF)
    input_orientation: str = UPRIGHT  # one of preprocessing.ORIENTATIONS; the model's first layer turns the crop
    split_conv_last: bool = False  # conv_last gives 2x the channels, with ReLU: an imported PReLU there stays exact

    def validate(self, where: str = "model") -> None:
        """Refuse a shape the builder cannot make, naming the field."""
        check_choice(self.activation, ACTIVATIONS, f"{where}.activation")
        check_choice(self.embedding_head, EMBEDDING_HEADS, f"{where}.embedding_head")
        check_choice(self.input_orientation, ORIENTATIONS, f"{where}.input_orientation")
        check_positive(where, width_multiplier=self.width_multiplier, embedding_size=self.embedding_size)
        if self.input_size % 16 != 0 or self.input_size < 64:
            raise ConfigError(f"{where}.input_size {self.input_size}: must be a multiple of 16, at least 64")


@dataclasses.dataclass
class PipelineConfig:
    """The tf.data input of training (see ``data/pipeline.py``).

    Shards are listed from ``metadata.json``, their order reshuffled every epoch, read
    ``cycle_length`` at a time by ``interleave`` and mixed again through a ``shuffle_buffer``.
    Augmentation at read time: horizontal flip, and optionally a random shift (``crop_pad``
    pixels of padding, then a random crop back to size), rotation and zoom about the centre
    (faces in the demo photos turn and tilt), brightness and contrast jitter.
    """

    shuffle_buffer: int = 16384
    cycle_length: int = 16  # shards read at once by interleave
    block_length: int = 1  # consecutive records taken from one shard before moving on
    flip: bool = True
    crop_pad: int = 0
    rotate_degrees: float = 0.0  # random in-plane rotation within +-rotate_degrees
    zoom: float = 0.0  # random scale factor within [1 - zoom, 1 + zoom]
    brightness: float = 0.0  # max delta, in normalized units (1.0 = 128 grey levels)
    contrast: float = 0.0  # factor drawn from [1 - contrast, 1 + contrast]
    validation: bool = True  # evaluate the head on the "val" split every epoch when it has records
    val_batch_size: int = 256

    def validate(self, where: str = "pipeline") -> None:
        """Refuse sizes and ranges tf.data cannot use, naming the field."""
        check_positive(where, shuffle_buffer=self.shuffle_buffer, cycle_length=self.cycle_length,
                  block_length=self.block_length, val_batch_size=self.val_batch_size)
        if self.crop_pad < 0 or self.rotate_degrees < 0 or not 0 <= self.zoom < 1 or self.brightness < 0 \
                or not 0 <= self.contrast < 1:
            raise ConfigError(f"{where}: crop_pad, rotate_degrees, brightness >= 0; zoom, contrast in [0, 1)")


@dataclasses.dataclass
class PhaseConfig:
    """One ``model.fit`` of a run: a head (loss), an optimizer and a learning-rate schedule.

    ``lr_steps`` are epochs (fractions allowed) at which the learning rate is multiplied by
    ``lr_decay``; ``warmup_epochs`` ramps it linearly from 0. ``scale``/``margin`` configure
    ArcFace (s=64, m=0.5) and CosFace (m=0.35); ``m1, m2, m3`` the combined margin
    cos(m1*theta + m2) - m3. A triplet phase draws P x K batches (``identities_per_batch`` x
    ``images_per_identity``; its batch size is their product) and uses ``triplet_margin``.
    ``init``: ``previous`` starts the backbone from the phase before, ``scratch`` from random.
    ``head_init``: ``random`` class centres, or ``imprint``: each centre starts at its class's mean
    normalized embedding under the backbone the phase starts from (weight imprinting, Qi et al.
    2018), so that a margin head after a softmax phase refines what that phase learned instead of
    first tearing it apart to fit random centres (margin heads only; one unaugmented pass over the
    train split).
    Distillation (shards with teacher embeddings, ``mfk210 add-teacher``): head ``distill`` trains on
    ``1 - cos(student, teacher)`` alone, plus ``relation_weight`` times the batch's pairwise-similarity
    term; a margin head with ``distill_weight`` > 0 adds that many times the same loss to its own.
    Head ``feature_distill`` runs ``teacher_model`` (a Keras embedding model with the student's layer
    names, e.g. the exact copy `mfk210 import-model` writes) on every augmented batch and trains on
    ``1 - cos`` of the embeddings (plus ``relation_weight`` times the relation term) plus
    ``feature_weight`` times the mean normalized squared error of the bottlenecks' outputs (labels
    unused: any faces will do).
    ``frozen_bn``: BatchNorm computes with its stored statistics, as in inference (its scale and shift
    still train), for a backbone whose BatchNorm holds folded weights, such as an imported one.
    ``lr_schedule`` (one of ``LR_SCHEDULES``): ``lr_steps`` decays, or a cosine from ``lr`` to 0.
    """

    head: str = "softmax"
    epochs: int = 1
    batch_size: int = 512
    optimizer: str = "sgd"  # sgd (with momentum) or adam
    momentum: float = 0.9
    lr: float = 0.1
    lr_steps: List[float] = dataclasses.field(default_factory=list)
    lr_decay: float = 0.1
    warmup_epochs: float = 0.0
    weight_decay: float = 5e-4
    scale: float = 64.0
    margin: float = 0.5
    m1: float = 1.0
    m2: float = 0.3
    m3: float = 0.2
    triplet_margin: float = 0.2
    identities_per_batch: int = 32
    images_per_identity: int = 4
    init: str = "previous"
    head_init: str = "random"
    sample_rate: float = 1.0  # margin heads: fraction of the classes scored each step (Partial FC); 1 = all
    distill_weight: float = 0.0  # margin heads: weight of the distillation loss added to the margin loss
    relation_weight: float = 0.0  # distillation: weight of the relation (pairwise similarity) term
    teacher_model: str = ""  # feature_distill: the teacher, a Keras embedding model file or run folder
    feature_weight: float = 1.0  # feature_distill: weight of the bottleneck feature matching
    frozen_bn: bool = False
    lr_schedule: str = "steps"  # one of LR_SCHEDULES

    @property
    def uses_teacher(self) -> bool:
        """Whether the phase reads the teacher embeddings stored in the shards."""
        return self.head == "distill" or self.distill_weight > 0

    @property
    def batch(self) -> int:
        """The batch size of the phase: P*K for triplet, ``batch_size`` otherwise."""
        return self.identities_per_batch * self.images_per_identity if self.head == "triplet" else self.batch_size

    def validate(self, where: str = "phase") -> None:
        """Refuse a phase that cannot run, naming the field."""
        check_choice(self.head, HEADS, f"{where}.head")
        check_choice(self.optimizer, OPTIMIZERS, f"{where}.optimizer")
        check_choice(self.init, PHASE_INITS, f"{where}.init")
        check_choice(self.head_init, HEAD_INITS, f"{where}.head_init")
        check_choice(self.lr_schedule, LR_SCHEDULES, f"{where}.lr_schedule")
        if self.lr_schedule == "cosine" and self.lr_steps:
            raise ConfigError(f"{where}.lr_steps: a cosine schedule has no steps; leave lr_steps empty")
        if (self.head == "feature_distill") != bool(self.teacher_model):
            raise ConfigError(f"{where}.teacher_model: head feature_distill needs a teacher model, and only it "
                              "takes one")
        if self.feature_weight < 0:
            raise ConfigError(f"{where}.feature_weight must be >= 0")
        if self.head_init == "imprint" and self.head not in MARGIN_HEADS:
            raise ConfigError(f"{where}.head_init imprint: only for the margin heads {MARGIN_HEADS}")
        if self.epochs < 1 or self.batch < 1 or self.lr <= 0:
            raise ConfigError(f"{where}: epochs, batch size and lr must be positive")
        if not 0.0 < self.sample_rate <= 1.0:
            raise ConfigError(f"{where}.sample_rate {self.sample_rate}: expected 0 < rate <= 1")
        if self.sample_rate < 1.0 and self.head not in MARGIN_HEADS:
            raise ConfigError(f"{where}.sample_rate: only the margin heads {MARGIN_HEADS} sample their classes")
        if self.distill_weight < 0 or self.relation_weight < 0:
            raise ConfigError(f"{where}: distill_weight and relation_weight must be >= 0")
        if self.distill_weight > 0 and self.head not in MARGIN_HEADS:
            raise ConfigError(f"{where}.distill_weight: only a margin head {MARGIN_HEADS} adds a distillation "
                              f"loss; use head: distill to train on the teacher alone")
        if self.relation_weight > 0 and not (self.uses_teacher or self.head == "feature_distill"):
            raise ConfigError(f"{where}.relation_weight: only for heads distill and feature_distill or a phase with "
                              "distill_weight > 0")
        if self.head == "triplet" and self.images_per_identity < 2:
            raise ConfigError(f"{where}.images_per_identity: a triplet batch needs at least 2 images per identity")


def _default_phases() -> List[PhaseConfig]:
    return [PhaseConfig(head="softmax", epochs=10), PhaseConfig(head="arcface", epochs=20, lr_steps=[10, 15])]


@dataclasses.dataclass
class TrainConfig:
    """A training run: the model, the input pipeline and the list of phases run one after the other.

    ``verification`` maps a name to a ``.bin`` pairs file; the mean accuracy over them picks the
    best checkpoint every epoch (without any, the head's accuracy on the "val" split does, best
    within the last phase). ``backup_every_steps`` is how often the exact-resume state is saved.
    ``strategy``: default, mirrored (all local GPUs/devices) or multiworker (``TF_CONFIG``, see
    docs/scale.md). ``mixed_precision``: the backbone computes in half precision with float32
    weights, ``mixed_float16`` on a GPU (with dynamic loss scaling) and ``mixed_bfloat16`` on CPUs
    with bfloat16 kernels (AVX512_BF16/AMX; no loss scaling needed), loss-scaled ``mixed_float16`` on
    other CPUs (slower than float32 on the CPUs measured, see docs/scale.md); the heads compute
    their logits in float32 and the saved embedding model is float32. ``init_model``: a Keras
    embedding model of the same shape (file or run folder) whose weights start the first phase's
    backbone, e.g. the K210 twin `mfk210 import-model` writes.
    """

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    pipeline: PipelineConfig = dataclasses.field(default_factory=PipelineConfig)
    phases: List[PhaseConfig] = dataclasses.field(default_factory=_default_phases)
    seed: int = 0
    verification: Dict[str, str] = dataclasses.field(default_factory=dict)
    verification_batch_size: int = 64
    verification_flip: bool = True
    verification_every: int = 1  # epochs between verifications (the last epoch of a phase always)
    strategy: str = "default"
    mixed_precision: bool = False
    backup_every_steps: int = 100
    steps_per_epoch: int = 0  # 0: train records // batch size
    deterministic_ops: bool = False  # tf.config.experimental.enable_op_determinism (bit-exact reruns, slower)
    init_model: str = ""  # Keras embedding model whose weights start the first phase (same model shape)

    def validate(self, where: str = "train") -> None:
        """Refuse a run that cannot train, before any work is done."""
        self.model.validate(f"{where}.model")
        self.pipeline.validate(f"{where}.pipeline")
        if not self.phases:
            raise ConfigError(f"{where}.phases: at least one phase is needed")
        for i, phase in enumerate(self.phases):
            phase.validate(f"{where}.phases.{i}")
        check_choice(self.strategy, STRATEGIES, f"{where}.strategy")
        check_positive(where, verification_batch_size=self.verification_batch_size,
                  verification_every=self.verification_every, backup_every_steps=self.backup_every_steps)
