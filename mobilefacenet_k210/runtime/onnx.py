"""Run an ONNX face embedding model through OpenCV's DNN module (already a dependency of the package).

One image per forward: OpenCV runs some exported networks (SFace among them) wrongly at batch sizes
other than the one they were exported with, so batching would silently corrupt embeddings.
"""
from pathlib import Path
from typing import Union

import numpy as np

from mobilefacenet_k210.runtime.contract import InputContract, TeacherError, load_contract


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


class OnnxNet:
    """An ONNX model in ``cv2.dnn`` with its input contract: ``run(crops) -> (N, D)`` raw embeddings."""

    def __init__(self, path: Union[str, Path], contract: InputContract = None):
        import cv2

        self.path = Path(path)
        if not self.path.is_file():
            raise TeacherError(f"{self.path}: no such ONNX model")
        self.contract = contract or load_contract(self.path)
        self.contract.check(self.path)
        try:
            self.net = cv2.dnn.readNetFromONNX(str(self.path))
        except cv2.error as exc:
            raise TeacherError(f"{self.path}: not an ONNX model OpenCV can load ({_first_line(exc)})") from None
        probe = np.zeros((1, self.contract.size, self.contract.size, 3), np.uint8)
        try:
            out = self.run(probe)
        except cv2.error as exc:
            raise TeacherError(f"{self.path}: the model does not take its input contract {self.contract} "
                               f"({_first_line(exc)}); declare the right one in {self.path.name}.json") from None
        if out.shape[1] < 2:
            raise TeacherError(f"{self.path}: output of shape {out.shape} is not an embedding")
        self.dim = int(out.shape[1])

    def run(self, crops: np.ndarray) -> np.ndarray:
        """Raw (not normalised) float32 embeddings (N, D) of uint8 RGB crops, one forward per crop."""
        x = self.contract.prepare(crops)
        out = []
        for i in range(len(x)):
            self.net.setInput(x[i:i + 1])
            out.append(np.asarray(self.net.forward(), np.float32).reshape(1, -1))
        return np.concatenate(out, axis=0)

