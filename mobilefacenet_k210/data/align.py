"""Per-photo work of the builder: decode any photo to RGB, detect faces, align to 112x112.

``read_image`` is the "sanitize" step: odd names and formats (CMYK JPEG, 16-bit or alpha PNG, GIF,
WebP, TIFF, grayscale) all come back as RGB uint8, or raise :class:`ImageError` naming the file and
the reason. :class:`AlignerBase` holds the rules every detector shares (which face of a photo,
the minimum face size, the alignment); :class:`FaceAligner` is the MTCNN one, and
:mod:`mobilefacenet_k210.data.detectors` adds YuNet and ``make_aligner`` (the builder's entry point).

:class:`FaceAligner` holds one MTCNN detector (building it costs ~0.5 s; reuse it) and detects a
list of photos per ``detect_faces`` call, which is several times faster per photo than one call per
photo. The batch a photo is detected in changes MTCNN's output slightly (sub-pixel), so the batches
are a deterministic function of the photo list: the same list gives the same crops in any runner or
process.
"""
import dataclasses
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from mobilefacenet_k210.config import SELECT_MODES, check_choice
from mobilefacenet_k210.errors import Mfk210Error
from mobilefacenet_k210.preprocessing import ARCFACE_TEMPLATE, INPUT_SIZE



class ImageError(Mfk210Error, ValueError):
    """A file that cannot be turned into an RGB image; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: Union[str, Path], reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _to_uint8_rgb(array: np.ndarray, bgr: bool) -> np.ndarray:
    """Any decoded array (gray/BGR/BGRA, 8/16-bit or float) -> contiguous RGB uint8 HxWx3."""
    import cv2

    if array.dtype == np.uint16:
        array = np.rint(array.astype(np.float32) / 257.0).astype(np.uint8)
    elif array.dtype in (np.float32, np.float64):
        hi = float(np.nanmax(array)) if array.size else 1.0
        scale = 255.0 if hi <= 1.0 else 1.0
        array = np.clip(np.nan_to_num(array) * scale, 0, 255).astype(np.uint8)
    elif array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    if array.ndim == 2:
        return cv2.cvtColor(array, cv2.COLOR_GRAY2RGB)
    channels = array.shape[2]
    if channels == 1:
        return cv2.cvtColor(array[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 2:  # gray + alpha
        return cv2.cvtColor(np.ascontiguousarray(array[:, :, 0]), cv2.COLOR_GRAY2RGB)
    if channels == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    if bgr:
        return cv2.cvtColor(array[:, :, :3], cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(array[:, :, :3])


def _decode_pillow(data: bytes) -> np.ndarray:
    """Pillow decode of the first frame, EXIF orientation applied, 16-bit and CMYK handled."""
    import io

    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as img:
        img.seek(0)
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float64)
            hi = 65535.0 if arr.max(initial=0) > 255 else 255.0
            return _to_uint8_rgb(np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8), bgr=False)
        if img.mode == "F":
            return _to_uint8_rgb(np.asarray(img, dtype=np.float32), bgr=False)
        return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def read_image(path: Union[str, Path]) -> np.ndarray:
    """Decode a photo file to RGB uint8 HxWx3 (:func:`decode_image`).

    The bytes are read by Python so that any file name (non-ASCII, spaces) works. Raises
    :class:`ImageError` for a missing, unreadable, empty or undecodable file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise ImageError(path, "is a folder, not an image file") from None
    except OSError as exc:
        raise ImageError(path, f"unreadable: {exc.strerror or exc}") from None
    return decode_image(data, path)


def decode_image(data: bytes, where: Union[str, Path] = "image") -> np.ndarray:
    """Encoded image bytes to RGB uint8 HxWx3 with OpenCV, falling back to Pillow.

    OpenCV (``IMREAD_COLOR | IMREAD_ANYDEPTH``: EXIF orientation applied, alpha dropped, 16-bit kept
    and scaled to 8-bit) decodes most files fastest; Pillow reads what it cannot (GIF, odd TIFFs).
    Raises :class:`ImageError` naming ``where`` for empty or undecodable bytes.
    """
    import cv2

    if not data:
        raise ImageError(where, "not an image: empty file")
    array = None
    try:
        array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    except cv2.error:
        array = None
    if array is not None and array.size > 0:
        return _to_uint8_rgb(array, bgr=True)
    try:
        image = _decode_pillow(data)
    except Exception as exc:  # Pillow raises many kinds (UnidentifiedImageError, OSError, SyntaxError)
        raise ImageError(where, f"not an image: neither OpenCV nor Pillow can decode it ({exc})") from None
    if image.size == 0:
        raise ImageError(where, "not an image: decodes to an empty picture")
    return image


def align_to_template(image: np.ndarray, landmarks: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """Warp ``image`` so that its 5 landmarks (5x2 x,y in MTCNN order) land on ``ARCFACE_TEMPLATE``.

    A similarity transform (rotation, uniform scale, translation) estimated by least squares with
    ``skimage.transform.SimilarityTransform``, applied with ``cv2.warpAffine`` (bilinear, black border).
    """
    import cv2
    from skimage.transform import SimilarityTransform

    src = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    dst = ARCFACE_TEMPLATE.astype(np.float64) * (size / INPUT_SIZE)
    tform = SimilarityTransform()
    if not tform.estimate(src, dst):
        raise ValueError(f"landmarks {src.tolist()} are degenerate: no similarity transform")
    return cv2.warpAffine(np.ascontiguousarray(image), tform.params[:2], (size, size),
                          flags=cv2.INTER_LINEAR, borderValue=0.0)


@dataclasses.dataclass
class Detection:
    """One face found by a detector, in the photo's own pixel coordinates."""

    box: np.ndarray  # x1, y1, x2, y2
    # 5x2 x,y in ARCFACE_TEMPLATE order: eyes, nose, mouth corners; each pair image-left first
    landmarks: np.ndarray
    confidence: float

    @property
    def size(self) -> float:
        """Side of the face box (the smaller of width and height), in photo pixels."""
        return float(min(self.box[2] - self.box[0], self.box[3] - self.box[1]))


@dataclasses.dataclass
class AlignResult:
    """What became of one photo: the aligned crop, or ``None`` and the reason."""

    crop: Optional[np.ndarray]
    reason: str = ""
    detection: Optional[Detection] = None


class AlignerBase:
    """The selection and alignment rules of the builder, shared by every detector.

    ``min_face_size``: faces whose box side is below it (in photo pixels) are rejected as "face too
    small". ``select``: which face of a photo with several: the ``largest`` box, the one nearest the
    ``center``, or the highest ``confidence``. A subclass sets ``name`` and implements ``detect``
    (all faces of each photo, in photo pixels) and ``describe`` (what ``metadata.json`` records).
    """

    name = ""

    def __init__(self, min_face_size: int = 20, select: str = "largest"):
        check_choice(select, SELECT_MODES, "select")
        self.min_face_size = int(min_face_size)
        self.select = select

    def detect(self, images: Sequence[np.ndarray]) -> List[List[Detection]]:
        """All faces of each photo (implemented by each detector)."""
        raise NotImplementedError

    def describe(self) -> Dict[str, str]:
        """The detector's name and the sha256 of its weights, for ``metadata.json``."""
        raise NotImplementedError

    def choose(self, faces: List[Detection], shape: Tuple[int, ...]) -> Optional[Detection]:
        """The face the ``select`` rule picks among ``faces`` of a photo of ``shape``."""
        if not faces:
            return None
        if self.select == "largest":
            return max(faces, key=lambda f: (f.size, f.confidence))
        if self.select == "confidence":
            return max(faces, key=lambda f: (f.confidence, f.size))
        cy, cx = shape[0] / 2.0, shape[1] / 2.0
        return min(faces, key=lambda f: ((f.box[0] + f.box[2]) / 2 - cx) ** 2 + ((f.box[1] + f.box[3]) / 2 - cy) ** 2)

    def align(self, images: Sequence[np.ndarray]) -> List[AlignResult]:
        """Detect, select and align each photo; a photo without a usable face gets a reason."""
        results = []
        for image, faces in zip(images, self.detect(images)):
            face = self.choose(faces, np.asarray(image).shape)
            if face is None:
                results.append(AlignResult(None, "no face"))
            elif face.size < self.min_face_size:
                results.append(AlignResult(None, f"face too small ({face.size:.0f} px < {self.min_face_size} px)", face))
            else:
                results.append(AlignResult(align_to_template(image, face.landmarks), "", face))
        return results

    def detect_align(self, images: Sequence[np.ndarray]) -> List[Optional[np.ndarray]]:
        """112x112x3 uint8 aligned crop of the selected face of each photo, or ``None`` if none."""
        return [r.crop for r in self.align(images)]


def downscale(image: np.ndarray, max_side: int) -> Tuple[np.ndarray, float]:
    """``image`` shrunk (area interpolation) so that its longer side is at most ``max_side``, and the
    scale applied (1.0: returned as is). Detection on the copy, landmarks divided by the scale."""
    import cv2

    h, w = image.shape[:2]
    scale = min(1.0, max_side / float(max(h, w)))
    if scale < 1.0:
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return image, scale


def _sha256_files(paths: Sequence[Path]) -> str:
    """One sha256 over the bytes of ``paths`` in order."""
    import hashlib

    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).read_bytes())
    return h.hexdigest()


class FaceAligner(AlignerBase):
    """One reusable MTCNN detector plus the selection and alignment rules of the builder.

    Photos larger than ``detect_max_side`` are detected on a downscaled copy (landmarks scaled back;
    the crop comes from the full photo). Photos are padded bottom/right to a multiple of
    ``pad_multiple`` so that photos of similar size share a batch.
    """

    name = "mtcnn"

    def __init__(self, min_face_size: int = 20, select: str = "largest", detect_max_side: int = 1024,
                 pad_multiple: int = 32, batch_size: int = 16, pyramid_min_face: int = 20,
                 device: str = "CPU:0"):
        super().__init__(min_face_size, select)
        from mtcnn import MTCNN

        self.detect_max_side = int(detect_max_side)
        self.pad_multiple = max(1, int(pad_multiple))
        self.batch_size = max(1, int(batch_size))
        self.pyramid_min_face = int(pyramid_min_face)
        self._mtcnn = MTCNN(device=device)

    def _prepare(self, image: np.ndarray) -> Tuple[np.ndarray, float]:
        """Downscale (if needed) and pad one photo for detection; returns it and its scale."""
        import cv2

        h, w = image.shape[:2]
        scale = min(1.0, self.detect_max_side / float(max(h, w)))
        if scale < 1.0:
            image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                               interpolation=cv2.INTER_AREA)
            h, w = image.shape[:2]
        m = self.pad_multiple
        ph, pw = -(-max(h, 12) // m) * m, -(-max(w, 12) // m) * m
        if (ph, pw) != (h, w):
            image = np.pad(image, ((0, ph - h), (0, pw - w), (0, 0)))
        return image, scale

    def detect(self, images: Sequence[np.ndarray]) -> List[List[Detection]]:
        """All faces of each photo. Photos are grouped by padded size, in order, into batches."""
        prepared = [self._prepare(np.asarray(img)) for img in images]
        groups: Dict[Tuple[int, int], List[int]] = {}
        for i, (arr, _) in enumerate(prepared):
            groups.setdefault(arr.shape[:2], []).append(i)
        out: List[List[Detection]] = [[] for _ in images]
        for shape in sorted(groups):
            idx = groups[shape]
            for start in range(0, len(idx), self.batch_size):
                part = idx[start:start + self.batch_size]
                batch = [prepared[i][0].astype(np.float32) for i in part]
                rows = self._mtcnn.detect_faces(batch, output_type="numpy", box_format="xyxy",
                                                min_face_size=self.pyramid_min_face)
                rows = np.asarray(rows, dtype=np.float64).reshape(-1, 16)
                for row in rows:
                    i = part[int(row[0])]
                    h, w = np.asarray(images[i]).shape[:2]
                    s = prepared[i][1]
                    box = row[1:5] / s
                    marks = np.stack([row[6:11], row[11:16]], axis=1) / s
                    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                    if cx >= w or cy >= h:  # a "face" found in the padding
                        continue
                    box = np.array([max(box[0], 0), max(box[1], 0), min(box[2], w - 1), min(box[3], h - 1)])
                    out[i].append(Detection(box=box, landmarks=marks, confidence=float(row[5])))
        for i, faces in enumerate(out):
            if not faces:  # the padding can shift MTCNN's pyramid past a face: try the photo alone, unpadded
                out[i] = self._detect_single(np.asarray(images[i]))
        return out

    def _detect_single(self, image: np.ndarray) -> List[Detection]:
        """All faces of one photo detected on its own (downscaled if large, never padded)."""
        import cv2

        h, w = image.shape[:2]
        s = min(1.0, self.detect_max_side / float(max(h, w)))
        small = image if s == 1.0 else cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))),
                                                  interpolation=cv2.INTER_AREA)
        rows = self._mtcnn.detect_faces(small.astype(np.float32), output_type="numpy", box_format="xyxy",
                                        min_face_size=self.pyramid_min_face)
        faces = []
        for row in np.asarray(rows, dtype=np.float64).reshape(-1, 16):
            box = row[1:5] / s
            box = np.array([max(box[0], 0), max(box[1], 0), min(box[2], w - 1), min(box[3], h - 1)])
            marks = np.stack([row[6:11], row[11:16]], axis=1) / s
            faces.append(Detection(box=box, landmarks=marks, confidence=float(row[5])))
        return faces

    def describe(self) -> Dict[str, str]:
        """What ``metadata.json`` records of this detector: :func:`mtcnn_description`."""
        return mtcnn_description()


def mtcnn_description() -> Dict[str, str]:
    """``mtcnn``, the package's version and one sha256 of its pnet, rnet and onet weight files
    (found without importing the package, which would import TensorFlow)."""
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec("mtcnn")
    weights = Path(list(spec.submodule_search_locations)[0]) / "assets" / "weights"
    return {"name": FaceAligner.name, "version": importlib.metadata.version("mtcnn"),
            "model_sha256": _sha256_files([weights / f"{n}.lz4" for n in ("pnet", "rnet", "onet")])}


def configure_threads(threads: int) -> None:
    """Limit TensorFlow's CPU threads (one worker per core scales better than one process on all)."""
    if threads <= 0:
        return
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(threads))
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already initialized in this process: keep its setting
        pass
