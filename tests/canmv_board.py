"""An emulated CanMV K210 board that runs ``canmv_face_id.py`` unmodified in CPython, for the tests only.

The script's imports (``sensor``, ``image``, ``lcd``, ``maix``, ``board``, ``fpioa_manager``, ``time``,
``ujson``, ``uos``) and its ``open``/``print`` are replaced by the objects below; ``gc`` and ``math`` are
CPython's. The numerics that decide the result are ours or follow the CanMV ``feat/kpu`` sources:

- frames: real photos pasted into a 320x240 frame and passed through RGB565 (5/6/5 bits), as the camera
  delivers them; ``pix_to_ai`` makes the planar RGB888 AI buffer.
- the face detector and the 5-landmark model are CanMV's kmodels (``face_detect_320x240.kmodel`` and
  ``ld5.kmodel`` from its examples), not ours: here MTCNN (``data/align.FaceAligner``) on the frame gives
  the boxes, and the landmark "model" returns MTCNN's landmarks as the logits the script expects.
- our kmodel runs in nncase's simulator (``runtime.kmodel.simulate``) on the 112x112 AI buffer.
- ``image.get_affine_transform`` (integer points, least-squares similarity from the template to the
  frame, no reflection correction) and ``image.warp_affine_ai`` (8.8 fixed-point bilinear on the planar
  AI buffer, pixels whose source falls outside left black), ``KPU.Feat.calculate`` (float32 L2
  normalization) and ``KPU.Feat.compare`` (float32 dot, ``(0.5 + 0.5 * dot) * 100``) as in CanMV's C.
- ``uos.rename`` onto an existing file removes the target first, as MicroPython 1.11's FAT driver does
  (``rename_replaces=False``: it fails with EEXIST, as FatFs' own ``f_rename``).

What the real firmware does differently (limits of this emulation):

1. Detector and landmarks: MTCNN is not CanMV's YOLOv2 / ld5 kmodels; boxes, landmarks and which faces
   are found differ on a real board. The Yolo2 ``threshold`` is applied to MTCNN's confidence; its
   ``nms_value`` is ignored (MTCNN does its own suppression).
2. ``get_affine_transform``: numpy's SVD in float64 rounded to float32, where the firmware uses a float32
   closed-form 2x2 SVD: the matrix may differ in its last bits.
3. ``warp_affine_ai``: at the right and bottom edges the firmware, like this emulation, blends in the
   pixel past the row's end (the next row's first, or the next colour plane's); past the end of the
   buffer it reads whatever memory follows, here zeros.
4. ``Image.resize`` (the landmark crop) is OpenCV's bilinear resize, not OpenMV's; RGB565 expansion
   rounds (x * 255 / 31), where the firmware uses lookup tables of the same intent.
5. Floats: the board's MicroPython floats are float32 (``MICROPY_FLOAT_IMPL_FLOAT``); the script's own
   arithmetic here (``math.exp``, the gallery JSON's numbers) is float64, and ``ujson`` is CPython's
   ``json`` (the board's parser may round a decimal to float32 one unit differently).
6. The BOOT key's interrupt fires while ``sensor.snapshot()`` returns the frame marked ``press=True``;
   on the board it fires whenever the key goes up. The IDE's stop is ``KeyboardInterrupt`` from
   ``snapshot()`` after the last frame. A power cut is a :class:`PowerCut` raised from ``uos.rename``:
   the script stops there, with every file it closed complete on the card (FatFs syncs on close).
7. ``time.clock().fps()`` is host wall time; ``lcd``, ``draw_*`` only record what they were given.
"""
import builtins
import json
import os
import time
import types
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

FRAME_W, FRAME_H = 320, 240


class PowerCut(BaseException):
    """The board lost power (a BaseException: the script's ``except OSError`` does not catch it)."""


def to_rgb565(rgb: np.ndarray) -> np.ndarray:
    """RGB888 as the camera delivers it through RGB565 and the AI conversion: 5/6/5 bits expanded back."""
    rgb = rgb.astype(np.int32)
    r5, g6, b5 = (rgb[..., 0] * 31 + 127) // 255, (rgb[..., 1] * 63 + 127) // 255, (rgb[..., 2] * 31 + 127) // 255
    out = np.stack([(r5 * 255 + 15) // 31, (g6 * 255 + 31) // 63, (b5 * 255 + 15) // 31], axis=-1)
    return out.astype(np.uint8)


def paste_frame(photo: np.ndarray) -> np.ndarray:
    """A 320x240 RGB frame with ``photo`` (gray or RGB) in its centre on a mid-gray background."""
    photo = np.repeat(photo[..., None], 3, axis=2) if photo.ndim == 2 else photo
    frame = np.full((FRAME_H, FRAME_W, 3), 128, np.uint8)
    h, w = photo.shape[:2]
    y, x = (FRAME_H - h) // 2, (FRAME_W - w) // 2
    frame[y:y + h, x:x + w] = photo
    return frame


class Image:
    """An RGB565 image (kept as quantized RGB888), its planar AI buffer, and where it was cut from."""

    def __init__(self, path: Any = None, size: Optional[Sequence[int]] = None, copy_to_fb: bool = True,
                 pixels: Optional[np.ndarray] = None, origin: Optional[tuple] = None):
        if pixels is None:
            w, h = size
            pixels = np.zeros((h, w, 3), np.uint8)
        self.pixels, self.ai, self.origin, self.drawn = pixels, None, origin, []

    def width(self) -> int:
        return self.pixels.shape[1]

    def height(self) -> int:
        return self.pixels.shape[0]

    def pix_to_ai(self) -> None:
        self.ai = np.ascontiguousarray(self.pixels.transpose(2, 0, 1))

    def cut(self, x: int, y: int, w: int, h: int) -> "Image":
        return Image(pixels=self.pixels[y:y + h, x:x + w].copy(), origin=(x, y, w, h))

    def resize(self, w: int, h: int) -> "Image":
        import cv2

        return Image(pixels=cv2.resize(self.pixels, (w, h), interpolation=cv2.INTER_LINEAR), origin=self.origin)

    def draw_rectangle(self, *args: Any, **kwargs: Any) -> None:
        self.drawn.append(("rectangle", args))

    def draw_string(self, x: int, y: int, text: str, **kwargs: Any) -> None:
        self.drawn.append(("string", text))


def get_affine_transform(src: list, dst: list) -> tuple:
    """CanMV's 3x3 (as 9 floats) similarity mapping ``dst`` points (the template) onto ``src`` (the frame)."""
    for point in list(src) + list(dst):
        if len(point) != 2 or not all(isinstance(v, int) for v in point):
            raise TypeError("can't convert float to int: points must be pairs of ints")  # mp_obj_get_int
    frame = np.asarray(src, np.float64) % 65536  # uint16 on the board
    template = np.asarray(dst, np.float64) % 65536
    fm, tm = frame.mean(axis=0), template.mean(axis=0)
    cov = (frame - fm).T @ (template - tm) / len(frame)
    u, s, vt = np.linalg.svd(cov)
    rotation = u @ vt
    scale = s.sum() / ((template - tm) ** 2).sum(axis=1).mean()
    t = np.eye(3)
    t[:2, :2] = scale * rotation
    t[:2, 2] = fm - scale * rotation @ tm
    return tuple(float(v) for v in t.astype(np.float32).reshape(-1))


def warp_affine_ai(src: Image, dst: Image, transform: Sequence[float]) -> None:
    """Fill ``dst.ai`` from ``src.ai``: each output pixel samples the source at ``T @ (x, y, 1)`` (8.8 fixed point)."""
    if src.ai is None or dst.ai is None:
        raise ValueError("only support ai image affine")
    t = np.asarray(transform, np.float32).reshape(3, 3)
    h, w = src.height(), src.width()
    oh, ow = dst.height(), dst.width()
    i, j = np.meshgrid(np.arange(oh), np.arange(ow), indexing="ij")
    jj, ii = (j << 8).astype(np.float32), (i << 8).astype(np.float32)
    one = np.float32(256)
    pre_x = np.trunc(t[0, 0] * jj + t[0, 1] * ii + t[0, 2] * one).astype(np.int64)
    pre_y = np.trunc(t[1, 0] * jj + t[1, 1] * ii + t[1, 2] * one).astype(np.int64)
    fx, fy = pre_x & 0xFF, pre_y & 0xFF
    px, py = pre_x >> 8, pre_y >> 8
    inside = (px >= 0) & (px <= w - 1) & (py >= 0) & (py <= h - 1)
    flat = np.concatenate([src.ai.reshape(-1).astype(np.int64), np.zeros(w + 1, np.int64)])
    out = np.zeros((3, oh, ow), np.uint8)
    base = np.where(inside, py * w + px, 0)
    for k in range(3):
        at = base + k * w * h
        value = ((256 - fx) * (256 - fy) * flat[at] + fx * (256 - fy) * flat[at + 1]
                 + (256 - fx) * fy * flat[at + w] + fx * fy * flat[at + w + 1]) >> 16
        out[k] = np.where(inside, value, 0)
    dst.ai = out


class Feat:
    """``KPU.Feat``: float32 L2 normalization of the output and the cosine score, as CanMV's C."""

    @staticmethod
    def calculate(kpu: "KPU") -> List[float]:
        x = np.asarray(kpu.outputs, np.float32)
        total = np.float32(0)
        for v in x:
            total = np.float32(total + v * v)
        return [float(v) for v in x / np.sqrt(total)]

    @staticmethod
    def compare(a: Sequence[float], b: Sequence[float]) -> float:
        if len(a) != len(b):
            raise ValueError("feature len not equal")
        dot = np.float32(0)
        for u, v in zip(np.asarray(a, np.float32), np.asarray(b, np.float32)):
            dot = np.float32(dot + u * v)
        return float(np.float32((0.5 + 0.5 * float(dot)) * 100))


class Board:
    """One emulated board: an SD card folder, a queue of frames, and the models the script loads.

    ``frames``: ``(rgb_frame, press)`` pairs shown in order; ``press`` presses BOOT during that frame.
    ``detector_path`` / ``landmarks_path``: the paths in the config that stand for CanMV's two kmodels.
    ``power_cut_at``: cut the power at that (1-based) ``uos.rename`` of a ``.tmp`` file.
    """

    def __init__(self, sd: Path, frames: Sequence[tuple], detector_path: str, landmarks_path: str,
                 rename_replaces: bool = True, power_cut_at: Optional[int] = None,
                 aligner: Any = None, simulate: Optional[Callable] = None):
        self.sd, self.frames = Path(sd), list(frames)
        self.detector_path, self.landmarks_path = detector_path, landmarks_path
        self.rename_replaces, self.power_cut_at, self.tmp_renames = rename_replaces, power_cut_at, 0
        self.aligner, self.simulate = aligner, simulate
        self.shown, self.printed, self.crops, self.irq = 0, [], [], []
        self.detections: list = []

    # --- the SD card --------------------------------------------------------------------------------
    def host_path(self, path: str) -> Path:
        if not str(path).startswith("/sd/"):
            raise OSError(2, "ENOENT: only /sd/ exists on this board", path)
        return self.sd / str(path)[len("/sd/"):]

    def open(self, path: str, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        return builtins.open(self.host_path(path), mode, *args, **kwargs)

    def rename(self, old: str, new: str) -> None:
        if old.endswith(".tmp"):
            self.tmp_renames += 1
            if self.tmp_renames == self.power_cut_at:
                raise PowerCut(f"power cut before renaming {old} to {new}")
        src, dst = self.host_path(old), self.host_path(new)
        if not src.exists():
            raise OSError(2, "ENOENT", old)
        if dst.exists():
            if not self.rename_replaces:
                raise OSError(17, "EEXIST", new)
            dst.unlink()
        os.rename(src, dst)

    def remove(self, path: str) -> None:
        target = self.host_path(path)
        if not target.is_file():
            raise OSError(2, "ENOENT", path)
        target.unlink()

    # --- camera, key, models --------------------------------------------------------------------------
    def snapshot(self) -> Image:
        if self.shown == len(self.frames):
            raise KeyboardInterrupt("the IDE's stop: no more frames")
        rgb, press = self.frames[self.shown]
        self.shown += 1
        if press:
            for callback in self.irq:
                callback(None)
        return Image(pixels=to_rgb565(rgb), origin=(0, 0, FRAME_W, FRAME_H))

    def detect(self, image: Image) -> None:
        rgb = np.ascontiguousarray(image.ai.transpose(1, 2, 0))
        self.detections = self.aligner.detect([rgb])[0]

    def landmark_logits(self, image: Image) -> List[float]:
        x, y, w, h = image.origin

        def overlap(d: Any) -> float:
            ix = max(0.0, min(d.box[2], x + w) - max(d.box[0], x))
            iy = max(0.0, min(d.box[3], y + h) - max(d.box[1], y))
            return ix * iy

        face = max(self.detections, key=overlap)
        out = []
        for lx, ly in face.landmarks:
            for value in ((lx - x) / w, (ly - y) / h):
                p = min(max(value, 1e-6), 1 - 1e-6)
                out.append(float(np.log(p / (1 - p))))
        return out

    def embed(self, kmodel: bytes, image: Image) -> List[float]:
        crop = np.ascontiguousarray(image.ai.transpose(1, 2, 0))
        self.crops.append(crop)
        return [float(v) for v in self.simulate(kmodel, crop[None])[0]]

    # --- the modules the script imports ----------------------------------------------------------------
    def modules(self) -> Dict[str, types.ModuleType]:
        board = self

        class Clock:
            def __init__(self):
                self.last, self.rate = time.monotonic(), 0.0

            def tick(self) -> None:
                now = time.monotonic()
                self.rate, self.last = 1.0 / max(now - self.last, 1e-9), now

            def fps(self) -> float:
                return self.rate

        class Yolo:
            def __init__(self, kpu: "KPU"):
                self.kpu, self.threshold = kpu, None

            def init(self, anchor: list, threshold: float = 0.5, nms_value: float = 0.3) -> None:
                self.threshold = threshold

            def run(self) -> list:
                boxes = []
                for d in board.detections:
                    if d.confidence > self.threshold:
                        x1, y1, x2, y2 = (int(v) for v in d.box)
                        boxes.append([x1, y1, x2 - x1, y2 - y1, 0, float(d.confidence)])
                return boxes

        class KPU:
            Feat = Feat

            def __init__(self):
                self.kind, self.kmodel, self.outputs = None, None, None

            def load(self, where: Any, size: int = 0) -> None:
                if where == board.detector_path:
                    self.kind = "detector"
                elif where == board.landmarks_path:
                    self.kind = "landmarks"
                elif isinstance(where, str):
                    self.kind, self.kmodel = "ours", board.host_path(where).read_bytes()
                else:
                    raise OSError("this emulated board has no kmodel in flash at %r" % (where,))

            def run(self, image: Image) -> None:
                if image.ai is None:
                    raise ValueError("call pix_to_ai() before run")
                if self.kind == "detector":
                    board.detect(image)
                elif self.kind == "landmarks":
                    self.outputs = board.landmark_logits(image)
                else:
                    self.outputs = board.embed(self.kmodel, image)

            def get_outputs(self) -> List[float]:
                return list(self.outputs)

            def Yolo2(self) -> "Yolo":
                return Yolo(self)

        class GPIO:
            GPIOHS0, IN, IRQ_RISING, WAKEUP_NOT_SUPPORT = 0, 0, 1, 0

            def __init__(self, pin: int, mode: int):
                self.pin = pin

            def irq(self, callback: Callable, trigger: int, wakeup: int = 0) -> None:
                board.irq.append(callback)

        def module(name: str, **attrs: Any) -> types.ModuleType:
            m = types.ModuleType(name)
            m.__dict__.update(attrs)
            return m

        fpioa = types.SimpleNamespace(GPIOHS0=0)
        return {
            "sensor": module("sensor", RGB565=2, QVGA=8, reset=lambda: None, set_pixformat=lambda f: None,
                             set_framesize=lambda f: None, skip_frames=lambda *a, **k: None,
                             snapshot=board.snapshot),
            "lcd": module("lcd", init=lambda *a, **k: None, display=lambda image, *a, **k: None),
            "image": module("image", Image=Image, get_affine_transform=get_affine_transform,
                            warp_affine_ai=warp_affine_ai),
            "maix": module("maix", KPU=KPU, GPIO=GPIO),
            "board": module("board", board_info=types.SimpleNamespace(BOOT_KEY=16)),
            "fpioa_manager": module("fpioa_manager", fm=types.SimpleNamespace(
                fpioa=fpioa, register=lambda pin, function, *a, **k: None)),
            "time": module("time", clock=Clock, sleep_ms=lambda ms: None, ticks_ms=lambda: int(time.monotonic() * 1000)),
            "ujson": module("ujson", load=json.load, loads=json.loads, dump=json.dump, dumps=json.dumps),
            "uos": module("uos", remove=board.remove, rename=board.rename,
                          listdir=lambda path="/sd": os.listdir(board.host_path(path.rstrip("/") + "/"))),
        }

    def run_script(self, script: Path) -> str:
        """Run the script until the frames end or the power is cut; returns how it stopped."""
        emulated = self.modules()
        real_import = builtins.__import__

        def board_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0):
            if name in emulated:
                return emulated[name]
            return real_import(name, globals, locals, fromlist, level)

        def board_print(*args: Any, **kwargs: Any) -> None:
            self.printed.append(" ".join(str(a) for a in args))

        scope = {"__name__": "__main__", "__file__": "/sd/" + script.name,
                 "__builtins__": {**builtins.__dict__, "__import__": board_import, "open": self.open,
                                  "print": board_print}}
        code = compile(script.read_text(encoding="utf-8"), "/sd/" + script.name, "exec")
        try:
            exec(code, scope)
        except KeyboardInterrupt:
            return "stopped"
        except PowerCut:
            return "power cut"
        return "returned"
