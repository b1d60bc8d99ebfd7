"""The builder's face detectors behind one interface, and ``make_aligner``, its one entry point.

``mtcnn``: :class:`~mobilefacenet_k210.data.align.FaceAligner` (TensorFlow, batched). ``yunet``:
:class:`YuNetAligner`, OpenCV's ``cv2.FaceDetectorYN`` running the int8 YuNet ONNX file
(:mod:`.detector_weights`), one photo per call, no TensorFlow. Both return :class:`Detection` objects with the
landmarks in ``ARCFACE_TEMPLATE`` order and share the ``select``/``min_face_size`` rules and the
alignment of :class:`~mobilefacenet_k210.data.align.AlignerBase`.

YuNet's five points are the person's right eye, left eye, nose tip, right and left mouth corner:
on the photo, image-left first, which is the template's order (MTCNN's ``left_eye`` is also the
image-left one). The int8 model scores clear frontal faces of grayscale photos (the ORL demo faces)
below OpenCV's default threshold of 0.9 at times, so ``score_threshold`` is 0.7, MTCNN's last-stage
threshold; NMS at 0.3 IoU and top-k 5000 as in OpenCV's own YuNet sample.
"""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from mobilefacenet_k210.config import DETECTORS, BuildConfig, check_choice
from mobilefacenet_k210.data.align import AlignerBase, Detection, FaceAligner, downscale, mtcnn_description

YUNET_SCORE_THRESHOLD = 0.7
YUNET_NMS_THRESHOLD = 0.3
YUNET_TOP_K = 5000


class YuNetAligner(AlignerBase):
    """One reusable YuNet detector (OpenCV's ``FaceDetectorYN``) plus the builder's selection and
    alignment rules. Photos larger than ``detect_max_side`` are detected on a downscaled copy
    (landmarks scaled back; the crop comes from the full photo). ``model``: the ONNX file (default:
    fetched once into the cache, :func:`~mobilefacenet_k210.data.detector_weights.fetch_yunet`)."""

    name = "yunet"

    def __init__(self, min_face_size: int = 20, select: str = "largest", detect_max_side: int = 1024,
                 model: Optional[Union[str, Path]] = None, score_threshold: float = YUNET_SCORE_THRESHOLD,
                 nms_threshold: float = YUNET_NMS_THRESHOLD, top_k: int = YUNET_TOP_K):
        super().__init__(min_face_size, select)
        import cv2

        from mobilefacenet_k210.data.detector_weights import fetch_yunet

        self.detect_max_side = int(detect_max_side)
        self.model = Path(model) if model else fetch_yunet()
        self._net = cv2.FaceDetectorYN.create(str(self.model), "", (320, 320), float(score_threshold),
                                              float(nms_threshold), int(top_k))
        self._size = (320, 320)

    def _detect_one(self, image: np.ndarray) -> List[Detection]:
        import cv2

        image = np.asarray(image)
        h, w = image.shape[:2]
        small, s = downscale(image, self.detect_max_side)
        sh, sw = small.shape[:2]
        if (sw, sh) != self._size:
            self._net.setInputSize((sw, sh))
            self._size = (sw, sh)
        bgr = cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2BGR)
        _, rows = self._net.detect(bgr)
        faces = []
        for row in np.zeros((0, 15)) if rows is None else np.asarray(rows, dtype=np.float64):
            x, y, bw, bh = row[:4] / s
            box = np.array([max(x, 0), max(y, 0), min(x + bw, w - 1), min(y + bh, h - 1)])
            faces.append(Detection(box=box, landmarks=row[4:14].reshape(5, 2) / s, confidence=float(row[14])))
        return faces

    def detect(self, images: Sequence[np.ndarray]) -> List[List[Detection]]:
        """All faces of each photo, one photo per network call (no batch effect on the result)."""
        return [self._detect_one(img) for img in images]

    def describe(self) -> Dict[str, str]:
        """What ``metadata.json`` records of this detector: :func:`yunet_description`."""
        return yunet_description(self.model)


def yunet_description(model: Optional[Union[str, Path]] = None) -> Dict[str, str]:
    """``yunet``, the ONNX file's name and its sha256 (the file is fetched first if not cached)."""
    from mobilefacenet_k210.data.detector_weights import fetch_yunet
    from mobilefacenet_k210.fileinfo import sha256_file

    path = Path(model) if model else fetch_yunet()
    return {"name": YuNetAligner.name, "model": path.name, "model_sha256": sha256_file(path)}


def make_aligner(cfg: BuildConfig) -> AlignerBase:
    """The detector+aligner ``cfg.detector`` names, built with the config's detection settings (one
    per process; reuse it). Same interface for every detector: ``detect``, ``align``, ``describe``."""
    check_choice(cfg.detector, DETECTORS, "build.detector")
    if cfg.detector == "yunet":
        return YuNetAligner(min_face_size=cfg.min_face_size, select=cfg.select, detect_max_side=cfg.detect_max_side)
    return FaceAligner(min_face_size=cfg.min_face_size, select=cfg.select, detect_max_side=cfg.detect_max_side,
                       pad_multiple=cfg.detect_pad_multiple, batch_size=cfg.detect_batch_size)


def describe_detector(cfg: BuildConfig) -> Dict[str, str]:
    """The ``detector`` entry of ``metadata.json`` for ``cfg``: name, model file/version, sha256.

    Cheap and TensorFlow-free; for YuNet it fetches the model, so calling it in the parent before the
    workers start downloads the file once and reports a failed download before any work is done."""
    check_choice(cfg.detector, DETECTORS, "build.detector")
    return yunet_description() if cfg.detector == "yunet" else mtcnn_description()
