"""A teacher's input contract: the size, channel order, mean/scale and layout its network expects.

Our crops are uint8 RGB (N, 112, 112, 3) aligned to the ArcFace template (``preprocessing``). A
teacher that was trained on another preprocessing declares it here, and :meth:`InputContract.prepare`
turns our crops into its input; a teacher that needs another crop size is refused rather than
resized, because a resized crop no longer matches the alignment it was trained on.

An ONNX teacher's contract is read from ``MODEL.onnx.json`` beside it (the fields of
:class:`InputContract`); without that file it is SFace's, the default teacher's.
"""
import dataclasses
import json
from pathlib import Path
from typing import Tuple, Union

import numpy as np

from mobilefacenet_k210.errors import Mfk210Error
from mobilefacenet_k210.preprocessing import INPUT_SIZE


class TeacherError(Mfk210Error, ValueError):
    """A teacher that cannot be loaded or run on our crops; the message names its file."""


@dataclasses.dataclass(frozen=True)
class InputContract:
    """What a teacher network takes: ``(pixel - mean) * scale`` in ``channels`` order and ``layout``."""

    size: int = INPUT_SIZE
    channels: str = "RGB"  # "RGB" or "BGR": the order the network expects
    mean: Tuple[float, float, float] = (0.0, 0.0, 0.0)  # per channel, in the network's channel order
    scale: float = 1.0
    layout: str = "NCHW"  # "NCHW" or "NHWC"

    def check(self, source: Union[str, Path]) -> None:
        """Refuse a contract our crops cannot meet; ``source`` names the teacher in the message."""
        if self.channels not in ("RGB", "BGR") or self.layout not in ("NCHW", "NHWC") or len(self.mean) != 3:
            raise TeacherError(f"{source}: input contract {self} needs channels RGB|BGR, layout NCHW|NHWC and "
                               f"3 mean values")
        if self.size != INPUT_SIZE:
            raise TeacherError(f"{source}: the teacher takes {self.size}x{self.size} input but the crops are "
                               f"{INPUT_SIZE}x{INPUT_SIZE} (aligned to the ArcFace template); use a teacher made "
                               f"for {INPUT_SIZE}x{INPUT_SIZE} aligned faces")

    def prepare(self, crops: np.ndarray) -> np.ndarray:
        """uint8 RGB crops (N, H, W, 3) -> the network's float32 input."""
        x = np.asarray(crops, dtype=np.float32)
        if self.channels == "BGR":
            x = x[..., ::-1]
        x = (x - np.asarray(self.mean, np.float32)) * np.float32(self.scale)
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x)


SFACE_CONTRACT = InputContract(size=INPUT_SIZE, channels="RGB", mean=(0.0, 0.0, 0.0), scale=1.0, layout="NCHW")
"""SFace as ``cv2.FaceRecognizerSF.feature`` feeds it: a BGR image swapped to RGB, 0..255, NCHW."""


def contract_path(model: Union[str, Path]) -> Path:
    """``MODEL.onnx.json``: where an ONNX model's input contract is declared."""
    model = Path(model)
    return model.with_name(model.name + ".json")


def load_contract(model: Union[str, Path]) -> InputContract:
    """The contract declared beside ``model`` (``MODEL.onnx.json``), else SFace's; checked against our crops."""
    path = contract_path(model)
    if not path.is_file():
        contract = SFACE_CONTRACT
    else:
        try:
            fields = json.loads(path.read_text(encoding="utf-8"))
            if "mean" in fields:
                fields["mean"] = tuple(float(v) for v in fields["mean"])
            contract = InputContract(**fields)
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            names = ", ".join(f.name for f in dataclasses.fields(InputContract))
            raise TeacherError(f"{path}: not an input contract ({exc}); expected a JSON object with {names}") from None
    contract.check(model)
    return contract
