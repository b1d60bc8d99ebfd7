"""One ``embed(images)`` for every form of the model: Keras, TFLite, the kmodel (nncase simulator) and
ONNX (OpenCV's DNN module, with the model's own input contract: see ``runtime/contract.py``).

Every backend takes uint8 RGB crops (N, 112, 112, 3) and applies the one normalization of
``preprocessing.normalize`` (the kmodel has it compiled in as nncase's ``input_range``, derived from
the same function), so that differences between backends are differences between the models.
Every backend takes upright crops: an exported file (TFLite, kmodel) whose record says it computes on
turned crops (``preprocessing.recorded_orientation``) gets them turned here; a Keras model turns them
itself (its ``InputOrientation`` layer). With ``flip=True`` the embedding of each crop is summed with that of its horizontal mirror, as
InsightFace's ``verification.py`` does before normalizing.
"""
import os
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np

from mobilefacenet_k210.preprocessing import INPUT_SIZE, check_crops, normalize, orient, recorded_orientation
from mobilefacenet_k210.errors import Mfk210Error


class BackendError(Mfk210Error, ValueError):
    """A model file no backend can run, or inputs it cannot take."""


class Backend:
    """Batches uint8 crops through ``_run`` (one batch -> embeddings) with a progress bar."""

    name = "model"
    kind = "?"
    batches_per_call = 1
    """How many batches ``_run`` receives at once (Keras: several, to spread ``predict``'s fixed cost)."""

    def _run(self, batch: np.ndarray, batch_size: int) -> np.ndarray:
        raise NotImplementedError

    def embed(self, images: np.ndarray, batch_size: int = 64, flip: bool = False,
              progress: bool = True) -> np.ndarray:
        """Embeddings (N, D) float32 of uint8 RGB crops; ``flip`` adds the mirrored crop's embedding."""
        from tqdm import tqdm

        images = check_crops(images, error=BackendError)
        if batch_size < 1:
            raise BackendError(f"batch_size={batch_size}: must be at least 1")
        out = []
        with tqdm(total=len(images) * (2 if flip else 1), desc=f"embed {self.name}", unit="img",
                  disable=not progress, leave=False) as bar:
            step = batch_size * self.batches_per_call
            for start in range(0, len(images), step):
                batch = images[start:start + step]
                emb = np.asarray(self._run(batch, batch_size), dtype=np.float32).reshape(len(batch), -1)
                bar.update(len(batch))
                if flip:
                    emb = emb + np.asarray(self._run(np.ascontiguousarray(batch[:, :, ::-1]), batch_size),
                                           dtype=np.float32).reshape(len(batch), -1)
                    bar.update(len(batch))
                out.append(emb)
        if not out:
            raise BackendError("no images to embed")
        return np.concatenate(out, axis=0)


class KerasBackend(Backend):
    """A Keras embedding model in memory (e.g. during training) or loaded by ``model.io``.

    Calls ``model.predict`` so that it also works when the model lives under a tf.distribute strategy.
    """

    kind = "keras"
    batches_per_call = 8

    def __init__(self, model: Any, name: str = None):
        self.model = model
        self.name = name or model.name

    def _run(self, batch: np.ndarray, batch_size: int) -> np.ndarray:
        return self.model.predict(normalize(batch), batch_size=batch_size, verbose=0)


class TFLiteBackend(Backend):
    """A ``.tflite`` file in ``tf.lite.Interpreter``; float or int8/uint8 input and output.

    Quantized tensors are (de)quantized with their own scale and zero point. A model with a dynamic
    batch dimension runs whole batches; one converted with a fixed batch of 1 runs image by image, one
    with a fixed batch of B (MobileFaceNet_TF's graph reshapes to its batch: it cannot be resized)
    B images at a time, the last group filled up with copies.
    A file holding TensorFlow ops is refused unless ``trust_model_code`` (see ``model/io.py``).
    """

    kind = "tflite"

    def __init__(self, path: Union[str, Path], trust_model_code: bool = False):
        import tensorflow as tf

        from mobilefacenet_k210.model.guard import ModelFileError, check_tflite_file

        self.path = Path(path)
        self.name = self.path.name
        if not trust_model_code:
            try:
                check_tflite_file(self.path)
            except ModelFileError as exc:
                raise BackendError(str(exc)) from None
        try:
            self.interpreter = tf.lite.Interpreter(model_path=str(self.path), num_threads=os.cpu_count())
            self.interpreter.allocate_tensors()
        except Exception as exc:
            raise BackendError(f"{self.path}: cannot load as TFLite: {exc}") from None
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendError(f"{self.path}: expected one input and one output, got {len(inputs)} and "
                               f"{len(outputs)}")
        self.input, self.output = inputs[0], outputs[0]
        if tuple(self.input["shape"][1:]) != (INPUT_SIZE, INPUT_SIZE, 3):
            raise BackendError(f"{self.path}: input shape {tuple(self.input['shape'])}, expected "
                               f"(N, {INPUT_SIZE}, {INPUT_SIZE}, 3)")
        self.dynamic_batch = int(self.input["shape_signature"][0]) == -1
        self._batch = int(self.input["shape"][0])
        self.orientation = recorded_orientation(self.path)

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        dtype = self.input["dtype"]
        if dtype == np.float32:
            return x
        scale, zero = self.input["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.rint(x / scale + zero), info.min, info.max).astype(dtype)

    def _dequantize(self, y: np.ndarray) -> np.ndarray:
        if self.output["dtype"] == np.float32:
            return y
        scale, zero = self.output["quantization"]
        return (y.astype(np.float32) - zero) * scale

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        if self._batch != len(x):
            self.interpreter.resize_tensor_input(self.input["index"], [len(x), INPUT_SIZE, INPUT_SIZE, 3])
            self.interpreter.allocate_tensors()
            self._batch = len(x)
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        return self._dequantize(self.interpreter.get_tensor(self.output["index"]))

    def _run(self, batch: np.ndarray, batch_size: int) -> np.ndarray:
        x = self._quantize(normalize(orient(batch, self.orientation)))
        if self.dynamic_batch:
            return self._invoke(x)
        fixed = self._batch
        out = []
        for i in range(0, len(x), fixed):
            group = x[i:i + fixed]
            filled = np.concatenate([group, np.repeat(group[-1:], fixed - len(group), axis=0)])
            out.append(self._invoke(filled).reshape(fixed, -1)[:len(group)])
        return np.concatenate(out, axis=0)


class KmodelBackend(Backend):
    """A ``.kmodel`` run in the nncase simulator through ``runtime.kmodel.simulate`` (uint8 input)."""

    kind = "kmodel"

    def __init__(self, path: Union[str, Path], simulate: Callable = None):
        self.path = Path(path)
        self.name = self.path.name
        if not self.path.is_file():
            raise BackendError(f"{self.path}: no such kmodel")
        if simulate is None:
            from mobilefacenet_k210.runtime.kmodel import check_made_by, simulate

            check_made_by(self.path)  # simulate() gets bytes below, so the compile record is checked here
        self._simulate = simulate
        self._kmodel = self.path.read_bytes()
        self.orientation = recorded_orientation(self.path)

    def _run(self, batch: np.ndarray, batch_size: int) -> np.ndarray:
        return self._simulate(self._kmodel, orient(batch, self.orientation))


class OnnxBackend(Backend):
    """An ``.onnx`` face model (e.g. the SFace teacher) through OpenCV, fed as its input contract says."""

    kind = "onnx"

    def __init__(self, path: Union[str, Path]):
        from mobilefacenet_k210.runtime.onnx import OnnxNet

        self.path = Path(path)
        self.name = self.path.name
        self._net = OnnxNet(self.path)

    def _run(self, batch: np.ndarray, batch_size: int) -> np.ndarray:
        return self._net.run(batch)


def load_backend(path: Union[str, Path], trust_model_code: bool = False) -> Backend:
    """The backend for a model path: ``.tflite``, ``.kmodel``, ``.onnx``, or a Keras model (run dir, .keras, .h5).

    ``trust_model_code`` lets a Keras or TFLite file that carries code load (``model/io.py``).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return OnnxBackend(path)
    if suffix == ".tflite":
        if not path.is_file():
            raise BackendError(f"{path}: no such TFLite file")
        return TFLiteBackend(path, trust_model_code)
    if suffix == ".kmodel":
        return KmodelBackend(path)
    from mobilefacenet_k210.model.io import load_embedding_model

    return KerasBackend(load_embedding_model(path, trust_model_code), name=str(path))
