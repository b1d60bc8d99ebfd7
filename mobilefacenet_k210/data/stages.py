"""The builder's pure steps, shared by both runners: align a photo, an identity's records.

The input is scanned first (:mod:`.scan`) into the :class:`IdentityTask` lists defined here; then

* per photo (:func:`align_photos`): decode, detect, select, align (batched MTCNN; the caller owns
  the one detector per process and reuses it); a RecordIO record is read and its JPEG kept as it is
  (:func:`read_records`);
* per identity (:func:`identity_records`): policy, augmentation, split, JPEG encoding (none for a
  kept JPEG that no augmentation touches).

Each is a function of its arguments only (no process state, no files written), so the local runner
and the Beam runner give the same records for the same input and config.
"""
import dataclasses
import hashlib
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from mobilefacenet_k210.config import BuildConfig
from mobilefacenet_k210.data import insightface_set
from mobilefacenet_k210.data import policy as policy_lib
from mobilefacenet_k210.data import recordio, tfrecord
from mobilefacenet_k210.data.augment import ORIGINAL, augment, stable_seed
from mobilefacenet_k210.errors import Mfk210Error
from mobilefacenet_k210.preprocessing import INPUT_SIZE


class BuildError(Mfk210Error, RuntimeError):
    """The whole build is impossible (no input, unwritable output, nothing left); says what to do."""


@dataclasses.dataclass(frozen=True, slots=True)  # slots: a set of millions holds one per photo in memory
class Photo:
    """One input photo: where to read it, its name in the records, whether it is already aligned.

    ``offset`` >= 0: the photo is the record at that byte offset of the RecordIO file ``path``."""

    path: str
    source: str
    aligned: bool = False
    offset: int = -1


@dataclasses.dataclass
class IdentityTask:
    """One identity's photos in sorted source order (the unit of caching and of the policy)."""

    name: str
    photos: List[Photo]

    def fingerprint(self) -> str:
        """Changes when a photo of the identity is added, removed, renamed or rewritten."""
        h = hashlib.sha256(self.name.encode("utf-8"))
        stamps: Dict[str, str] = {}  # the photos of a RecordIO set share one file
        for p in self.photos:
            if p.path not in stamps:
                try:
                    st = os.stat(p.path)
                    stamps[p.path] = f"{st.st_size}:{st.st_mtime_ns}"
                except OSError:
                    stamps[p.path] = "missing"
            where = f"\x1e{p.offset}" if p.offset >= 0 else ""
            h.update(f"\x1f{p.source}\x1e{p.aligned}\x1e{stamps[p.path]}{where}".encode("utf-8"))
        return h.hexdigest()


@dataclasses.dataclass
class PhotoResult:
    """What became of one photo: its aligned crop, or its JPEG to keep as it is (a RecordIO record, by
    where it lies: decoded only if an augmentation needs the pixels), or neither and the reason."""

    source: str
    crop: Optional[np.ndarray]
    reason: str = ""
    jpeg: Optional[recordio.RecordRef] = None

    @property
    def face(self) -> bool:
        """Whether the photo gave an aligned face."""
        return self.crop is not None or self.jpeg is not None

    def image(self) -> np.ndarray:
        """The aligned crop, RGB uint8 (decoded from the kept JPEG when there is no crop)."""
        from mobilefacenet_k210.data.align import decode_image

        return self.crop if self.crop is not None else decode_image(recordio.read_payloads([self.jpeg])[0], self.source)


@dataclasses.dataclass
class IdentityOutput:
    """One identity after the policy: records without labels (labels need every identity first)."""

    name: str
    faces: int
    rule: int
    dropped: bool
    records: List[Tuple[str, str, str, Union[bytes, recordio.RecordRef]]]  # (split, source, tag, JPEG or where it lies)
    rejected: List[Tuple[str, str]]

    def summary(self) -> Dict[str, Any]:
        """The small JSON part kept in memory by the local runner."""
        counts: Dict[str, int] = {s: 0 for s in tfrecord.SPLITS}
        tags: Dict[str, int] = {}
        for split, _, tag, _ in self.records:
            counts[split] += 1
            tags[tag] = tags.get(tag, 0) + 1
        return {"name": self.name, "faces": self.faces, "rule": self.rule, "dropped": self.dropped,
                "records": counts, "augmentation": tags, "rejected": [list(r) for r in self.rejected]}


def chunks(photos: Sequence[Photo], size: int) -> List[List[Photo]]:
    """The identity's photos cut into detection batches: a fixed function of the sorted list, so a
    photo is detected in the same batch by every runner (MTCNN's output depends on the batch). The
    records of a RecordIO set are detected by nobody: one batch, read with the file opened once."""
    ordered = sorted(photos, key=lambda p: p.source)
    if ordered and all(p.offset >= 0 for p in ordered):
        size = len(ordered)
    return [list(ordered[i:i + size]) for i in range(0, len(ordered), max(1, size))]


# --- per photo -------------------------------------------------------------------------------------
def make_aligner(cfg: BuildConfig) -> Any:
    """The detector+aligner ``cfg.detector`` names (one per process; reuse it)."""
    from mobilefacenet_k210.data import detectors

    return detectors.make_aligner(cfg)


def align_photos(photos: Sequence[Photo], aligner: Any) -> List[PhotoResult]:
    """Decode every photo, then detect and align the raw ones in one batched call.

    Never raises for a bad photo: each failure becomes a :class:`PhotoResult` with its reason.
    ``aligner`` may be ``None`` when every photo is already aligned.
    """
    from mobilefacenet_k210.data.align import ImageError, read_image

    if photos and all(p.offset >= 0 for p in photos):
        return read_records(photos)
    results: List[Optional[PhotoResult]] = [None] * len(photos)
    raw_idx, raw_imgs = [], []
    for i, photo in enumerate(photos):
        try:
            image = read_image(photo.path)
        except ImageError as exc:
            results[i] = PhotoResult(photo.source, None, exc.reason)
            continue
        except Exception as exc:  # a decoder bug on one file must not stop the run
            results[i] = PhotoResult(photo.source, None, f"unreadable: {type(exc).__name__}: {exc}")
            continue
        if photo.aligned:
            if image.shape[:2] != (INPUT_SIZE, INPUT_SIZE):
                results[i] = PhotoResult(photo.source, None, f"not an aligned {INPUT_SIZE}x{INPUT_SIZE} crop "
                                                             f"({image.shape[1]}x{image.shape[0]})")
            else:
                results[i] = PhotoResult(photo.source, image)
        else:
            raw_idx.append(i)
            raw_imgs.append(image)
    if raw_imgs:
        if aligner is None:
            raise ValueError("raw photos need a FaceAligner")
        try:
            aligned = aligner.align(raw_imgs)
        except Exception:  # one odd photo must not sink its batch: retry them one by one
            aligned = [_align_one(aligner, img) for img in raw_imgs]
        for k, i in enumerate(raw_idx):
            results[i] = PhotoResult(photos[i].source, aligned[k].crop, aligned[k].reason)
    return [r for r in results if r is not None]


def read_records(photos: Sequence[Photo]) -> List[PhotoResult]:
    """RecordIO photos (aligned crops): a JPEG of the aligned size is kept as it is, anything else is
    decoded (and re-encoded later); a damaged record or an undecodable or wrongly sized image is a
    rejection naming the record's key."""
    from mobilefacenet_k210.data.align import ImageError, decode_image

    results = []
    files: Dict[str, recordio.RecordFile] = {}
    try:
        for photo in photos:
            if photo.path not in files:
                files[photo.path] = recordio.RecordFile(photo.path)
            try:
                payload = recordio.unpack(files[photo.path].read(photo.offset))[1]
            except recordio.DamagedRecord as exc:
                results.append(PhotoResult(photo.source, None, f"damaged record: {exc}"))
                continue
            if insightface_set.passes_through(payload):
                results.append(PhotoResult(photo.source, None, jpeg=recordio.RecordRef(photo.path, photo.offset)))
                continue
            if payload[:2] == b"\xff\xd8" and b"\xff\xd9" not in payload[-32:]:  # a decoder would fill it in grey
                results.append(PhotoResult(photo.source, None, "JPEG cut short (no end-of-image marker)"))
                continue
            try:
                image = decode_image(payload, photo.source)
            except ImageError as exc:
                results.append(PhotoResult(photo.source, None, exc.reason))
                continue
            if image.shape[:2] != (INPUT_SIZE, INPUT_SIZE):
                results.append(PhotoResult(photo.source, None, f"not an aligned {INPUT_SIZE}x{INPUT_SIZE} crop "
                                                                f"({image.shape[1]}x{image.shape[0]})"))
            else:
                results.append(PhotoResult(photo.source, image))
    finally:
        for f in files.values():
            f.close()
    return results


def _align_one(aligner: Any, image: np.ndarray) -> Any:
    from mobilefacenet_k210.data.align import AlignResult

    try:
        return aligner.align([image])[0]
    except Exception as exc:
        return AlignResult(None, f"face detection failed: {type(exc).__name__}: {exc}")


# --- per identity ----------------------------------------------------------------------------------
def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """RGB uint8 -> JPEG bytes (OpenCV; deterministic for the same pixels and quality)."""
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return buf.tobytes()


def identity_records(name: str, results: Sequence[PhotoResult], cfg: BuildConfig) -> IdentityOutput:
    """Policy, augmentation, split and JPEG encoding of one identity's aligned faces.

    Records come out in a seeded shuffled order, so originals and their copies are not adjacent.
    """
    faces = {r.source: r for r in results if r.face}
    rejected = sorted((r.source, r.reason) for r in results if not r.face)
    rule_index, rule = policy_lib.choose_rule(len(faces), cfg.policy)
    plan = policy_lib.plan_identity(name, list(faces), cfg.policy, cfg.seed)
    if not plan:
        return IdentityOutput(name, len(faces), rule_index, True, [], rejected)
    val = policy_lib.split_sources(name, [s for s, _ in plan], cfg.val_fraction, cfg.seed)
    p = cfg.policy
    records = []
    pixels: Dict[str, np.ndarray] = {}  # each kept JPEG decoded once, and only when an augmentation needs it
    for source, tag in plan:
        face = faces[source]
        if tag == ORIGINAL and face.jpeg is not None:
            jpeg = face.jpeg
        else:
            if source not in pixels:
                pixels[source] = face.image()
            image = augment(pixels[source], tag, stable_seed(cfg.seed, name, source, tag), p.opening_kernel,
                            p.gaussian_var, p.saltpepper_amount)
            jpeg = encode_jpeg(image, cfg.jpeg_quality)
        records.append(("val" if source in val else "train", source, tag, jpeg))
    order = np.random.default_rng(stable_seed(cfg.seed, name, "order")).permutation(len(records))
    return IdentityOutput(name, len(faces), rule_index, False, [records[i] for i in order], rejected)


def process_identity(task: IdentityTask, cfg: BuildConfig, aligner: Any) -> IdentityOutput:
    """All the per-photo and per-identity work of one identity (the local runner's unit)."""
    results: List[PhotoResult] = []
    for chunk in chunks(task.photos, cfg.detect_batch_size):
        results.extend(align_photos(chunk, aligner))
    return identity_records(task.name, results, cfg)

