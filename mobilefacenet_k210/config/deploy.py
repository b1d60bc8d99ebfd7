"""Configs from a trained model to the board: export (TFLite, kmodel) and board files, each with its choice
lists beside its fields and its own ``validate()``."""
import dataclasses
from typing import List

from mobilefacenet_k210.config.loader import check_choice, check_positive

CALIBRATE_METHODS = ("l2", "no_clip")  # nncase also offers kld: measured poor on MobileFaceNet
W_QUANT_TYPES = ("uint8", "int8")


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
