"""The host twin of the board: enroll people into a gallery file, identify photos the way the board does.

``enroll`` reads a folder per person, aligns each photo to the ArcFace template (MTCNN, or nothing
with ``aligned=True`` for ready 112x112 crops), embeds them with any form of the model (Keras,
TFLite, or the kmodel in the nncase simulator) and L2-normalizes each embedding: the board's
``Feat.compare`` is a plain dot product, so every gallery feature must be a unit vector. The gallery
mode (``config.GALLERY_MODES``) says what is stored: ``max``, one entry per photo under the person's
name; ``mean``, one entry per person, the mean of its features normalized again. ``identify`` scores
photos against every entry with the board's formula ``(0.5 + 0.5 * cos) * 100``, takes the best
entry (so per person the max over its entries, as the board script does) and applies the threshold
from our own evaluation. The gallery JSON is the file the CanMV script reads from the SD card.
"""
import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from mobilefacenet_k210 import atomic, folder_lock
from mobilefacenet_k210.board import score as board_score
from mobilefacenet_k210.config import DEFAULT_GALLERY_MODE, GALLERY_MODES, check_choice, recorded_gallery_mode
from mobilefacenet_k210.errors import Mfk210Error
from mobilefacenet_k210.fileinfo import IMAGE_SUFFIXES, is_image_file, sha256_file

GALLERY_FORMAT = "mfk210-gallery"
GALLERY_VERSION = 1


class GalleryError(Mfk210Error, ValueError):
    """A gallery folder or file that cannot be used; the message names it and says why."""


def gallery_folders(root: Union[str, Path]) -> Dict[str, List[Path]]:
    """``{person: [image paths]}`` from a folder holding one sub-folder of photos per person."""
    root = Path(root)
    if not root.is_dir():
        raise GalleryError(f"{root}: no such gallery folder (expected one sub-folder of photos per person)")
    people = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted(p for p in folder.iterdir() if is_image_file(p))
        if images:
            people[folder.name] = images
    if not people:
        raise GalleryError(f"{root}: no person folders with images ({', '.join(IMAGE_SUFFIXES)}) in it")
    return people


def load_crops(paths: Sequence[Union[str, Path]], aligned: bool = False,
               aligner: Any = None) -> Tuple[np.ndarray, List[int], List[str]]:
    """112x112 RGB crops of ``paths``: (crops (K,112,112,3) uint8, indices of the kept paths, skip reasons).

    With ``aligned`` the files must already be 112x112 crops; otherwise MTCNN finds the largest face
    and aligns it to the template (a photo without a face is skipped and reported).
    """
    from mobilefacenet_k210.data.crops import read_crops
    from mobilefacenet_k210.preprocessing import INPUT_SIZE

    def wrong_size(path: Path, image: np.ndarray) -> GalleryError:
        return GalleryError(f"{path}: {image.shape[1]}x{image.shape[0]}, but --aligned needs {INPUT_SIZE}x"
                            f"{INPUT_SIZE} crops; leave --aligned off to detect and align")

    found = read_crops(paths, aligned, wrong_size, aligner)
    kept = [i for i, crop in enumerate(found) if crop is not None]
    crops = [found[i] for i in kept]
    skipped = [f"{path}: no face found" for path, crop in zip(paths, found) if crop is None]
    array = np.stack(crops).astype(np.uint8) if crops else np.zeros((0, INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
    return array, kept, skipped


def model_sha256(model: Union[str, Path]) -> str:
    """sha256 of the file a model path loads: the file itself, or the Keras model a run folder holds.

    A SavedModel folder hashes each of its files (relative name and content) in name order.
    """
    from mobilefacenet_k210.model.io import resolve_model_path

    path = Path(model)
    if not path.is_file():
        path = resolve_model_path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for member in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(member.relative_to(path)).encode("utf-8") + b"\0" + member.read_bytes())
    return digest.hexdigest()


def check_model(gallery: Dict[str, Any], gallery_path: Union[str, Path], model: Union[str, Path],
                sha256: Optional[str] = None) -> None:
    """Refuse a gallery enrolled with another model: its features live in that model's embedding space.

    ``sha256`` is the model's when the caller has it already. A gallery without a record (made by
    the board's button, or before records) passes.
    """
    recorded = gallery.get("model_sha256")
    if recorded is None:
        return
    actual = sha256 or model_sha256(model)
    if actual != recorded:
        raise GalleryError(f"{gallery_path}: enrolled with the model {gallery.get('model', '?')} (sha256 "
                           f"{str(recorded)[:12]}), not with {model} (sha256 {actual[:12]}); enroll again with "
                           f"`mfk210 enroll --model {model}`")


def _embed(backend: Any, crops: np.ndarray, batch_size: int) -> np.ndarray:
    from mobilefacenet_k210.evaluate.metrics import l2_normalize

    return l2_normalize(backend.embed(crops, batch_size=batch_size, flip=False)).astype(np.float32)


def enroll(gallery_dir: Union[str, Path], model: Union[str, Path], out: Union[str, Path],
           aligned: bool = False, batch_size: int = 32, backend: Any = None,
           aligner: Any = None, mode: str = DEFAULT_GALLERY_MODE, trust_model_code: bool = False) -> Dict[str, Any]:
    """Build and write the gallery in ``mode``: per photo its normalized embedding under the person's name
    ("max"), or per person the normalized mean of them ("mean"). ``trust_model_code``: as ``load_backend``.
    A second writer of the gallery file meanwhile is refused (its lock ``.NAME.lock`` beside it,
    :mod:`folder_lock`)."""
    check_choice(mode, GALLERY_MODES, "enroll --gallery-mode")
    with folder_lock.hold(out):
        return _enroll(gallery_dir, model, out, aligned, batch_size, backend, aligner, mode, trust_model_code)


def _enroll(gallery_dir: Union[str, Path], model: Union[str, Path], out: Union[str, Path], aligned: bool,
            batch_size: int, backend: Any, aligner: Any, mode: str, trust_model_code: bool) -> Dict[str, Any]:
    """:func:`enroll` under the gallery file's lock."""
    from mobilefacenet_k210.runtime.backends import load_backend

    people = gallery_folders(gallery_dir)
    backend = backend or load_backend(model, trust_model_code)
    entries, skipped = [], []
    for name, paths in people.items():
        crops, kept, skip = load_crops(paths, aligned, aligner)
        skipped.extend(skip)
        if not kept:
            skipped.append(f"{name}: no usable photo, not enrolled")
            continue
        features = _embed(backend, crops, batch_size)
        if mode == "max":
            entries += [{"name": name, "feature": _rounded(f), "photos": 1, "sources": [str(paths[i])]}
                        for f, i in zip(features, kept)]
            continue
        mean = features.mean(axis=0)
        norm = float(np.linalg.norm(mean))
        if norm == 0.0:
            raise GalleryError(f"{name}: the embeddings of its photos cancel out; check the model {model}")
        entries.append({"name": name, "feature": _rounded(mean / norm),
                        "photos": len(kept), "sources": [str(paths[i]) for i in kept]})
    if not entries:
        raise GalleryError(f"{gallery_dir}: nobody could be enrolled:\n  " + "\n  ".join(skipped))
    gallery = {"format": GALLERY_FORMAT, "version": GALLERY_VERSION, "mode": mode, "model": str(model),
               "model_sha256": model_sha256(model),
               "backend": getattr(backend, "kind", "?"), "embedding_size": len(entries[0]["feature"]),
               "aligned_input": bool(aligned), "people": entries, "skipped": skipped}
    atomic.write_text(out, json.dumps(gallery, indent=1) + "\n")  # key order kept: format, version first
    return gallery


def _rounded(feature: np.ndarray) -> List[float]:
    return [round(float(v), 7) for v in feature]


def person_names(gallery: Dict[str, Any]) -> List[str]:
    """The enrolled people, each once, in the order of their first entry (a "max" gallery repeats names)."""
    return list(dict.fromkeys(p["name"] for p in gallery["people"]))


def load_gallery(path: Union[str, Path]) -> Dict[str, Any]:
    """Read and check a gallery file written by :func:`enroll` (or by the board's button).

    Several entries may share a name (a person scored by its best entry); a gallery without a
    ``mode`` (written before modes, or by the board's button) is a ``mean`` gallery.
    """
    path = Path(path)
    gallery = atomic.read_json(path, "no such gallery file (make one with `mfk210 enroll`)", GalleryError)
    if not isinstance(gallery, dict) or gallery.get("format") != GALLERY_FORMAT:
        raise GalleryError(f"{path}: not an mfk210 gallery (format {GALLERY_FORMAT!r} expected)")
    people = gallery.get("people")
    if not isinstance(people, list):
        raise GalleryError(f"{path}: its \"people\" is not a list of {{\"name\", \"feature\"}} entries; "
                           "make the gallery again with `mfk210 enroll`")
    if not people:
        raise GalleryError(f"{path}: the gallery has nobody in it")
    for i, person in enumerate(people):
        _check_person(path, i, person)
    sizes = {len(p["feature"]) for p in people}
    if len(sizes) != 1:
        raise GalleryError(f"{path}: features of different lengths {sorted(sizes)}")
    mode = gallery["mode"] = recorded_gallery_mode(gallery.get("mode"))
    if mode not in GALLERY_MODES:
        raise GalleryError(f"{path}: gallery mode {mode!r} is none of {', '.join(GALLERY_MODES)}; make the gallery "
                           "again with `mfk210 enroll --gallery-mode`")
    return gallery


def _check_person(path: Path, index: int, person: Any) -> None:
    """One gallery entry: an object with a non-empty string ``name`` and a non-empty list of numbers ``feature``."""
    where = f"{path}: entry {index + 1} of \"people\""
    if not isinstance(person, dict):
        raise GalleryError(f"{where} is {type(person).__name__}, not an object with \"name\" and \"feature\"; "
                           "make the gallery again with `mfk210 enroll`")
    name = person.get("name")
    if not isinstance(name, str) or not name.strip():
        raise GalleryError(f"{where} has no name (\"name\" must be a non-empty string); name it or enroll again "
                           "with `mfk210 enroll`")
    feature = person.get("feature")
    if (not isinstance(feature, list) or not feature
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in feature)):
        raise GalleryError(f"{where} ({name!r}): \"feature\" must be a non-empty list of numbers; enroll again "
                           "with `mfk210 enroll`")


def identify(photos: Sequence[Union[str, Path]], gallery_path: Union[str, Path], model: Union[str, Path],
             threshold_score: Optional[float] = None, aligned: bool = False, batch_size: int = 32,
             backend: Any = None, aligner: Any = None, trust_model_code: bool = False) -> List[Dict[str, Any]]:
    """Score each photo against the gallery as the board does; name the best match above the threshold.

    The best entry is the person's best: with several entries of one name, the person scores the max
    over them. Returns one dict per photo: ``photo``, ``name`` (None without a face, "unknown" under
    the threshold), ``best`` (closest person), ``score`` (board scale) and ``face`` (found or not).
    """
    from mobilefacenet_k210.runtime.backends import load_backend

    gallery = load_gallery(gallery_path)
    check_model(gallery, gallery_path, model)
    names = [p["name"] for p in gallery["people"]]
    features = np.asarray([p["feature"] for p in gallery["people"]], np.float32)
    if not photos:
        raise GalleryError("no photos to identify")
    for photo in photos:
        if not Path(photo).is_file():
            raise GalleryError(f"{photo}: no such photo")
    backend = backend or load_backend(model, trust_model_code)
    crops, kept, _ = load_crops(list(photos), aligned, aligner)
    results = [{"photo": str(p), "face": False, "name": None, "best": None, "score": None} for p in photos]
    if kept:
        embeddings = _embed(backend, crops, batch_size)
        if embeddings.shape[1] != features.shape[1]:
            raise GalleryError(f"{gallery_path}: {features.shape[1]}-d features but {model} gives "
                               f"{embeddings.shape[1]}-d embeddings; enroll again with this model")
        scores = board_score.board_scores(embeddings, features)
        for row, i in enumerate(kept):
            best = int(np.argmax(scores[row]))
            value = float(scores[row, best])
            matched = threshold_score is None or value > threshold_score
            results[i].update({"face": True, "best": names[best], "score": value,
                               "name": names[best] if matched else "unknown"})
    return results


def format_result(result: Dict[str, Any], threshold_score: Optional[float] = None) -> str:
    """One line per photo, as the board would put it on its screen."""
    if not result["face"]:
        return f"{result['photo']}: no face found"
    if threshold_score is None:
        return f"{result['photo']}: {result['best']} score {result['score']:.1f} (no threshold given)"
    if result["name"] == "unknown":
        return (f"{result['photo']}: unknown, score {result['score']:.1f} <= {threshold_score:.1f} "
                f"(closest: {result['best']})")
    return f"{result['photo']}: {result['name']} score {result['score']:.1f} > {threshold_score:.1f}"
