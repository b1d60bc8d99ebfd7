# mfk210 face identification on a K210 running CanMV built from its feat/kpu branch with
# "NNCASE for kmodel v5" enabled (CONFIG_CANMV_ENABLE_KMODEL_V5). MicroPython: runs on the board only.
#
# Every setting comes from /sd/mfk210_config.json, written by `mfk210 board-files` (never edit the
# threshold by hand: it is our evaluation's best verification threshold on the board's score scale).
# Flow per camera frame, as in CanMV's face-recognition example: a YOLOv2 face detector finds boxes,
# a 5-landmark model places the eyes, nose and mouth corners, image.get_affine_transform +
# image.warp_affine_ai align the face to the config's template into a 112x112 AI buffer (planar RGB,
# what our kmodel takes; the ArcFace template, or the same turned by 180 degrees for a kmodel that
# computes on the turned crop), our MobileFaceNet kmodel embeds it, KPU.Feat.calculate L2-normalizes the
# embedding and KPU.Feat.compare scores it against every gallery feature: (0.5 + 0.5 * cos) * 100.
# A person may have several entries (`mfk210 enroll --gallery-mode max`: one per photo): the best entry
# names the face, so a person scores the max over its entries.
# Press the BOOT key while one face is in view to enroll it as a new person (saved to the gallery,
# which a power cut while saving never loses). Each face's result is also printed, one line per face.
# Stop it from the IDE (KeyboardInterrupt); tests/canmv_board.py runs this file unmodified on an emulated board.
import gc
import math
import time

import image
import lcd
import sensor
from maix import GPIO, KPU

try:
    import ujson as json
except ImportError:
    import json
try:
    import uos as os
except ImportError:
    import os

CONFIG_PATH = "/sd/mfk210_config.json"


def load_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError:
        if default is None:
            raise
        return default


def remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def save_json(path, data):
    # Never without a complete copy on the card: write path.tmp, keep the old file as path.bak, rename the new
    # one in, then drop the .bak. FAT cannot rename over a file (MicroPython's FAT driver deletes the target
    # first), so the .bak is moved aside by us; load_gallery_data restores it after a power cut.
    tmp, bak = path + ".tmp", path + ".bak"
    with open(tmp, "w") as f:
        json.dump(data, f)
    remove_quietly(bak)
    try:
        os.rename(path, bak)
    except OSError:
        pass
    os.rename(tmp, path)
    remove_quietly(bak)


def load_gallery_data(path, empty):
    # The gallery, or its .bak if a power cut hit save_json after the old file was moved aside.
    try:
        return load_json(path)
    except (OSError, ValueError) as exc:
        problem = exc
    bak = path + ".bak"
    try:
        data = load_json(bak)
    except (OSError, ValueError):
        if isinstance(problem, ValueError):
            raise ValueError("gallery %s is corrupt (%s) and has no %s; fix or delete it" % (path, problem, bak))
        return empty
    remove_quietly(path)
    os.rename(bak, path)
    print("mfk210: %s was missing or corrupt, restored from %s" % (path, bak))
    return data


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def load_kmodel(kpu, spec):
    if "path" in spec:
        kpu.load(spec["path"])
    else:
        try:
            kpu.load(spec["flash_address"], size=spec["size"])
        except TypeError:
            kpu.load(spec["flash_address"])


def clip_box(x, y, w, h, width, height):
    x1 = max(0, int(x))
    y1 = max(0, int(y))
    x2 = min(width - 1, int(x + w))
    y2 = min(height - 1, int(y + h))
    return x1, y1, x2 - x1 + 1, y2 - y1 + 1


class Gallery:
    def __init__(self, path, embedding_size):
        self.path = path
        data = load_gallery_data(path, {"format": "mfk210-gallery", "version": 1, "people": []})
        self.data = data
        self.names = [p["name"] for p in data["people"]]
        self.features = [p["feature"] for p in data["people"]]
        for name, feature in zip(self.names, self.features):
            if len(feature) != embedding_size:
                raise ValueError("gallery %s: %s has a %d-d feature, the model gives %d-d"
                                 % (path, name, len(feature), embedding_size))

    def people(self):
        return len(set(self.names))

    def best(self, compare, feature):
        best_index, best_score = -1, -1.0
        for i, known in enumerate(self.features):
            score = compare(known, feature)
            if score > best_score:
                best_index, best_score = i, score
        return best_index, best_score

    def enroll(self, feature):
        number = self.people() + 1
        while "person%d" % number in self.names:
            number += 1
        name = "person%d" % number
        self.names.append(name)
        self.features.append(feature)
        self.data["people"].append({"name": name, "feature": feature, "photos": 1, "sources": ["board"]})
        save_json(self.path, self.data)
        return name


class Button:
    def __init__(self, enabled):
        self.pressed = False
        if not enabled:
            return
        from board import board_info
        from fpioa_manager import fm

        fm.register(board_info.BOOT_KEY, fm.fpioa.GPIOHS0)
        self.gpio = GPIO(GPIO.GPIOHS0, GPIO.IN)
        self.gpio.irq(self._on_press, GPIO.IRQ_RISING, GPIO.WAKEUP_NOT_SUPPORT)

    def _on_press(self, *_):
        self.pressed = True

    def take(self):
        pressed, self.pressed = self.pressed, False
        return pressed


def landmarks(ld5, frame, box, size):
    x, y, w, h = box
    face = frame.cut(x, y, w, h)
    face_in = face.resize(size, size)
    face_in.pix_to_ai()
    ld5.run(face_in)
    out = ld5.get_outputs()
    del face_in
    del face
    return [(int(sigmoid(out[2 * j]) * w + x), int(sigmoid(out[2 * j + 1]) * h + y)) for j in range(5)]


def main():
    cfg = load_json(CONFIG_PATH)
    size = cfg["input_size"]
    threshold = cfg["threshold"]["score"]
    template = [(int(px + 0.5), int(py + 0.5)) for px, py in cfg["template"]]

    lcd.init()
    sensor.reset()
    sensor.set_pixformat(sensor.RGB565)
    sensor.set_framesize(sensor.QVGA)
    sensor.skip_frames(time=1000)

    det = KPU()
    load_kmodel(det, cfg["detector"])
    yolo = det.Yolo2()
    yolo.init(cfg["detector"]["anchor"], threshold=cfg["detector"]["threshold"],
              nms_value=cfg["detector"]["nms"])
    ld5 = KPU()
    load_kmodel(ld5, cfg["landmarks"])
    fea = KPU()
    load_kmodel(fea, cfg["model"])

    aligned = image.Image(size=(size, size), copy_to_fb=False)
    aligned.pix_to_ai()
    gallery = Gallery(cfg["gallery"], cfg["embedding_size"])
    button = Button(cfg["enroll_button"])
    clock = time.clock()
    print("mfk210: %d people in the gallery, match above score %.2f" % (gallery.people(), threshold))

    while True:
        gc.collect()
        clock.tick()
        frame = sensor.snapshot()
        frame.pix_to_ai()
        det.run(frame)
        boxes = yolo.run()
        enroll = button.take()
        for found in boxes:
            box = clip_box(found[0], found[1], found[2], found[3], frame.width(), frame.height())
            points = landmarks(ld5, frame, box, cfg["landmarks"]["input_size"])
            transform = image.get_affine_transform(points, template)
            image.warp_affine_ai(frame, aligned, transform)
            fea.run(aligned)
            feature = fea.Feat.calculate(fea)
            note = ""
            if enroll and len(boxes) == 1:
                label, color = "enrolled %s" % gallery.enroll(feature), (0, 0, 255)
            else:
                index, score = gallery.best(fea.Feat.compare, feature)
                if index < 0:
                    label, color = "no gallery", (255, 0, 0)
                elif score > threshold:
                    label, color = "%s %.1f" % (gallery.names[index], score), (0, 255, 0)
                else:
                    label, color = "unknown %.1f" % score, (255, 0, 0)
                    note = " (closest %s)" % gallery.names[index]
            print("mfk210: " + label + note)
            frame.draw_rectangle(box[0], box[1], box[2], box[3], color=color)
            frame.draw_string(box[0], max(0, box[1] - 20), label, color=color, scale=1.5)
            del feature
        frame.draw_string(0, 0, "%.1f fps" % clock.fps(), color=(0, 60, 255), scale=1.5)
        if cfg["enroll_button"]:
            frame.draw_string(0, frame.height() - 20, "BOOT: enroll the face in view", color=(255, 100, 0),
                              scale=1.5)
        lcd.display(frame)


main()
