"""The configuration dataclasses of every stage, each with its choice lists beside its fields and its
own ``validate()``; :mod:`.loader` builds them from defaults, files, flags and ``--set``.
"""
import dataclasses
from typing import Dict, List, Optional

from mobilefacenet_k210.config.loader import ConfigError, check_choice

ACTIVATIONS = ("relu", "relu6")  # PReLU needs more RAM than the K210 has
EMBEDDING_HEADS = ("gdc_linear", "gdc_linear_kpu")
"""gdc_linear: the paper's head. gdc_linear_kpu: the same function and weights, with the 512->128 projection
run on a map repeated to the KPU's smallest size and cropped back, so nncase 1.1 puts it on the KPU."""
HEADS = ("softmax", "arcface", "cosface", "combined", "triplet", "distill")
MARGIN_HEADS = ("arcface", "cosface", "combined")
OPTIMIZERS = ("sgd", "adam")
PHASE_INITS = ("previous", "scratch")
HEAD_INITS = ("random", "imprint")
STRATEGIES = ("default", "mirrored", "multiworker")
RUNNERS = ("local", "beam")
SELECT_MODES = ("largest", "center", "confidence")
DETECTORS = ("mtcnn", "yunet")  # face detectors of the builder (data/detectors.py)
POLICY_ACTIONS = ("sample", "keep", "drop")
POLICY_PRESETS = ("seed", "none")
AUGMENTATIONS = ("opening", "gaussian", "saltpepper")  # the tags of the policy's added copies
CALIBRATE_METHODS = ("l2", "no_clip")  # nncase also offers kld: measured poor on MobileFaceNet
W_QUANT_TYPES = ("uint8", "int8")


def _positive(where: str, **values: float) -> None:
    bad = [k for k, v in values.items() if not v > 0]
    if bad:
        raise ConfigError(f"{where}: {', '.join(bad)} must be positive")


@dataclasses.dataclass
class ModelConfig:
    """MobileFaceNet shape. Defaults give the paper's ~0.99M parameters and ~221M multiply-adds."""

    input_size: int = 112
    width_multiplier: float = 1.0
    embedding_size: int = 128
    activation: str = "relu"  # one of ACTIVATIONS
    bn_momentum: float = 0.9  # Keras' 0.99 leaves inference statistics untrained on small data
    bn_epsilon: float = 1e-3
    embedding_head: str = "gdc_linear_kpu"  # one of EMBEDDING_HEADS

    def validate(self, where: str = "model") -> None:
        """Refuse a shape the builder cannot make, naming the field."""
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"{where}.activation {self.activation!r}: choose one of {', '.join(ACTIVATIONS)} "
                              "(PReLU does not fit the K210)")
        check_choice(self.embedding_head, EMBEDDING_HEADS, f"{where}.embedding_head")
        _positive(where, width_multiplier=self.width_multiplier, embedding_size=self.embedding_size)
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
        _positive(where, shuffle_buffer=self.shuffle_buffer, cycle_length=self.cycle_length,
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
        if self.relation_weight > 0 and not self.uses_teacher:
            raise ConfigError(f"{where}.relation_weight: only for head distill or a phase with distill_weight > 0")
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
    (no loss scaling needed; slower than float32 on the CPUs measured, see README); the heads compute
    their logits in float32 and the saved embedding model is float32.
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

    def validate(self, where: str = "train") -> None:
        """Refuse a run that cannot train, before any work is done."""
        self.model.validate(f"{where}.model")
        self.pipeline.validate(f"{where}.pipeline")
        if not self.phases:
            raise ConfigError(f"{where}.phases: at least one phase is needed")
        for i, phase in enumerate(self.phases):
            phase.validate(f"{where}.phases.{i}")
        check_choice(self.strategy, STRATEGIES, f"{where}.strategy")
        _positive(where, verification_batch_size=self.verification_batch_size,
                  verification_every=self.verification_every, backup_every_steps=self.backup_every_steps)


@dataclasses.dataclass
class PolicyRule:
    """One branch of the per-identity policy: applies to identities with more than ``more_than`` faces.

    ``action``: ``sample`` (keep a seeded random ``sample`` of the faces), ``keep`` (all) or ``drop``
    (the whole identity). ``augment``: copies added per kept face, by tag (``opening``, ``gaussian``,
    ``saltpepper``), each its own record tagged with the augmentation that made it.
    """

    more_than: int = -1
    action: str = "keep"
    sample: int = 0
    augment: List[str] = dataclasses.field(default_factory=list)

    def validate(self, where: str = "rule") -> None:
        """Refuse an action the policy does not know, or a sample rule without a size."""
        check_choice(self.action, POLICY_ACTIONS, f"{where}.action")
        if self.action == "sample" and self.sample < 1:
            raise ConfigError(f"{where}.sample: a sample rule needs sample >= 1")


def _seed_rules() -> List[PolicyRule]:
    return [
        PolicyRule(more_than=350, action="sample", sample=350),
        PolicyRule(more_than=200, action="keep"),
        PolicyRule(more_than=90, action="keep", augment=["opening"]),
        PolicyRule(more_than=30, action="keep", augment=["opening", "gaussian", "saltpepper"]),
        PolicyRule(more_than=-1, action="drop"),
    ]


@dataclasses.dataclass
class PolicyConfig:
    """Per-identity balancing, counted on aligned faces; rules are tried in order, the first whose
    ``more_than`` is below the count applies. Defaults are the seed's (MobileFaceNet-K210 notes):
    n>350 random 350 | 200<n<=350 keep | 90<n<=200 +opening (2x) | 30<n<=90 +opening+gaussian+
    salt-and-pepper (4x) | n<=30 drop. ``name`` ``none`` keeps every face, no augmentation."""

    name: str = "seed"
    rules: List[PolicyRule] = dataclasses.field(default_factory=_seed_rules)
    opening_kernel: int = 3  # cv2.morphologyEx MORPH_OPEN, elliptical kernel of this side
    gaussian_var: float = 0.005  # skimage.util.random_noise mode="gaussian" variance on 0..1 pixels
    saltpepper_amount: float = 0.01  # skimage.util.random_noise mode="s&p" fraction of pixels

    def validate(self, where: str = "policy") -> None:
        """Refuse rules that cannot be applied (unknown action or augmentation, empty sample)."""
        if not self.rules:
            raise ConfigError(f"{where}.rules: the policy has no rules")
        for i, rule in enumerate(self.rules):
            rule.validate(f"{where}.rules.{i}")
            for tag in rule.augment:
                check_choice(tag, AUGMENTATIONS, f"{where}.rules.{i}.augment")


@dataclasses.dataclass
class BuildConfig:
    """The dataset builder (``mfk210 build-tfrecords``): detection, policy, split, shards, runner."""

    runner: str = "local"  # local (processes) or beam (Apache Beam pipeline)
    workers: int = 0  # local runner processes; 0 = CPU count
    aligned: bool = False  # input is already 112x112 aligned crops: no detection
    unlabeled: bool = False  # input is a flat folder of photos without identities: each photo is its own class
    val_fraction: float = 0.005  # per identity, by source photo (augmented copies follow their original)
    seed: int = 0  # policy sampling, augmentation noise, split and shard order
    jpeg_quality: int = 95
    detector: str = "mtcnn"  # one of DETECTORS: mtcnn (TensorFlow) or yunet (OpenCV's FaceDetectorYN)
    min_face_size: int = 20  # faces smaller than this (box side, photo pixels) are rejected
    select: str = "largest"  # one of SELECT_MODES: which face of a photo with several
    detect_batch_size: int = 16  # photos per MTCNN call
    detect_max_side: int = 1024  # larger photos are detected on a downscaled copy
    detect_pad_multiple: int = 32  # photos padded to a multiple of this to share batches
    records_per_shard: int = 10000
    keep_work: bool = False  # keep OUT_DIR/.work (the resumable per-identity cache) after success
    beam_options: List[str] = dataclasses.field(default_factory=list)  # Beam pipeline flags
    policy: PolicyConfig = dataclasses.field(default_factory=PolicyConfig)

    def validate(self, where: str = "build") -> None:
        """Refuse values the builder cannot use, naming the field."""
        check_choice(self.runner, RUNNERS, f"{where}.runner")
        check_choice(self.select, SELECT_MODES, f"{where}.select")
        check_choice(self.detector, DETECTORS, f"{where}.detector")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"{where}.val_fraction {self.val_fraction}: expected 0 <= f < 1")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"{where}.jpeg_quality {self.jpeg_quality}: expected 1..100")
        if self.workers < 0:
            raise ConfigError(f"{where}.workers {self.workers}: expected 0 (CPU count) or more")
        _positive(where, records_per_shard=self.records_per_shard, detect_batch_size=self.detect_batch_size,
                  detect_max_side=self.detect_max_side, detect_pad_multiple=self.detect_pad_multiple)
        self.policy.validate(f"{where}.policy")


@dataclasses.dataclass
class ExportConfig:
    """`mfk210 export`: how the Keras model becomes TFLite and a K210 kmodel, and how parity is measured.

    ``calibrate_method`` is nncase's PTQ range method (one of ``CALIBRATE_METHODS``);
    calibration faces are drawn (seeded) from the calibration folder/shards, held-out faces for
    the parity report from ``--holdout``, the shards' val split, or the rest of the folder.
    ``use_mse_quant_w`` makes nncase choose weight ranges by least squared error (not min/max).
    ``quantize: false`` compiles a float kmodel (parity checks only: too big for the board).
    """

    calibrate_method: str = "l2"
    calibration_samples: int = 100
    holdout_samples: int = 100
    quantize: bool = True
    w_quant_type: str = "uint8"
    use_mse_quant_w: bool = True  # measured better kmodel parity than min/max ranges (bench/results.md)
    int8_tflite: bool = True
    keep_ir_dump: bool = False
    compile_timeout_s: int = 1800
    seed: int = 0

    def validate(self, where: str = "export") -> None:
        """Refuse a method nncase does not offer here, or an empty sample, naming the field."""
        check_choice(self.calibrate_method, CALIBRATE_METHODS, f"{where}.calibrate_method")
        check_choice(self.w_quant_type, W_QUANT_TYPES, f"{where}.w_quant_type")
        _positive(where, calibration_samples=self.calibration_samples, holdout_samples=self.holdout_samples,
                  compile_timeout_s=self.compile_timeout_s)


@dataclasses.dataclass
class EvalConfig:
    """`mfk210 evaluate`: which models, on which verification sets, and where the report goes.

    Sets: InsightFace ``bins``, a ``pairs`` file (paths relative to ``root``), an identity-per-folder
    ``folder`` (at most ``max_positive_pairs`` same-person pairs and as many others, drawn with
    ``seed``), or precomputed ``embeddings`` + ``issame`` .npy files. ``compare`` names two models
    whose accuracies, drop and embedding cosine agreement are reported. ``flip`` sums each crop's
    embedding with its mirror's (InsightFace's test-time flip). ``out`` receives the PNGs and the
    Markdown table; ``json`` the full results. ``identification`` runs open-set 1:N identification on
    ``folder`` instead (``evaluate/identification.py``): ``enroll_photos`` photos per enrolled person,
    thresholds also for a gallery of ``gallery_size`` people.
    """

    models: List[str] = dataclasses.field(default_factory=list)
    bins: List[str] = dataclasses.field(default_factory=list)
    pairs: Optional[str] = None
    root: Optional[str] = None
    folder: Optional[str] = None
    aligned: bool = False
    embeddings: Optional[str] = None
    issame: Optional[str] = None
    compare: List[str] = dataclasses.field(default_factory=list)
    flip: bool = False
    batch_size: int = 64
    nfolds: int = 10
    max_positive_pairs: int = 3000
    seed: int = 0
    json: Optional[str] = None
    out: Optional[str] = None
    save_bin: Optional[str] = None
    identification: bool = False
    enroll_photos: int = 5
    gallery_size: Optional[int] = None

    def validate(self, where: str = "evaluate") -> None:
        """Refuse fold counts and sizes the protocol cannot use, naming the field."""
        if self.nfolds < 2:
            raise ConfigError(f"{where}.nfolds {self.nfolds}: at least 2 folds")
        _positive(where, batch_size=self.batch_size, max_positive_pairs=self.max_positive_pairs,
                  enroll_photos=self.enroll_photos)
        if self.gallery_size is not None:
            _positive(where, gallery_size=self.gallery_size)
        if self.compare and len(self.compare) != 2:
            raise ConfigError(f"{where}.compare: name exactly two models")


def _canmv_face_detector_anchors() -> List[float]:
    return [0.1075, 0.126875, 0.126875, 0.175, 0.1465625, 0.2246875, 0.1953125, 0.25375, 0.2440625, 0.351875,
            0.341875, 0.4721875, 0.5078125, 0.6696875, 0.8984375, 1.099687, 2.129062, 2.425937]


@dataclasses.dataclass
class BoardConfig:
    """`mfk210 board-files`: what the CanMV script needs besides our kmodel and threshold.

    The detector and landmark models are CanMV's own examples (YOLOv2 ``face_detect_320x240.kmodel``
    with these 9 anchors, run on the 320x240 camera frame, and ``ld5.kmodel``, 5 landmarks from a
    128x128 crop); the paths are where the user copies them on the SD card. ``kmodel_name`` is the
    name our kmodel gets on the SD card (unless it is flashed). ``runtime`` is the firmware's nncase
    runtime (see ``k210.RUNTIMES``).
    """

    sd_root: str = "/sd"
    kmodel_name: str = "mfk210.kmodel"
    detector_path: str = "/sd/KPU/yolo_face_detect/face_detect_320x240.kmodel"
    detector_anchor: List[float] = dataclasses.field(default_factory=_canmv_face_detector_anchors)
    detector_threshold: float = 0.5
    detector_nms: float = 0.2
    landmarks_path: str = "/sd/KPU/face_recognization/ld5.kmodel"
    landmarks_input_size: int = 128
    enroll_button: bool = True
    runtime: str = "canmv-feat-kpu"


@dataclasses.dataclass
class DemoConfig:
    """`make demo` on the ORL faces: who trains, who picks the checkpoint, who is held out.

    Identities are ORL's ``s1..s40``. ``reduced_photos`` hands the builder fewer photos of some
    training identities so that every branch of the scaled policy in ``build_config`` runs. The
    checkpoint is chosen by verification on the ``select`` identities, and every reported figure
    comes from the ``test`` identities, which nothing before the report has seen.
    ``enroll_photos`` of each test identity form the gallery; the others are identified.
    """

    train: List[int] = dataclasses.field(default_factory=lambda: list(range(1, 28)))
    select: List[int] = dataclasses.field(default_factory=lambda: [28, 29, 30])
    test: List[int] = dataclasses.field(default_factory=lambda: list(range(31, 41)))
    reduced_photos: Dict[str, int] = dataclasses.field(
        default_factory=lambda: {"s24": 8, "s25": 6, "s26": 4, "s27": 3})
    build_config: str = "configs/demo_build.yaml"
    train_config: str = "configs/demo_cpu.yaml"
    distill_config: str = "configs/demo_distill.yaml"  # the distilled student trained beside the from-scratch one
    enroll_photos: int = 5
    calibrate_method: str = "l2"
    calibration_samples: int = 100
    workers: int = 0
