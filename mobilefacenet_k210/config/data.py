"""Configs of the dataset builder: the per-identity policy and the build (detector, split, shards, runner),
each with its choice lists beside its fields and its own ``validate()``."""
import dataclasses
from typing import List

from mobilefacenet_k210.config.loader import ConfigError, check_choice, check_positive

RUNNERS = ("local", "beam")
SELECT_MODES = ("largest", "center", "confidence")
DETECTORS = ("mtcnn", "yunet")  # face detectors of the builder (data/detectors.py)
POLICY_ACTIONS = ("sample", "keep", "drop")
POLICY_PRESETS = ("seed", "none")
AUGMENTATIONS = ("opening", "gaussian", "saltpepper")  # the tags of the policy's added copies


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
    workers: int = 0  # local runner processes; 0 = auto (CPU count; this process alone for a few photos)
    aligned: bool = False  # input is already 112x112 aligned crops: no detection
    unlabeled: bool = False  # input is a flat folder of photos without identities: each photo is its own class
    identity_prefix: str = ""  # RecordIO input: identities are named PREFIX_<class id>; "" = the .rec's folder name
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
            raise ConfigError(f"{where}.workers {self.workers}: expected 0 (auto) or more")
        check_positive(where, records_per_shard=self.records_per_shard, detect_batch_size=self.detect_batch_size,
                  detect_max_side=self.detect_max_side, detect_pad_multiple=self.detect_pad_multiple)
        self.policy.validate(f"{where}.policy")
