"""Keras embedding model -> TFLite: the float32 model nncase compiles, and a full-integer one for other targets.

nncase 1.x must be fed a float TFLite and left to quantize itself: on int8 or float16 TFLite it
segfaults. :func:`assert_float_tflite` refuses such a file with a clear error before nncase sees it.

A model that turns its input (``InputOrientation``, ``input_orientation: rot180``) is written without
that layer: the TFLite computes on turned crops, and ``<file>.tflite.json`` records the orientation
(``preprocessing.recorded_orientation``), which the backends and the kmodel compile read.
"""
from pathlib import Path
from typing import Iterable, Union

import numpy as np

from mobilefacenet_k210 import atomic, preprocessing
from mobilefacenet_k210.errors import Mfk210Error


class TFLiteError(Mfk210Error, ValueError):
    """A TFLite file that cannot be used for the requested step (missing, quantized, wrong shape)."""


def _converter(model):
    """A TFLite converter of ``model``'s inference with a fixed batch of 1 (NHWC input named ``image``).

    The converter lowers the function through a SavedModel (which gives the file its
    ``serving_default`` signature); it is handed a bare module holding only the model's weights, so
    that the save writes that one function instead of tracing every layer of the Keras model: the
    same bytes, several times faster.
    """
    import tensorflow as tf

    _, h, w, c = model.input_shape
    spec = tf.TensorSpec([1, h, w, c], tf.float32, name="image")
    fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    weights = tf.Module()
    weights.weights = list(model.weights)
    return tf.lite.TFLiteConverter.from_concrete_functions([fn], weights)


def _record_orientation(path: Path, orientation: str) -> None:
    """``<path>.json`` naming a turned input; no record (and none left from before) for an upright one."""
    record = preprocessing.record_path(path)
    if orientation == preprocessing.UPRIGHT:
        record.unlink(missing_ok=True)
    else:
        atomic.write_json(record, {preprocessing.ORIENTATION_KEY: orientation})


def convert_float(model, path: Union[str, Path]) -> Path:
    """Write ``model`` as a float32 TFLite with a fixed batch of 1 (NHWC), atomically; return the path."""
    from mobilefacenet_k210.model.mobilefacenet import split_orientation

    body, orientation = split_orientation(model)
    written = atomic.write_bytes(path, _converter(body).convert())
    _record_orientation(written, orientation)
    return written


def convert_int8(model, calibration: np.ndarray, path: Union[str, Path]) -> Path:
    """Write a full-integer (int8 weights, activations, input and output) TFLite of ``model``.

    ``calibration`` holds uint8 RGB NHWC faces; they are normalized exactly as in training and fed
    one at a time as the representative dataset.
    """
    import tensorflow as tf

    from mobilefacenet_k210.model.mobilefacenet import split_orientation

    body, orientation = split_orientation(model)
    calibration = preprocessing.orient(preprocessing.check_crops(calibration, size=None), orientation)

    def representative() -> Iterable[list]:
        for image in calibration:
            yield [preprocessing.normalize(image[None])]

    converter = _converter(body)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    written = atomic.write_bytes(path, converter.convert())
    _record_orientation(written, orientation)
    return written


def _interpreter(path: Union[str, Path]):
    import tensorflow as tf

    path = Path(path)
    if not path.is_file():
        raise TFLiteError(f"{path}: no such TFLite file")
    try:
        interpreter = tf.lite.Interpreter(model_path=str(path))
    except Exception as exc:
        raise TFLiteError(f"{path}: not a readable TFLite model: {exc}") from None
    return interpreter


def assert_float_tflite(path: Union[str, Path], input_size: int = preprocessing.INPUT_SIZE) -> None:
    """Refuse anything but a float32, batch-1, ``input_size`` square RGB NHWC TFLite (nncase's only safe input)."""
    interpreter = _interpreter(path)
    inputs = interpreter.get_input_details()
    if len(inputs) != 1:
        raise TFLiteError(f"{path}: {len(inputs)} inputs; the face model has exactly one")
    detail = inputs[0]
    if detail["dtype"] != np.float32:
        raise TFLiteError(f"{path}: input is {np.dtype(detail['dtype']).name}, not float32: this is a quantized "
                          "TFLite, which crashes nncase. Give the float model.tflite and let nncase quantize")
    quantized = sorted({np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()
                        if t["dtype"] in (np.int8, np.uint8, np.float16)})
    if quantized:
        raise TFLiteError(f"{path}: holds {'/'.join(quantized)} tensors (a quantized or float16 TFLite), which "
                          "crashes nncase. Give the float model.tflite and let nncase quantize")
    shape = tuple(int(d) for d in detail["shape"])
    if shape != (1, input_size, input_size, 3):
        raise TFLiteError(f"{path}: input shape {shape}, expected (1, {input_size}, {input_size}, 3) "
                          "(batch 1, NHWC RGB)")
