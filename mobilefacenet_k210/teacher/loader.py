"""Teachers: any face embedding model, loaded from ONNX (OpenCV DNN), TFLite or Keras (the evaluation
backends), or precomputed embeddings (``.npy`` with a file list) for teachers that run elsewhere.

Every teacher answers :meth:`Teacher.embed_records`: the L2-normalised embeddings of a batch of
records' crops and of their horizontal mirrors, with the teacher's name, sha256 and dimension for
``metadata.json``. Only ONNX models run through the input contract of ``runtime/contract.py``; TFLite and
Keras teachers take the package's own normalization, as the student does.
"""
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from mobilefacenet_k210.fileinfo import sha256_file
from mobilefacenet_k210.preprocessing import INPUT_SIZE
from mobilefacenet_k210.runtime.contract import TeacherError

DEFAULT = "sface"
MODEL_SUFFIXES = (".onnx", ".tflite", ".keras", ".h5", ".npy")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); a zero row stays zero."""
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, np.float32(1e-12))


class Teacher:
    """A face embedding model run on uint8 RGB crops: ``embed`` and ``embed_records`` give unit rows."""

    mirror = True
    """Whether the teacher gives embeddings of the mirrored crops too."""

    def __init__(self, name: str, path: Path, run: Callable[[np.ndarray], np.ndarray], dim: int):
        self.name, self.path, self._run, self.dim = name, Path(path), run, int(dim)
        self.sha256 = sha256_file(self.path)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """L2-normalised embeddings (N, D) of uint8 RGB crops (N, INPUT_SIZE, INPUT_SIZE, 3)."""
        emb = np.asarray(self._run(np.asarray(crops, np.uint8)), np.float32).reshape(len(crops), -1)
        if emb.shape[1] != self.dim or not np.isfinite(emb).all():
            raise TeacherError(f"{self.path}: gave embeddings of shape {emb.shape} (finite: "
                               f"{bool(np.isfinite(emb).all())}), expected (N, {self.dim}) finite values")
        return l2_normalize(emb)

    def embed_records(self, crops: np.ndarray, sources: Sequence[str] = (),
                      augmentations: Sequence[str] = ()) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Embeddings of the crops and of their horizontal mirrors, each (N, D) and L2-normalised.

        ``sources``/``augmentations`` (the records' fields) are used only by precomputed teachers.
        """
        crops = np.asarray(crops, np.uint8)
        return self.embed(crops), self.embed(np.ascontiguousarray(crops[:, :, ::-1]))

    def info(self) -> Dict[str, Any]:
        """The teacher's entry in ``metadata.json``."""
        return {"name": self.name, "sha256": self.sha256, "dim": self.dim, "mirror": self.mirror}


class PrecomputedTeacher(Teacher):
    """Embeddings computed elsewhere: ``E.npy`` (N, D), or (N, 2, D) with the mirrors' embeddings second,
    and ``E.txt`` beside it: N lines, the record's ``image/source`` and optionally a tab and its
    ``image/augmentation`` (a line without one serves every augmented copy of that photo).
    """

    def __init__(self, path: Union[str, Path]):
        path = Path(path)
        listing = path.with_suffix(".txt")
        try:
            emb = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise TeacherError(f"{path}: not a .npy array of embeddings ({exc})") from None
        if emb.ndim not in (2, 3) or (emb.ndim == 3 and emb.shape[1] != 2) or not np.isfinite(emb).all():
            raise TeacherError(f"{path}: expected finite embeddings of shape (N, D) or (N, 2, D), got {emb.shape}")
        if not listing.is_file():
            raise TeacherError(f"{listing}: missing; precomputed embeddings need this file list, one record "
                               f"source per line (optionally a tab and its augmentation), aligned with {path.name}")
        keys = [tuple(line.split("\t", 1)) if "\t" in line else (line, "")
                for line in listing.read_text(encoding="utf-8").splitlines()]
        if len(keys) != len(emb):
            raise TeacherError(f"{listing}: {len(keys)} lines for {len(emb)} embeddings in {path.name}")
        self.mirror = emb.ndim == 3
        self._emb = l2_normalize(emb.reshape(-1, emb.shape[-1])).reshape(emb.shape)
        self._index = {key: i for i, key in enumerate(keys)}
        self.listing = listing
        super().__init__(path.name, path, run=None, dim=emb.shape[-1])

    def embed(self, crops: np.ndarray) -> np.ndarray:
        raise TeacherError(f"{self.path}: precomputed embeddings are looked up by record source, not computed "
                           f"from pixels")

    def embed_records(self, crops: np.ndarray, sources: Sequence[str] = (),
                      augmentations: Sequence[str] = ()) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        rows = []
        for i, source in enumerate(sources):
            aug = augmentations[i] if i < len(augmentations) else ""
            row = self._index.get((source, aug), self._index.get((source, "")))
            if row is None:
                raise TeacherError(f"{self.listing}: no embedding for record source {source!r} "
                                   f"(augmentation {aug!r}); list every record's source")
            rows.append(row)
        if len(rows) != len(crops):
            raise TeacherError(f"{self.path}: {len(crops)} records but {len(rows)} sources to look up")
        emb = self._emb[rows]
        return (emb[:, 0], emb[:, 1]) if self.mirror else (emb, None)


def load_teacher(spec: Union[str, Path] = DEFAULT, trust_model_code: bool = False) -> Teacher:
    """The teacher named by ``spec``: ``sface`` (the default, fetched once), an ``.onnx`` file (input
    contract in ``MODEL.onnx.json``, else SFace's), a ``.tflite``, a Keras model (``.keras``, ``.h5``,
    SavedModel or run folder) or precomputed ``.npy`` embeddings. ``trust_model_code``: as ``load_backend``.
    """
    if str(spec) == DEFAULT:
        from mobilefacenet_k210.teacher import sface

        path, name = sface.fetch_sface(), sface.NAME
    else:
        path = Path(spec)
        name = path.name
        if not path.exists():
            raise TeacherError(f"{path}: no such teacher model (give 'sface', or a {'/'.join(MODEL_SUFFIXES)} "
                               f"file, or a SavedModel/run folder)")
        if path.is_file() and path.suffix.lower() not in MODEL_SUFFIXES:
            raise TeacherError(f"{path}: not a teacher model (expected 'sface' or a {'/'.join(MODEL_SUFFIXES)} "
                               f"file, or a SavedModel/run folder)")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return PrecomputedTeacher(path)
    if suffix == ".onnx":
        from mobilefacenet_k210.runtime.onnx import OnnxNet

        net = OnnxNet(path)
        return Teacher(name, path, net.run, net.dim)
    from mobilefacenet_k210.runtime.backends import load_backend

    backend = load_backend(path, trust_model_code)
    probe = backend.embed(np.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), np.uint8), progress=False)
    return Teacher(name, path, lambda crops: backend.embed(crops, progress=False), probe.shape[1])
