"""Faces for calibration and parity: aligned 112x112 crops from a folder of images or from shards.

Calibration and held-out faces never overlap: from a folder, the held-out faces are the images not
drawn for calibration (or another folder); from shards (a folder with ``metadata.json``),
calibration comes from the train split and held-out faces from the val split. Only original
records are used from shards (augmented copies would over-weight a few photos).
"""
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from mobilefacenet_k210 import preprocessing
from mobilefacenet_k210.errors import Mfk210Error
from mobilefacenet_k210.fileinfo import IMAGE_SUFFIXES, is_image_file


class CalibrationError(Mfk210Error, ValueError):
    """A calibration/held-out source that holds no usable aligned faces."""


def is_shard_folder(path: Union[str, Path]) -> bool:
    """A folder written by the shard builder (it has ``metadata.json``)."""
    from mobilefacenet_k210.data.tfrecord import METADATA_FILE

    return (Path(path) / METADATA_FILE).is_file()


def image_files(folder: Union[str, Path]) -> List[Path]:
    """Image files under ``folder`` (recursively), sorted for reproducibility."""
    folder = Path(folder)
    if not folder.exists():
        raise CalibrationError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise CalibrationError(f"{folder}: not a folder (give a folder of aligned face images or shards)")
    return sorted(p for p in folder.rglob("*") if is_image_file(p))


def _no_images(folder: Path) -> str:
    """Why a calibration folder without image files cannot be used, and what to give instead."""
    from mobilefacenet_k210.data.tfrecord import METADATA_FILE

    wanted = (f"give a folder of aligned 112x112 face images ({', '.join(IMAGE_SUFFIXES)}) or a shard "
              f"folder with its {METADATA_FILE}")
    entries = [p for p in folder.rglob("*") if p.is_file()]
    shards = [p for p in entries if p.suffix == ".tfrecord" or ".tfrecord" in p.name]
    if shards:
        return (f"{folder}: no face images here, but {len(shards)} TFRecord shard(s) without the {METADATA_FILE} "
                "that says which shards and splits to read: copy it along from the `mfk210 build-tfrecords` "
                f"output, or {wanted}")
    if not entries:
        return f"{folder}: no face images here (empty folder); {wanted}"
    kinds = ", ".join(sorted({p.suffix or p.name for p in entries})[:5])
    return f"{folder}: no face images here, only {len(entries)} other file(s) ({kinds}); {wanted}"


def _pick(count: int, limit: Optional[int], seed: int) -> np.ndarray:
    if limit is None or limit >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=limit, replace=False))


def _wrong_size(where: Union[str, Path], image: np.ndarray) -> CalibrationError:
    return CalibrationError(f"{where}: {image.shape[1]}x{image.shape[0]} pixels, expected an aligned "
                            f"{preprocessing.INPUT_SIZE}x{preprocessing.INPUT_SIZE} face crop (align photos with "
                            "`mfk210 build-tfrecords` first)")


def _folder_faces(folder: Path, limit: Optional[int], seed: int,
                  exclude: Sequence[str]) -> Tuple[np.ndarray, List[str]]:
    from mobilefacenet_k210.data.crops import read_crop

    skip = set(exclude)
    found = image_files(folder)
    if not found:
        raise CalibrationError(_no_images(folder))
    files = [p for p in found if str(p.relative_to(folder)) not in skip]
    if not files:
        raise CalibrationError(f"{folder}: no face images here besides the calibration ones")
    chosen = [files[i] for i in _pick(len(files), limit, seed)]
    images = np.stack([read_crop(p, _wrong_size) for p in chosen])
    return images, [str(p.relative_to(folder)) for p in chosen]


def _shard_faces(folder: Path, split: str, limit: Optional[int], seed: int,
                 exclude: Sequence[str]) -> Tuple[np.ndarray, List[str]]:
    import cv2
    import tensorflow as tf

    from mobilefacenet_k210.data import tfrecord

    meta = tfrecord.load_metadata(folder)
    files = tfrecord.shard_files(folder, split, meta)
    skip = set(exclude)
    records, sources = [], []
    for f in files:
        for i, serialized in enumerate(tf.data.TFRecordDataset(str(f)).as_numpy_iterator()):
            record = tfrecord.decode_record(serialized)
            key = f"{f.name}:{i}"
            if record[tfrecord.AUGMENTATION] != "original" or key in skip:
                continue
            records.append(record[tfrecord.IMAGE])
            sources.append(key)
    if not records:
        raise CalibrationError(f"{folder}: the {split} split holds no original face records")
    chosen = _pick(len(records), limit, seed)
    images = []
    for i in chosen:
        bgr = cv2.imdecode(np.frombuffer(records[i], np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise CalibrationError(f"{folder}/{sources[i]}: record's JPEG does not decode")
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if image.shape != (preprocessing.INPUT_SIZE, preprocessing.INPUT_SIZE, 3):
            raise _wrong_size(f"{folder}/{sources[i]}", image)
        images.append(image)
    return np.stack(images), [sources[i] for i in chosen]


def load_faces(source: Union[str, Path], limit: Optional[int] = None, split: str = "train", seed: int = 0,
               exclude: Sequence[str] = ()) -> Tuple[np.ndarray, List[str]]:
    """Up to ``limit`` aligned faces (uint8 RGB (N, 112, 112, 3)) and their ids from a folder or shards.

    ``split`` applies to shards only; ``exclude`` lists ids (as returned) to leave out. A random but
    seeded subset is drawn when there are more than ``limit``.
    """
    source = Path(source)
    if is_shard_folder(source):
        return _shard_faces(source, split, limit, seed, exclude)
    return _folder_faces(source, limit, seed, exclude)


def calibration_and_holdout(calib: Union[str, Path], holdout: Optional[Union[str, Path]], calibration_samples: int,
                            holdout_samples: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Calibration faces from ``calib`` and disjoint held-out faces for parity (from ``holdout`` if given).

    Returns (calibration images, held-out images, held-out ids).
    """
    calibration, ids = load_faces(calib, calibration_samples, "train", seed)
    if holdout is not None:
        held, held_ids = load_faces(holdout, holdout_samples, "val", seed + 1)
    elif is_shard_folder(calib):
        try:
            held, held_ids = load_faces(calib, holdout_samples, "val", seed + 1)
        except CalibrationError as exc:
            raise CalibrationError(f"{exc}: held-out faces for parity come from the val split; give other "
                                   "faces with --holdout DIR") from None
    else:
        try:
            held, held_ids = load_faces(calib, holdout_samples, seed=seed + 1, exclude=ids)
        except CalibrationError as exc:
            raise CalibrationError(f"{exc}: every image went to calibration; give held-out faces "
                                   "(--holdout DIR) or lower the calibration sample count") from None
    return calibration, held, held_ids
