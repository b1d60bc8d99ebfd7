"""A K210 kmodel file: its header, the compile record beside it, and nncase's simulator that runs it.

The kmodel takes raw camera pixels (uint8 NCHW, nncase's preprocess compiled in: see
``export/kmodel.py``, which compiles it), so the simulator gets the faces only transposed. A kmodel
runs only on the runtime of the nncase version that made it: its record (``model.kmodel.json``)
names that version, and a kmodel made by another one is refused before it computes garbage.
"""
import collections
import hashlib
import os
import struct
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np

from mobilefacenet_k210 import atomic, k210, preprocessing
from mobilefacenet_k210.errors import Mfk210Error

KMODEL_MAGIC = b"LDMK"  # the C constant 'KMDL' written little-endian


NNCASE_RELEASE = "1.1.0.20211203"
"""The nncase release ``constraints.txt`` pins (the one CanMV feat/kpu's runtime embeds)."""


class KmodelError(Mfk210Error, RuntimeError):
    """nncase failed (or crashed) compiling, or a kmodel cannot be read or run."""


def require_nncase() -> Dict[str, str]:
    """:func:`nncase_version`, or a :class:`KmodelError` saying how to install nncase when it is missing.

    Called before an export writes anything: without the compiler, no output set can be completed.
    """
    try:
        return nncase_version()
    except ImportError as exc:
        raise KmodelError(f"nncase (the K210 compiler) is not installed ({exc}): run `make setup`, or "
                          f"`pip install nncase=={NNCASE_RELEASE}` in this Python 3.7-3.10 environment") from None


def nncase_version() -> Dict[str, str]:
    """The installed nncase: pip release (e.g. 1.1.0.20211203) and the runtime it embeds (e.g. 1.1.0-642cded)."""
    from importlib import metadata

    import _nncase
    import nncase  # noqa: F401  (the Python package, not only its C extension)

    return {"nncase_version": metadata.version("nncase"),
            "nncase_runtime": str(getattr(_nncase, "__version__", "unknown"))}


def info_path(kmodel_path: Union[str, Path]) -> Path:
    """``model.kmodel`` -> ``model.kmodel.json`` (the record ``preprocessing.recorded_orientation`` reads)."""
    return preprocessing.record_path(kmodel_path)


def kmodel_info(kmodel_path: Union[str, Path]) -> Dict[str, Any]:
    """The record written beside a kmodel at compile time (compiler version, input spec, memory, ...)."""
    path = info_path(kmodel_path)
    return atomic.read_json(path, f"no compile record beside {Path(kmodel_path).name} (it was not made by "
                                  "`mfk210 export`, so its nncase version is unknown)", KmodelError)


def _kmodel_bytes(kmodel: Union[str, Path, bytes]) -> bytes:
    if isinstance(kmodel, (bytes, bytearray, memoryview)):
        return bytes(kmodel)
    path = Path(kmodel)
    if not path.is_file():
        raise KmodelError(f"{path}: no such kmodel file")
    return path.read_bytes()


def read_kmodel_version(kmodel: Union[str, Path, bytes]) -> int:
    """The format version in a kmodel's header (bytes "LDMK", then a little-endian uint32 version)."""
    data = _kmodel_bytes(kmodel)[:8]
    where = kmodel if not isinstance(kmodel, (bytes, bytearray, memoryview)) else "kmodel bytes"
    if len(data) < 8:
        raise KmodelError(f"{where}: too short to be a kmodel")
    if data[:4] != KMODEL_MAGIC:
        (legacy,) = struct.unpack("<I", data[:4])
        if legacy in (3, 4):  # kmodel v3/v4 (nncase 0.x) start with the version itself
            return legacy
        raise KmodelError(f"{where}: not a kmodel (header starts {data[:4]!r}, expected {KMODEL_MAGIC!r})")
    return int(struct.unpack("<I", data[4:8])[0])


def check_made_by(kmodel_path: Union[str, Path], installed: Optional[str] = None) -> None:
    """Refuse a kmodel whose compile record names another nncase release than the installed one.

    nncase renumbers its CPU opcodes between releases, so such a kmodel loads and then computes
    garbage or fails; a kmodel without a record is let through (its version is unknown).
    """
    if not info_path(kmodel_path).is_file():
        return
    made_by = kmodel_info(kmodel_path).get("nncase_version")
    installed = installed or nncase_version()["nncase_version"]
    if made_by and made_by != installed:
        raise KmodelError(f"{kmodel_path}: made by nncase {made_by}, but nncase {installed} is installed; a "
                          f"kmodel runs only on the runtime of its own version (`make setup NNCASE={made_by}`, "
                          "or export the model again with this nncase)")


_SIMULATED: "collections.OrderedDict[str, Dict[bytes, np.ndarray]]" = collections.OrderedDict()
"""Outputs already simulated in this process, by kmodel sha256, then by the image's digest: the
simulator is deterministic and slow (a tenth of a second a face), and one run often sends it the
same faces again (the demo: parity at export, then evaluation, identification and open set on the
same held-out faces)."""
SIMULATED_MODELS, SIMULATED_FACES = 4, 20_000
"""The most kmodels and faces per kmodel :data:`_SIMULATED` keeps (the oldest kmodel goes first)."""


def _face_key(image: np.ndarray) -> bytes:
    return hashlib.sha256(repr(image.shape).encode() + image.tobytes()).digest()


def simulate(kmodel: Union[str, Path, bytes], images: np.ndarray, progress: bool = False) -> np.ndarray:
    """Run uint8 RGB NHWC faces (N, S, S, 3) through a kmodel in ``nncase.Simulator`` -> float32 (N, D).

    The kmodel must have this package's input (uint8 NCHW raw pixels, nncase preprocess on): the
    images are only transposed, never normalized here. Faces this process already ran through the
    same kmodel are answered from :data:`_SIMULATED`. ``progress`` shows a tqdm bar.
    """
    data = _kmodel_bytes(kmodel)
    installed = nncase_version()
    if not isinstance(kmodel, (bytes, bytearray, memoryview)):
        check_made_by(kmodel, installed["nncase_version"])
    version = read_kmodel_version(data)
    if version != k210.KMODEL_VERSION:
        raise KmodelError(f"kmodel v{version}: the nncase 1.x simulator runs only v{k210.KMODEL_VERSION}")
    images = preprocessing.check_crops(images, size=None, where="simulate")
    model_key = hashlib.sha256(bytes(data)).hexdigest()
    known = _SIMULATED.pop(model_key, {})
    _SIMULATED[model_key] = known  # the most recently used kmodel last
    while len(_SIMULATED) > SIMULATED_MODELS:
        _SIMULATED.popitem(last=False)
    keys = [_face_key(image) for image in images]
    if len(known) + len(set(keys)) > SIMULATED_FACES:
        known.clear()
    todo = list({key: i for i, key in enumerate(keys) if key not in known}.values())
    if todo:
        for i, output in zip(todo, _simulate_in_processes(bytes(data), images[todo], installed, progress)):
            known[keys[i]] = output
    return np.stack([known[key] for key in keys])


SIMULATOR_FACES_PER_PROCESS = 16
"""Faces each extra simulator process must have to be worth starting (it imports nncase and loads the
kmodel in well under a second; the simulator takes about a tenth of a second a face on one core)."""


def _simulate_in_processes(data: bytes, faces: np.ndarray, installed: Dict[str, str], progress: bool) -> np.ndarray:
    """Outputs of ``faces``: the simulator holds Python's lock while it runs, so the faces are split
    between this process and up to one spawned process per other core."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    processes = max(1, min(os.cpu_count() or 1, len(faces) // SIMULATOR_FACES_PER_PROCESS))
    chunks = np.array_split(faces, processes)
    with tqdm(total=len(faces), desc="nncase simulator", unit="face", disable=not progress, leave=False) as bar:
        if processes == 1:
            return simulate_faces(data, faces, installed, bar.update)
        # spawn: forking a process that has loaded TensorFlow is unsafe
        with ProcessPoolExecutor(processes - 1, mp_context=mp.get_context("spawn")) as pool:
            others = [pool.submit(simulate_faces, data, chunk, installed) for chunk in chunks[1:]]
            first = simulate_faces(data, chunks[0], installed, bar.update)
            rest = [future.result() for future in others]
            bar.update(sum(len(r) for r in rest))
    return np.concatenate([first, *rest])


def simulate_faces(data: bytes, faces: np.ndarray, installed: Dict[str, str],
                   tick: Optional[Callable[[int], Any]] = None) -> np.ndarray:
    """Outputs (N, D) of ``faces`` (N, H, W, 3) through the kmodel ``data``, in one simulator; ``tick(1)``
    after each face. Module level: the spawned simulator processes run it."""
    simulator = _load_simulator(data, installed, faces.shape)
    outputs = []
    for image in faces:
        outputs.append(_run_simulator(simulator, image, installed))
        if tick:
            tick(1)
    return np.stack(outputs)


def _load_simulator(data: bytes, installed: Dict[str, str], shape: Tuple[int, ...]) -> Any:
    """An ``nncase.Simulator`` holding the kmodel, checked to take faces of ``shape`` (N, H, W, 3)."""
    import nncase

    simulator = nncase.Simulator()
    try:
        simulator.load_model(data)
    except Exception as exc:
        raise KmodelError(f"nncase {installed['nncase_runtime']} cannot load this kmodel (made by another "
                          f"nncase version?): {exc}") from None
    expected = 3 * shape[1] * shape[2]
    size = simulator.get_input_desc(0).size
    if size != expected:
        raise ValueError(f"images {shape[1]}x{shape[2]} do not fit the kmodel's input "
                         f"({size} bytes, expected uint8 NCHW of {expected})")
    return simulator


def _run_simulator(simulator: Any, image: np.ndarray, installed: Dict[str, str]) -> np.ndarray:
    import nncase

    # nncase compares dtype objects by identity: an array unpickled in a simulator process has a uint8
    # dtype object of its own, so the pixels are copied into an array of numpy's own uint8
    tensor = nncase.RuntimeTensor.from_numpy(image.transpose(2, 0, 1)[None].astype(np.uint8))
    simulator.set_input_tensor(0, tensor)
    try:
        simulator.run()
    except Exception as exc:
        raise KmodelError(f"nncase {installed['nncase_runtime']} simulator failed to run the kmodel ({exc}); "
                          "a kmodel made by another nncase version fails like this") from None
    return np.asarray(simulator.get_output_tensor(0).to_numpy(), np.float32).reshape(-1)
