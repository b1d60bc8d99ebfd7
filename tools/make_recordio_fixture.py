"""Write tests/fixtures/recordio: small InsightFace RecordIO sets written by REAL mxnet, from real ORL faces.

Needs a throwaway mxnet venv (mxnet is never a dependency of the package or of `make test`):

    python3.10 -m venv /tmp/mxvenv
    /tmp/mxvenv/bin/pip install mxnet==1.9.1 "numpy<1.24" opencv-python-headless
    PYTHONPATH=$PWD .venv/bin/python tools/make_recordio_fixture.py tests/fixtures/recordio \
        --mxnet-python /tmp/mxvenv/bin/python

Run with the project's venv, it aligns the first photos of ORL s1-s4 with the package's MTCNN
(`data.crops.read_crops`) into 112x112 PNG crops, then runs itself under the mxnet venv (`--write`,
which imports mxnet, numpy and cv2 only) to pack them with `mx.recordio.MXIndexedRecordIO` and
`pack_img`/`pack`, in these sets, each with `expected.json` (per key: kind, class, sha256 of the
payload as mxnet's `unpack` returns it, mean R, G, B of mxnet's `imdecode`, which gives RGB):

- insightface/: insightface's rec_builder layout (key 0 header with the identity-record range, photos
  1..12 of classes 0-3 with number labels, one empty identity record per class), `property`, a
  2-pair `lfw.bin`; photo 2 carries the RecordIO magic twice in a JPEG comment, so mxnet splits its
  record into 3 parts;
- noheader/: no key 0 header, photos from key 0 with number labels of classes 5, 9 and 12 in mixed
  order, one stored as PNG; `property` 13,112,112;
- arraylabels/: no header, every photo's label an array [class, 1.0] (key 0 is a photo too);
- wrongsize/: two 96x96 photos (the builder must refuse the set).

Each crop is tinted with its class's colour (written BGR by cv2, so R, G and B differ and their order
can be checked).
"""
import argparse
import hashlib
import json
import pickle
import struct
import subprocess
import tempfile
from pathlib import Path

IDENTITIES, PHOTOS = ("s1", "s2", "s3", "s4"), 3
TINTS_BGR = [(0.55, 0.8, 1.0), (1.0, 0.8, 0.55), (0.6, 1.0, 0.7), (0.95, 0.65, 0.85)]
MAGIC = struct.pack("<I", 0xCED7230A)


def align_crops(out: Path) -> None:
    """The first aligned photos of each identity, as PNG crops ``out/<identity>/<n>.png`` (project venv)."""
    import cv2

    from mobilefacenet_k210.data.crops import read_crops
    from mobilefacenet_k210.data.orl import fetch_orl

    orl = fetch_orl()
    for name in IDENTITIES:
        paths = sorted((orl / name).glob("*.pgm"), key=lambda p: int(p.stem))
        crops = [c for c in read_crops(paths, aligned=False, wrong_size=None) if c is not None][:PHOTOS]
        assert len(crops) == PHOTOS, f"{name}: MTCNN aligned {len(crops)} photos"
        for i, crop in enumerate(crops):
            (out / name).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out / name / f"{i}.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))


def with_magic_comment(jpeg: bytes, header_bytes: int) -> bytes:
    """The JPEG with a comment segment holding the RecordIO magic twice at 4-byte boundaries of the
    record (``header_bytes`` of IRHeader and labels before the payload): mxnet must split it."""
    start = header_bytes + 2 + 4  # SOI, then the comment's marker and length
    pad = (-start) % 4
    text = b"x" * pad + MAGIC + b"recordio" + MAGIC + b"split"
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + jpeg[2:]


def write_sets(crops: Path, out: Path) -> None:
    """Pack the crops with mxnet into the four sets (mxnet venv)."""
    import cv2
    import mxnet as mx
    import numpy as np

    images = [[cv2.imread(str(crops / name / f"{i}.png")) for i in range(PHOTOS)] for name in IDENTITIES]
    tinted = [[np.clip(img * np.array(TINTS_BGR[c]), 0, 255).astype(np.uint8) for img in imgs]
              for c, imgs in enumerate(images)]

    def record_info(s: bytes, kind: str, cls=None) -> dict:
        header, payload = mx.recordio.unpack(s)
        info = {"kind": kind, "flag": int(header.flag)}
        if kind == "photo":
            rgb = mx.image.imdecode(payload).asnumpy()
            info.update({"class": cls, "sha256": hashlib.sha256(payload).hexdigest(),
                         "rgb_mean": [round(float(v), 3) for v in rgb.reshape(-1, 3).mean(0)],
                         "size": list(rgb.shape[:2])})
        return info

    def open_set(name: str):
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        return d, mx.recordio.MXIndexedRecordIO(str(d / "train.idx"), str(d / "train.rec"), "w")

    def finish(d: Path, writer, expected: dict, classes=None) -> None:
        writer.close()
        if classes is not None:
            (d / "property").write_text(f"{classes},112,112\n")
        expected = {"mxnet": mx.__version__, **expected}
        (d / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")

    # 1. insightface's rec_builder layout
    d, w = open_set("insightface")
    keys, key, spans, split_key = {}, 1, [], 2
    for c, imgs in enumerate(tinted):
        first = key
        for img in imgs:
            header = mx.recordio.IRHeader(0, c, key, 0)
            if key == split_key:
                jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
                s = mx.recordio.pack(header, with_magic_comment(jpeg, 24))
            else:
                s = mx.recordio.pack_img(header, img, quality=95, img_fmt=".jpg")
            w.write_idx(key, s)
            keys[key] = record_info(s, "photo", c)
            key += 1
        spans.append((first, key))
    id_first = key
    for first, end in spans:
        s = mx.recordio.pack(mx.recordio.IRHeader(0, [first, end], key, 0), b"")
        w.write_idx(key, s)
        keys[key] = {**record_info(s, "identity"), "range": [first, end]}
        key += 1
    s = mx.recordio.pack(mx.recordio.IRHeader(0, [id_first, key], 0, 1), b"")
    w.write_idx(0, s)
    keys[0] = {**record_info(s, "header"), "range": [id_first, key]}
    pairs = [tinted[0][0], tinted[0][1], tinted[0][0], tinted[1][0]]
    bins = [cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for img in pairs]
    with open(d / "lfw.bin", "wb") as f:
        pickle.dump((bins, [True, False]), f, protocol=2)
    finish(d, w, {"keys": keys, "split_key": split_key}, classes=len(tinted))

    # 2. no header, number labels, classes 5/9/12 in mixed order, one PNG
    d, w = open_set("noheader")
    keys, order = {}, [(9, 0, 0), (9, 0, 1), (5, 1, 0), (12, 2, 0), (5, 1, 1), (12, 2, 1), (9, 0, 2), (12, 2, 2),
                       (5, 1, 2)]
    for key, (cls, c, i) in enumerate(order):
        fmt = ".png" if key == 4 else ".jpg"
        s = mx.recordio.pack_img(mx.recordio.IRHeader(0, cls, key, 0), tinted[c][i], quality=95, img_fmt=fmt)
        w.write_idx(key, s)
        keys[key] = {**record_info(s, "photo", cls), "format": fmt}
    finish(d, w, {"keys": keys}, classes=13)

    # 3. no header, array labels [class, 1.0], key 0 a photo
    d, w = open_set("arraylabels")
    keys = {}
    for key, (c, i) in enumerate([(0, 0), (0, 1), (3, 0), (3, 1), (1, 0), (1, 1)]):
        s = mx.recordio.pack_img(mx.recordio.IRHeader(0, [c, 1.0], key, 0), tinted[c][i], quality=95, img_fmt=".jpg")
        w.write_idx(key, s)
        keys[key] = record_info(s, "photo", c)
    finish(d, w, {"keys": keys}, classes=4)

    # 4. photos that are not 112x112 crops
    d, w = open_set("wrongsize")
    keys = {}
    for key in (1, 2):
        small = cv2.resize(tinted[key][0], (96, 96), interpolation=cv2.INTER_AREA)
        s = mx.recordio.pack_img(mx.recordio.IRHeader(0, key, key, 0), small, quality=90, img_fmt=".jpg")
        w.write_idx(key, s)
        keys[key] = record_info(s, "photo", key)
    finish(d, w, {"keys": keys})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="fixture folder to (re)write")
    parser.add_argument("--mxnet-python", help="the Python of the throwaway mxnet venv")
    parser.add_argument("--write", type=Path, metavar="CROPS", help="(internal) pack CROPS with mxnet")
    args = parser.parse_args()
    if args.write:
        write_sets(args.write, args.out)
        return
    if not args.mxnet_python:
        parser.error("give --mxnet-python (see this script's docstring)")
    with tempfile.TemporaryDirectory() as tmp:
        align_crops(Path(tmp))
        subprocess.run([args.mxnet_python, __file__, str(args.out), "--write", tmp], check=True)


if __name__ == "__main__":
    main()
