"""Board stage: .kfpkg packing checked by kflash's own code, flash plans, the board script and its generated
config, the exact threshold conversion, and host enroll/identify agreeing across Keras, TFLite and kmodel."""
import binascii
import hashlib
import json
import socket
import struct
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mobilefacenet_k210 import k210, preprocessing
from mobilefacenet_k210.board import flash, gallery, kfpkg, score, sd_card
from mobilefacenet_k210.cli import main
from conftest import fake_kmodel, one_line_error, orl_crop

PEOPLE = ["s1", "s2", "s3", "s4", "s5", "s6"]
ENROLL_PHOTOS = (1, 2, 3, 4)
PROBE_PHOTOS = (9, 10)


# --- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """Aligned-crop folders: gallery/<person>/*.png and probes/<person>_<k>.png from the real ORL faces."""
    import cv2

    from mobilefacenet_k210.data.orl import fetch_orl

    orl = fetch_orl()
    root = tmp_path_factory.mktemp("faces")
    for person in PEOPLE:
        (root / "gallery" / person).mkdir(parents=True)
        for k in ENROLL_PHOTOS:
            cv2.imwrite(str(root / "gallery" / person / f"{k}.png"), orl_crop(orl / person / f"{k}.pgm")[:, :, ::-1])
    (root / "probes").mkdir()
    probes = []
    for person in PEOPLE:
        for k in PROBE_PHOTOS:
            path = root / "probes" / f"{person}_{k}.png"
            cv2.imwrite(str(path), orl_crop(orl / person / f"{k}.pgm")[:, :, ::-1])
            probes.append(path)
    return {"orl": orl, "gallery": root / "gallery", "probes": probes}


@pytest.fixture
def tiny(tiny_k210):
    """The session's tiny model as .keras, float .tflite and uint8 kmodel (conftest.tiny_k210; read only)."""
    return tiny_k210


class FakeK210:
    """A board at the other end of the serial line: answers kflash's ISP protocol over TCP (pyserial's
    ``socket://`` transport) and records every flash write (address, bytes), checking each CRC."""

    SILENT = {0xC5, 0xC6, 0xD6}  # boot, stage-0 and stub baud rate changes: no reply

    def __init__(self):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(1)
        self.url = "socket://127.0.0.1:%d" % self.server.getsockname()[1]
        self.writes, self.ops = [], []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @staticmethod
    def _frames(conn):
        frame, inside, escape = bytearray(), False, False
        while True:
            data = conn.recv(65536)
            if not data:
                return
            for b in data:
                if not inside:
                    inside, frame = b == 0xC0, bytearray()
                elif escape:
                    frame.append({0xDC: 0xC0, 0xDD: 0xDB}[b])
                    escape = False
                elif b == 0xDB:
                    escape = True
                elif b == 0xC0:
                    if frame:
                        yield bytes(frame)
                    inside = False
                else:
                    frame.append(b)

    def _serve(self):
        conn, _ = self.server.accept()
        with conn:
            for frame in self._frames(conn):
                op = frame[0]
                self.ops.append(op)
                if op == 0xD4:
                    crc, address, length = struct.unpack("<III", frame[4:16])
                    assert binascii.crc32(frame[8:16 + length]) & 0xFFFFFFFF == crc
                    self.writes.append((address, frame[16:16 + length]))
                if op not in self.SILENT:
                    conn.sendall(bytes([0xC0, op, 0xE0, 0xC0]))
                if op == 0xD5:  # reboot: kflash is done
                    break
        self.server.close()

    def written(self, address: int) -> bytes:
        """The bytes written from ``address`` on, joined across kflash's 64 KiB chunks."""
        chunks = sorted(w for w in self.writes if w[0] >= address)
        data, at = b"", address
        for start, chunk in chunks:
            if start != at:
                break
            data += chunk
            at += len(chunk)
        return data


# --- .kfpkg ------------------------------------------------------------------------------------------
def test_kfpkg_contents_and_flash_list_layout(tmp_path, tiny):
    plan = kfpkg.build_kfpkg(tiny["kmodel"], tmp_path / "m.kfpkg")
    with zipfile.ZipFile(tmp_path / "m.kfpkg") as zf:
        assert sorted(zf.namelist()) == sorted(["tiny.kmodel", "tiny.kmodel.json", kfpkg.FLASH_LIST, kfpkg.PLAN_FILE])
        assert zf.read("tiny.kmodel.json") == (tiny["kmodel"].parent / "tiny.kmodel.json").read_bytes()
        assert zf.read("tiny.kmodel") == tiny["kmodel"].read_bytes()
        text = zf.read(kfpkg.FLASH_LIST).decode()
    listing = json.loads(text)
    assert listing["files"] == [{"address": 0x300000, "bin": "tiny.kmodel", "sha256Prefix": False}]
    assert '"address": 3145728,' in text.splitlines()[4]  # bare number, own line, comma: kflash's regex needs it
    assert plan["kmodel"]["nncase_version"].startswith("1.1.0") and plan["warnings"] == []
    assert plan["board_load"] == f"kpu.load(0x300000, size={tiny['kmodel'].stat().st_size})"
    assert kfpkg.read_kfpkg(tmp_path / "m.kfpkg")["files"][0]["address"] == 0x300000


def test_kflash_parses_package_and_writes_each_file_at_its_address(tmp_path, tiny, monkeypatch):
    import serial

    firmware = tmp_path / "canmv.bin"
    firmware.write_bytes(np.random.default_rng(0).integers(0, 256, 70000, dtype=np.uint8).tobytes())
    kfpkg.build_kfpkg(tiny["kmodel"], tmp_path / "all.kfpkg", firmware=firmware)
    board = FakeK210()
    monkeypatch.setattr(serial, "Serial", lambda port, **kw: serial.serial_for_url(port, **kw))
    flash.run_kflash(tmp_path / "all.kfpkg", board.url, "goE", 1500000)
    board.thread.join(10)
    assert board.written(0x300000)[:tiny["kmodel"].stat().st_size] == tiny["kmodel"].read_bytes()
    fw = firmware.read_bytes()
    header = board.written(0)[:5 + len(fw) + 32]  # kflash: flag byte, length, firmware, sha256
    assert struct.unpack("<I", header[1:5])[0] == len(fw) and header[5:5 + len(fw)] == fw
    assert header[-32:] == hashlib.sha256(header[:-32]).digest()
    assert 0xD5 in board.ops  # kflash finished and rebooted the board


def test_runtime_mismatch_warns_and_no_record_warns(tmp_path, tiny, capsys):
    assert any("will load and then fail" in w for w in kfpkg.check_kmodel(tiny["kmodel"], runtime="sdk-1.9")["warnings"])
    assert main(["kfpkg", "--kmodel", str(tiny["kmodel"]), "--out", str(tmp_path / "m.kfpkg"),
                 "--runtime", "sdk-1.9"]) == 0
    out = capsys.readouterr().out
    assert "0x00300000-" in out and "WARNING" in out and "nncase 1.9.0" in out
    bare = fake_kmodel(tmp_path / "bare.kmodel")
    assert any("no compile record" in w for w in kfpkg.check_kmodel(bare)["warnings"])


@pytest.mark.parametrize("version, why", [(4, "kmodel v4"), (3, "kmodel v3")])
def test_non_v5_kmodel_is_refused(tmp_path, version, why):
    with pytest.raises(kfpkg.KfpkgError, match=why):
        kfpkg.build_kfpkg(fake_kmodel(tmp_path / "old.kmodel", version), tmp_path / "x.kfpkg")
    with zipfile.ZipFile(tmp_path / "old.kfpkg", "w") as zf:  # someone else's package: flashable, but warned
        zf.write(tmp_path / "old.kmodel", "old.kmodel")
        zf.writestr(kfpkg.FLASH_LIST, kfpkg.flash_list_json([{"address": 0x300000, "bin": "old.kmodel",
                                                             "sha256Prefix": False}]))
    assert any(why in w for w in kfpkg.read_kfpkg(tmp_path / "old.kfpkg")["warnings"])
    junk = tmp_path / "junk.kmodel"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" * 4)
    with pytest.raises(kfpkg.KfpkgError, match="not a kmodel"):
        kfpkg.check_kmodel(junk)


def test_oversized_and_misplaced_kmodels_are_refused(tmp_path):
    with pytest.raises(kfpkg.KfpkgError, match="RAM"):
        kfpkg.check_kmodel(fake_kmodel(tmp_path / "big.kmodel", size=k210.CANMV_KMODEL_RAM_LIMIT))
    small = fake_kmodel(tmp_path / "small.kmodel", size=8192)
    with pytest.raises(kfpkg.KfpkgError, match="past the free flash"):
        kfpkg.check_kmodel(small, address=k210.FLASH_END - 4096)
    with pytest.raises(kfpkg.KfpkgError, match="firmware area"):
        kfpkg.check_kmodel(small, address=0x100000)
    with pytest.raises(kfpkg.KfpkgError, match="sector"):
        kfpkg.check_kmodel(small, address=0x300100)
    firmware = tmp_path / "fw.bin"
    firmware.write_bytes(b"\0" * (0x300000 - 10))
    with pytest.raises(kfpkg.KfpkgError, match="over the kmodel"):
        kfpkg.build_plan(small, firmware)


# --- flash -------------------------------------------------------------------------------------------
def test_flash_checks_runtime_against_the_record_packed_in_the_kfpkg(tmp_path, tiny, capsys):
    package = tmp_path / "m.kfpkg"
    kfpkg.build_kfpkg(tiny["kmodel"], package)
    assert main(["flash", "--board", "goE", "--kfpkg", str(package), "--dry-run"]) == 0
    assert "WARNING" not in capsys.readouterr().out
    assert main(["flash", "--board", "goE", "--kfpkg", str(package), "--runtime", "sdk-1.9", "--dry-run"]) == 2
    one_line_error(capsys, "flash", str(package), "tiny.kmodel", "nncase 1.9.0", "--runtime canmv-feat-kpu or sdk-1.1")
    assert main(["flash", "--board", "goE", "--kmodel", str(tiny["kmodel"]), "--runtime", "sdk-1.9", "--dry-run"]) == 2
    one_line_error(capsys, "flash", str(tiny["kmodel"]), "nncase 1.9.0")

    bare = tmp_path / "bare.kfpkg"  # someone else's package: no compile record inside, so only a warning
    with zipfile.ZipFile(bare, "w") as zf:
        zf.write(tiny["kmodel"], "tiny.kmodel")
        zf.writestr(kfpkg.FLASH_LIST, kfpkg.flash_list_json([{"address": 0x300000, "bin": "tiny.kmodel",
                                                             "sha256Prefix": False}]))
    assert main(["flash", "--board", "goE", "--kfpkg", str(bare), "--runtime", "sdk-1.9", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "WARNING" in out and "no compile record of tiny.kmodel" in out and "nncase 1.9.0" in out


@pytest.mark.parametrize("listing, why", [("[1, 2]", "not an object"), ('{"files": [3]}', "not an object"),
                                          ("{not json", "not valid JSON")])
def test_malformed_flash_list_is_one_clear_error(tmp_path, listing, why, capsys):
    package = tmp_path / "odd.kfpkg"
    with zipfile.ZipFile(package, "w") as zf:
        zf.write(fake_kmodel(tmp_path / "m.kmodel"), "m.kmodel")
        zf.writestr(kfpkg.FLASH_LIST, listing)
    assert main(["flash", "--board", "goE", "--kfpkg", str(package), "--dry-run"]) == 2
    one_line_error(capsys, "flash", str(package), kfpkg.FLASH_LIST, why)


def test_dry_run_plan_needs_no_board(tmp_path, tiny, capsys):
    kfpkg.build_kfpkg(tiny["kmodel"], tmp_path / "m.kfpkg")
    plan = flash.flash("/dev/ttyUSB-none", "M5StickV", package=tmp_path / "m.kfpkg", dry_run=True)
    assert plan["board"] == "goE" and plan["baudrate"] == k210.KFLASH_BAUDRATE
    assert [(f["bin"], f["address"]) for f in plan["files"]] == [("tiny.kmodel", 0x300000)]
    assert main(["flash", "--board", "goE", "--kmodel", str(tiny["kmodel"]), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "0x00300000" in out and "dry run: nothing written" in out and "kpu.load(0x300000" in out


def test_unknown_board_and_missing_port_give_clear_errors(tmp_path, tiny, capsys):
    with pytest.raises(ValueError, match="unknown board 'maixcube'.*goE"):
        flash.plan_flash("/dev/ttyUSB0", "maixcube", kmodel=tiny["kmodel"])
    with pytest.raises(flash.FlashError, match="does not exist"):
        flash.flash(str(tmp_path / "ttyUSB9"), "goE", kmodel=tiny["kmodel"])
    with pytest.raises(flash.FlashError, match="no serial port given"):
        flash.flash("", "goE", kmodel=tiny["kmodel"])
    assert main(["flash", "--board", "dan", "--port", str(tmp_path / "ttyUSB9"), "--kmodel", str(tiny["kmodel"])]) == 2
    assert "does not exist" in capsys.readouterr().err


# --- threshold ---------------------------------------------------------------------------------------
def test_threshold_conversion_is_exact():
    for d in (0.0, 0.5, 1.0, 1.2345, 2.0, 4.0):
        assert score.distance_to_score(d) == pytest.approx(100.0 - 25.0 * d, abs=1e-12)
        assert score.score_to_distance(score.distance_to_score(d)) == pytest.approx(d, abs=1e-12)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 128)), rng.normal(size=(50, 128))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    squared = ((a - b) ** 2).sum(axis=1)
    board = np.diag(score.board_scores(a, b))
    np.testing.assert_allclose(board, [score.distance_to_score(d) for d in squared], atol=1e-4)
    t = float(np.median(squared))
    assert ((squared < t) == (board > score.distance_to_score(t))).all()


def test_threshold_from_eval_json_forms(tmp_path):
    single = tmp_path / "single.json"
    single.write_text(json.dumps({"accuracy": 0.9, "best_threshold": 1.32}))
    assert score.threshold_from_eval(single) == {"distance": 1.32, "score": 67.0, "source": str(single),
                                                 "set": None, "accuracy": 0.9}
    several = tmp_path / "several.json"
    several.write_text(json.dumps({"results": {"m.keras": {"orl": {"best_threshold": 1.1}},  # evaluate --json
                                               "m.kmodel": {"orl": {"best_threshold": 1.4}}}, "compare": {}}))
    with pytest.raises(ValueError, match="pick one"):
        score.threshold_from_eval(several)
    assert score.threshold_from_eval(several, "m.kmodel/orl")["score"] == pytest.approx(65.0)
    nothing = tmp_path / "nothing.json"
    nothing.write_text("{}")
    with pytest.raises(ValueError, match="no 'best_threshold'"):
        score.threshold_from_eval(nothing)


# --- board files -------------------------------------------------------------------------------------
def test_board_script_compiles_and_config_is_generated(tmp_path, tiny, faces):
    compile(sd_card.script_source(), sd_card.SCRIPT, "exec")
    eval_json = tmp_path / "eval.json"
    eval_json.write_text(json.dumps({"best_threshold": 1.08, "accuracy": 0.95}))
    gallery.enroll(faces["gallery"], tiny["kmodel"], tmp_path / "g.json", aligned=True)
    result = sd_card.write_board_files(tmp_path / "sd", tiny["kmodel"], eval_json, gallery=tmp_path / "g.json")
    sd = tmp_path / "sd"
    assert sorted(p.name for p in sd.iterdir()) == sorted([sd_card.SCRIPT, sd_card.CONFIG_NAME, sd_card.GALLERY_NAME,
                                                           "mfk210.kmodel"])
    compile((sd / sd_card.SCRIPT).read_text(), sd_card.SCRIPT, "exec")
    cfg = json.loads((sd / sd_card.CONFIG_NAME).read_text())
    assert cfg == result["config"]
    assert cfg["threshold"]["score"] == score.distance_to_score(1.08) == pytest.approx(73.0)
    np.testing.assert_array_equal(np.array(cfg["template"], np.float32), preprocessing.ARCFACE_TEMPLATE)
    assert cfg["embedding_size"] == 32 and cfg["model"]["path"] == "/sd/mfk210.kmodel"
    assert (sd / "mfk210.kmodel").read_bytes() == tiny["kmodel"].read_bytes()
    flashed = sd_card.write_board_files(tmp_path / "sd2", tiny["kmodel"], eval_json, flash_address=0x400000)
    assert flashed["config"]["model"]["flash_address"] == 0x400000 and not (tmp_path / "sd2" / "mfk210.kmodel").exists()
    assert main(["board-files", "--out", str(tmp_path / "sd3"), "--kmodel", str(tiny["kmodel"]),
                 "--eval", str(eval_json), "--set", "detector_nms=0.3"]) == 0
    assert json.loads((tmp_path / "sd3" / sd_card.CONFIG_NAME).read_text())["detector"]["nms"] == 0.3


def test_board_files_swaps_the_whole_set_in_and_a_failure_keeps_the_previous_one(tmp_path, tiny, monkeypatch,
                                                                                   capsys):
    eval_json = tmp_path / "eval.json"
    eval_json.write_text(json.dumps({"best_threshold": 1.08}))
    sd = tmp_path / "sd"
    sd_card.write_board_files(sd, tiny["kmodel"], eval_json)
    before = {p.name: p.read_bytes() for p in sd.iterdir()}
    assert "mfk210.kmodel" in before

    def disk_full(src, dst, *args, **kwargs):
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(sd_card.shutil, "copyfile", disk_full)
    assert main(["board-files", "--out", str(sd), "--kmodel", str(tiny["kmodel"]), "--eval", str(eval_json),
                 "--set", "detector_nms=0.3"]) == 2
    one_line_error(capsys, "board-files", "No space left on device")
    assert {p.name: p.read_bytes() for p in sd.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json", "sd"]  # no temporary folder left
    monkeypatch.undo()

    sd_card.write_board_files(sd, tiny["kmodel"], eval_json, flash_address=0x400000)  # a set without the kmodel
    assert sorted(p.name for p in sd.iterdir()) == sorted([sd_card.SCRIPT, sd_card.CONFIG_NAME])
    (sd / "notes.txt").write_text("mine")
    assert main(["board-files", "--out", str(sd), "--kmodel", str(tiny["kmodel"]), "--eval", str(eval_json)]) == 2
    one_line_error(capsys, "board-files", str(sd), "notes.txt", "new or empty folder")
    assert (sd / "notes.txt").read_text() == "mine"


# --- enroll / identify -------------------------------------------------------------------------------
def test_identify_gives_the_same_names_with_keras_tflite_and_kmodel(tmp_path, tiny, faces):
    names = {}
    for kind in ("keras", "tflite", "kmodel"):
        out = tmp_path / f"{kind}.json"
        enrolled = gallery.enroll(faces["gallery"], tiny[kind], out, aligned=True)  # "max": one entry per photo
        assert [p["name"] for p in enrolled["people"]] == [p for p in PEOPLE for _ in ENROLL_PHOTOS]
        assert gallery.person_names(enrolled) == PEOPLE
        feats = np.array([p["feature"] for p in enrolled["people"]])
        np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
        results = gallery.identify(faces["probes"], out, tiny[kind], threshold_score=None, aligned=True)
        names[kind] = [r["best"] for r in results]
    assert names["tflite"] == names["keras"]
    assert names["kmodel"] == names["keras"]
    truth = [p.name.split("_")[0] for p in faces["probes"]]
    assert sum(a == b for a, b in zip(names["keras"], truth)) > len(truth) / len(PEOPLE)  # better than chance


def test_enroll_identify_cli_with_threshold_and_mtcnn(tmp_path, tiny, faces, capsys):
    out = tmp_path / "g.json"
    assert main(["enroll", str(faces["gallery"]), "--model", str(tiny["keras"]), "--out", str(out), "--aligned"]) == 0
    eval_json = tmp_path / "eval.json"
    eval_json.write_text(json.dumps({"best_threshold": 0.4}))
    capsys.readouterr()
    probes = [str(p) for p in faces["probes"][:2]]
    assert main(["identify", *probes, "--gallery", str(out), "--model", str(tiny["keras"]), "--aligned",
                 "--threshold-from", str(eval_json)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(probes)
    for line, probe in zip(lines, probes):
        _check_line(line, probe, out, tiny["keras"], 90.0)

    # a threshold between the two probes' best scores: exactly one is named, the other is unknown
    scores = sorted(_board_best(p, out, tiny["keras"])[1] for p in probes)
    assert scores[1] - scores[0] > 2e-3, f"the probes score {scores}: too close for a threshold between them"
    middle = (scores[0] + scores[1]) / 2
    eval_json.write_text(json.dumps({"best_threshold": score.score_to_distance(middle)}))
    assert main(["identify", *probes, "--gallery", str(out), "--model", str(tiny["keras"]), "--aligned",
                 "--threshold-from", str(eval_json)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(probes)
    for line, probe in zip(lines, probes):
        _check_line(line, probe, out, tiny["keras"], middle)
    assert sum(": unknown, score" in line for line in lines) == 1
    raw = [faces["orl"] / "s1" / "9.pgm", faces["orl"] / "s2" / "9.pgm"]
    results = gallery.identify(raw, out, tiny["keras"])  # MTCNN detects and aligns the raw ORL photos
    assert all(r["face"] and r["best"] in PEOPLE for r in results)


def _board_best(photo: str, gallery_path: Path, keras_path: Path):
    """(name, score) of the closest gallery person, computed here from the Keras model and the JSON file
    with the board's formula (0.5 + 0.5 * cos) * 100, independently of gallery.identify."""
    import cv2
    import tensorflow as tf

    from mobilefacenet_k210.preprocessing import normalize

    model = tf.keras.models.load_model(keras_path, compile=False)
    rgb = cv2.imread(photo)[:, :, ::-1]
    embedding = model(normalize(rgb[None].astype(np.uint8)), training=False).numpy()[0].astype(np.float64)
    embedding /= np.linalg.norm(embedding)
    people = json.loads(gallery_path.read_text())["people"]
    scores = [(0.5 + 0.5 * float(np.dot(embedding, p["feature"]))) * 100 for p in people]
    best = int(np.argmax(scores))
    return people[best]["name"], scores[best]


def _check_line(line: str, photo: str, gallery_path: Path, keras_path: Path, threshold: float) -> None:
    """The one right answer for ``photo``: named when its independently computed best score is above
    ``threshold``, else unknown with the closest person; the printed score matches to its 0.1 rounding."""
    import re

    name, value = _board_best(photo, gallery_path, keras_path)
    assert abs(value - threshold) > 1e-3, f"{photo}: score {value} too close to the threshold {threshold} to judge"
    if value > threshold:
        found = re.fullmatch(re.escape(photo) + r": (\S+) score ([\d.]+) > ([\d.]+)", line)
        assert found and found.group(1) == name, (line, name, value)
    else:
        found = re.fullmatch(re.escape(photo) + r": unknown, score ([\d.]+) <= ([\d.]+) \(closest: (\S+)\)", line)
        assert found and found.group(3) == name, (line, name, value)
    numbers = [float(g) for g in found.groups() if re.fullmatch(r"[\d.]+", g)]
    assert numbers == [pytest.approx(value, abs=0.051), pytest.approx(threshold, abs=0.051)]


def test_gallery_entries_and_model_are_checked(tmp_path, tiny, faces, capsys):
    keras_gallery = tmp_path / "g_keras.json"
    gallery.enroll(faces["gallery"], tiny["keras"], keras_gallery, aligned=True)
    recorded = json.loads(keras_gallery.read_text())
    capsys.readouterr()  # enroll's progress bars
    assert recorded["model_sha256"] == hashlib.sha256(tiny["keras"].read_bytes()).hexdigest()
    probe = str(faces["probes"][0])
    assert main(["identify", probe, "--gallery", str(keras_gallery), "--model", str(tiny["tflite"]), "--aligned"]) == 2
    one_line_error(capsys, "identify", str(keras_gallery), f"enrolled with the model {tiny['keras']}",
                    f"--model {tiny['tflite']}")
    eval_json = tmp_path / "eval.json"
    eval_json.write_text(json.dumps({"best_threshold": 1.0}))
    assert main(["board-files", "--out", str(tmp_path / "sd"), "--kmodel", str(tiny["kmodel"]), "--eval",
                 str(eval_json), "--gallery", str(keras_gallery)]) == 2
    one_line_error(capsys, "board-files", str(keras_gallery), f"enrolled with the model {tiny['keras']}")
    assert not (tmp_path / "sd").exists()

    feature = recorded["people"][0]["feature"]
    for people, why in (([{"feature": feature}], "has no name"), ([{"name": "", "feature": feature}], "has no name"),
                        ([[1.0, 2.0]], "not an object"), ([{"name": "s1", "feature": "abc"}], "list of numbers"),
                        ({"s1": feature}, "not a list")):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({**recorded, "people": people}))
        assert main(["identify", probe, "--gallery", str(bad), "--model", str(tiny["keras"]), "--aligned"]) == 2
        one_line_error(capsys, "identify", str(bad), why)
        assert main(["board-files", "--out", str(tmp_path / "sd"), "--kmodel", str(tiny["kmodel"]), "--eval",
                     str(eval_json), "--gallery", str(bad)]) == 2
        one_line_error(capsys, "board-files", str(bad), why)


def test_missing_or_bad_gallery_gives_clear_errors(tmp_path, tiny, faces, capsys):
    with pytest.raises(gallery.GalleryError, match="no such gallery file"):
        gallery.identify(faces["probes"][:1], tmp_path / "none.json", tiny["keras"], aligned=True)
    assert main(["identify", str(faces["probes"][0]), "--gallery", str(tmp_path / "none.json"),
                 "--model", str(tiny["keras"]), "--aligned"]) == 2
    assert "no such gallery file" in capsys.readouterr().err
    with pytest.raises(gallery.GalleryError, match="no such gallery folder"):
        gallery.enroll(tmp_path / "nobody", tiny["keras"], tmp_path / "g.json")
    with pytest.raises(gallery.GalleryError, match="--aligned needs 112x112"):
        gallery.load_crops([faces["orl"] / "s1" / "1.pgm"], aligned=True)
