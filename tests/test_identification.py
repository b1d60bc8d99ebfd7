"""Open-set 1:N identification as the board does it: exact measures on hand-built embeddings, thresholds
per gallery size, `evaluate --identification` end to end, and `board-files --ident-eval`."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from mobilefacenet_k210 import atomic
from mobilefacenet_k210.board import sd_card
from mobilefacenet_k210.cli import main
from mobilefacenet_k210.evaluate import identification as ident
from conftest import fake_kmodel, one_line_error


def _unit(**parts: float) -> np.ndarray:
    """A unit vector in 6 dimensions from {"e0": weight, ...}; the weights given already have norm 1."""
    v = np.zeros(6)
    for name, w in parts.items():
        v[int(name[1:])] = w
    assert abs(np.linalg.norm(v) - 1.0) < 1e-9
    return v


# Four people A-D; photo 0 of each is e0..e3 (their gallery feature with one enrolled photo).
# Fold 1 enrolls A, B (strangers C, D); fold 2 enrolls C, D (strangers A, B). Board score = 50 + 50 * dot.
PHOTOS = {
    "A": [_unit(e0=1), _unit(e0=0.5, e4=math.sqrt(0.75)), _unit(e0=0.6, e1=0.8)],  # 75 right; 90 for B: wrong
    "B": [_unit(e1=1), _unit(e1=0.9, e5=math.sqrt(0.19)), _unit(e1=0.8, e4=0.6)],  # 95 right; 90 right
    "C": [_unit(e2=1), _unit(e2=0.2, e4=math.sqrt(0.96)), _unit(e2=0.8, e3=0.6)],  # 60 right; 90 right
    "D": [_unit(e3=1), _unit(e3=0.5, e5=math.sqrt(0.75)), _unit(e3=0.7, e0=math.sqrt(0.51))],  # 75; 85 right
}
STRANGER_D2 = 50 + 50 * math.sqrt(0.51)  # D's photo 2 against A: the only stranger scoring above 50


def _hand_built():
    features = np.stack([v for person in PHOTOS.values() for v in person])
    labels = [name for name, person in PHOTOS.items() for _ in person]
    order = [k for person in PHOTOS.values() for k in range(len(person))]
    return features, labels, order


def test_open_set_measures_on_hand_built_embeddings():
    result = ident.open_set(*_hand_built(), enroll_photos=1, fpirs=(0.01, 0.1), gallery_sizes=(1, 2, 10))
    assert result["enrolled_people"] == [2, 2]
    assert (result["mated_probes"], result["nonmated_probes"]) == (8, 12)
    assert result["rank1"] == 7 / 8  # A's photo 2 is closer to B
    # FPIR 10% of 12 strangers allows 1 above (D2): the threshold is the next score, 50; only the wrong
    # top identity fails then.
    assert result["at_fpir"]["0.1"] == {"threshold_score": pytest.approx(50.0), "fpir": 1 / 12, "fnir": 1 / 8}
    # FPIR 1% allows none: above D2's score only B1 (95), B2 (90) and C2 (90) are named.
    assert result["at_fpir"]["0.01"]["threshold_score"] == pytest.approx(STRANGER_D2, abs=1e-4)
    assert result["at_fpir"]["0.01"]["fpir"] == 0.0 and result["at_fpir"]["0.01"]["fnir"] == 5 / 8
    assert ident.rates(*_tops(), 80.0) == (1 / 12, 4 / 8)  # A1, A2, C1, D1 not named
    det = result["det"]
    assert (det["threshold"][0], det["fpir"][0], det["fnir"][0]) == (0.0, 1.0, 1 / 8)
    assert (det["fpir"][-1], det["fnir"][-1]) == (0.0, 1.0)
    assert all(a >= b for a, b in zip(det["fpir"], det["fpir"][1:]))
    assert all(a <= b for a, b in zip(det["fnir"], det["fnir"][1:]))
    # impostor comparisons: 4 mated probes x 1 other + 6 strangers x 2 entries, per fold;
    # above 50 only A2 vs B (90), D2 vs A (85.7) and C2 vs D (80)
    assert result["impostor_count"] == 32
    assert result["impostor_tail"][:4] == pytest.approx([90.0, STRANGER_D2, 80.0, 50.0], abs=1e-4)


def _tops():
    """(top mated score, named right, top stranger score) of the hand-built set, worked out by hand."""
    top_mated = np.array([75, 90, 95, 90, 60, 90, 75, 85], np.float32)
    correct = np.array([True, False, True, True, True, True, True, True])
    top_nonmated = np.array([50.0] * 5 + [STRANGER_D2] + [50.0] * 6, np.float32)
    return top_mated, correct, top_nonmated


def test_threshold_grows_with_the_gallery_size():
    result = ident.open_set(*_hand_built(), enroll_photos=1, fpirs=(0.01, 0.1), gallery_sizes=(1, 2, 10))
    tail, count = np.array(result["impostor_tail"]), result["impostor_count"]
    one = ident.threshold_for_gallery(tail, count, 1, 0.1)  # 10% of 32 comparisons: 3 may be above
    assert one["score"] == pytest.approx(50.0) and one["per_comparison_rate"] == pytest.approx(0.1)
    two = ident.threshold_for_gallery(tail, count, 2, 0.1)  # 1 - 0.9 ** 0.5 = 5.1%: 1 of 32 may be above
    assert two["score"] == pytest.approx(STRANGER_D2, abs=1e-4) and not two["limited"]
    many = ident.threshold_for_gallery(tail, count, 10, 0.01)  # below 1 in 32: the highest seen, flagged
    assert many["score"] == pytest.approx(90.0) and many["limited"]
    assert many["distance"] == pytest.approx(2 - 2 * 0.8, abs=1e-6)  # score 90 is cos 0.8
    assert result["by_gallery_size"]["2"]["0.1"]["score"] == pytest.approx(two["score"])
    # galleries of 2 drawn from 2 enrolled people are the gallery itself: 0 of 12 strangers above 85.7
    assert result["by_gallery_size"]["2"]["0.1"]["fpir_resampled"] == 0.0
    assert "fpir_resampled" not in result["by_gallery_size"]["10"]["0.1"]
    with pytest.raises(ident.IdentificationError, match="gallery size 0"):
        ident.threshold_for_gallery(tail, count, 0, 0.01)


def test_threshold_at_follows_the_boards_strict_comparison():
    scores = np.array([90.0, 80.0, 80.0, 70.0])
    assert ident.threshold_at(scores, 0.25) == 80.0  # one above 80 allowed: only 90 is
    assert ident.threshold_at(scores, 0.5) == 80.0  # two allowed, but 80 ties: still only 90 above
    assert ident.threshold_at(scores, 0.0) == 90.0
    assert ident.threshold_at(scores, 1.0) == 0.0


def _ident_json(path: Path) -> Path:
    result = ident.open_set(*_hand_built(), enroll_photos=1, fpirs=(0.01, 0.1), gallery_sizes=(1, 2))
    atomic.write_json(path, {"format": ident.FORMAT, "version": 1, "results": {"m.kmodel": result}})
    return path


def _gallery(path: Path, people: int) -> Path:
    entries = [{"name": f"p{i}", "feature": [1.0 if j == i else 0.0 for j in range(6)]} for i in range(people)]
    path.write_text(json.dumps({"format": "mfk210-gallery", "version": 1, "mode": "max", "people": entries}))
    return path


def test_board_files_takes_the_open_set_threshold_for_the_gallerys_size(tmp_path, capsys):
    kmodel, ident_json = fake_kmodel(tmp_path / "m.kmodel"), _ident_json(tmp_path / "ident.json")
    verification = tmp_path / "eval.json"
    verification.write_text(json.dumps({"best_threshold": 1.0, "accuracy": 0.9}))
    assert main(["board-files", "--out", str(tmp_path / "sd"), "--kmodel", str(kmodel), "--eval", str(verification),
                 "--ident-eval", str(ident_json), "--fpir", "0.1", "--gallery", str(_gallery(tmp_path / "g.json", 2))]) == 0
    threshold = json.loads((tmp_path / "sd" / sd_card.CONFIG_NAME).read_text())["threshold"]
    assert threshold["score"] == pytest.approx(STRANGER_D2, abs=1e-4)  # N=2, FPIR 10%, as computed above
    assert threshold["distance"] == pytest.approx(2 - 2 * math.sqrt(0.51), abs=1e-5)
    assert (threshold["gallery_size"], threshold["fpir"], threshold["source"]) == (2, 0.1, str(ident_json))
    assert threshold["from"] == "open-set identification" and threshold["set"] == "m.kmodel"
    assert "FPIR 10% for 2 people" in capsys.readouterr().out
    # --gallery-size overrides the gallery's count; without --ident-eval the verification threshold stays
    assert main(["board-files", "--out", str(tmp_path / "sd2"), "--kmodel", str(kmodel), "--embedding-size", "6",
                 "--ident-eval", str(ident_json), "--gallery-size", "1", "--fpir", "0.1"]) == 0
    assert json.loads((tmp_path / "sd2" / sd_card.CONFIG_NAME).read_text())["threshold"]["score"] == pytest.approx(50.0)
    assert main(["board-files", "--out", str(tmp_path / "sd4"), "--kmodel", str(kmodel), "--embedding-size", "6",
                 "--ident-eval", str(ident_json), "--gallery-size", "10"]) == 0  # FPIR 1%: finer than 1 in 32
    printed = capsys.readouterr().out
    assert "WARNING" in printed and "highest impostor score seen" in printed
    assert json.loads((tmp_path / "sd4" / sd_card.CONFIG_NAME).read_text())["threshold"]["limited"] is True
    assert main(["board-files", "--out", str(tmp_path / "sd3"), "--kmodel", str(kmodel), "--eval", str(verification),
                 "--embedding-size", "6"]) == 0
    plain = json.loads((tmp_path / "sd3" / sd_card.CONFIG_NAME).read_text())["threshold"]
    assert plain["score"] == pytest.approx(75.0) and plain["gallery_size"] is None
    assert plain["from"].startswith("1:1 verification")


def test_cli_errors_are_one_line_naming_the_file(tmp_path, capsys):
    kmodel = fake_kmodel(tmp_path / "m.kmodel")
    ident_json = _ident_json(tmp_path / "ident.json")
    base = ["board-files", "--out", str(tmp_path / "sd"), "--kmodel", str(kmodel), "--embedding-size", "6"]
    assert main(base + ["--ident-eval", str(ident_json)]) == 2
    one_line_error(capsys, "board-files", str(ident_json), "--gallery or --gallery-size")
    assert main(base) == 2
    one_line_error(capsys, "board-files", "--eval", "--ident-eval")
    assert main(base + ["--ident-eval", str(tmp_path / "missing.json"), "--gallery-size", "3"]) == 2
    one_line_error(capsys, "board-files", str(tmp_path / "missing.json"), "evaluate --identification --json")
    verification = tmp_path / "eval.json"
    verification.write_text(json.dumps({"best_threshold": 1.0}))
    assert main(base + ["--ident-eval", str(verification), "--gallery-size", "3"]) == 2
    one_line_error(capsys, "board-files", str(verification), "not `mfk210 evaluate --identification --json`")
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert main(base + ["--ident-eval", str(broken), "--gallery-size", "3"]) == 2
    one_line_error(capsys, "board-files", str(broken))
    assert main(base + ["--ident-eval", str(ident_json), "--gallery-size", "3", "--eval-set", "other"]) == 2
    one_line_error(capsys, "board-files", str(ident_json), "no model 'other'", "m.kmodel")
    assert main(["evaluate", "--identification", "--model", "m.keras"]) == 2
    one_line_error(capsys, "evaluate", "--folder")
    assert main(["evaluate", "--identification", "--model", "m.keras", "--folder", str(tmp_path / "none")]) == 2
    one_line_error(capsys, "evaluate", str(tmp_path / "none"))
    assert main(["evaluate", "--identification", "--model", "m.keras", "--folder", str(tmp_path),
                 "--enroll-photos", "0"]) == 2
    one_line_error(capsys, "evaluate", "enroll_photos")


def test_evaluate_identification_writes_the_table_det_png_and_json(tmp_path, people, capsys):
    out, js = tmp_path / "report", tmp_path / "ident.json"
    assert main(["evaluate", "--identification", "--folder", str(people["faces"]), "--aligned", "--model",
                 str(people["model"]), "--enroll-photos", "2", "--gallery-size", "7", "--out", str(out),
                 "--json", str(js)]) == 0
    printed = capsys.readouterr().out
    assert "FNIR @FPIR 1%" in printed and "| 7 |" in printed
    assert (out / "det_identification.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Open-set identification" in (out / "identification.md").read_text()
    data = json.loads(js.read_text())
    r = data["results"][str(people["model"])]
    # 2 people enrolled per fold with 2 photos each; 2 x 2 others are mated probes, 2 x 4 strangers; two folds
    assert (r["enrolled_people"], r["mated_probes"], r["nonmated_probes"]) == ([2, 2], 8, 16)
    assert r["impostor_count"] == 2 * (4 * 1 + 8 * 2)
    assert set(r["by_gallery_size"]) >= {"1", "7", "1000"}
    for f in ("0.01", "0.1"):
        scores = [r["by_gallery_size"][n][f]["score"] for n in ("1", "7", "1000")]
        assert scores == sorted(scores)  # a larger gallery never needs a lower threshold
    threshold = ident.threshold_from_identification(js, 7, 0.1)
    assert threshold["score"] == pytest.approx(r["by_gallery_size"]["7"]["0.1"]["score"])


def test_demo_report_shows_the_open_set_figures_and_the_board_threshold(tmp_path):
    from mobilefacenet_k210.demo import report as demo_report

    result = ident.open_set(*_hand_built(), enroll_photos=1, fpirs=(0.01, 0.1), gallery_sizes=(1, 2))
    threshold = ident.threshold_for_gallery(np.array(result["impostor_tail"]), result["impostor_count"], 2, 0.01)
    section = "\n".join(demo_report.open_set_section(tmp_path, {"table": ident.table({"m.kmodel": result}),
                                                         "results": {"m.kmodel": result}},
                                              {**threshold, "from": "open-set identification",
                                               "gallery_mode": result["gallery_mode"]}))
    assert "| m.kmodel | 87.5% | 62.5% (85.7) | 12.5% (50.0) |" in section  # rank-1 7/8, FNIR 5/8 and 1/8
    assert threshold["limited"]  # 0.5% per comparison is finer than 1 in 32
    assert (f"score > {threshold['score']:.1f} (open-set identification, FPIR 1% for a gallery of 2 people, "
            "gallery: max over each person's photos; the highest impostor score seen") in section
    assert "Gallery: max over each person's photos, as the board's gallery holds them" in section
    assert "det_identification.png" in section


def test_identify_answers_with_the_open_set_threshold_the_board_files_carry(tmp_path, people, capsys):
    """`identify --threshold-from IDENT.json` uses the threshold board-files puts on the board, the same way."""
    from mobilefacenet_k210.board.gallery import identify

    model, faces = str(people["model"]), people["faces"]
    ident_json, gallery = tmp_path / "ident.json", tmp_path / "gallery.json"
    assert main(["evaluate", "--identification", "--folder", str(faces), "--aligned", "--model", model,
                 "--enroll-photos", "2", "--json", str(ident_json)]) == 0
    enrolled = tmp_path / "enrolled"
    for person in ("s1", "s2", "s3"):
        (enrolled / person).mkdir(parents=True)
        (enrolled / person / "1.png").write_bytes((faces / person / "1.png").read_bytes())
    assert main(["enroll", str(enrolled), "--aligned", "--model", model, "--out", str(gallery)]) == 0
    assert main(["board-files", "--out", str(tmp_path / "sd"), "--kmodel", str(fake_kmodel(tmp_path / "m.kmodel")),
                 "--embedding-size", "16", "--ident-eval", str(ident_json), "--fpir", "0.1",
                 "--gallery-size", "3"]) == 0  # the gallery's size; its model is not this stand-in kmodel
    on_board = json.loads((tmp_path / "sd" / sd_card.CONFIG_NAME).read_text())["threshold"]
    assert on_board["gallery_size"] == 3 and on_board["from"] == "open-set identification"
    probes = sorted(str(p) for p in faces.glob("*/[234].png"))
    capsys.readouterr()
    assert main(["identify", *probes, "--gallery", str(gallery), "--model", model, "--aligned",
                 "--threshold-from", str(ident_json), "--fpir", "0.1"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    results = identify(probes, gallery, model, on_board["score"], aligned=True)
    assert [r["name"] for r in results] == [line.split(": ")[1].split(" score ")[0].split(",")[0] for line in printed]
    assert all(f"{on_board['score']:.1f}" in line for line in printed)
    matched = [r for r in results if r["name"] != "unknown"]
    assert all(r["score"] > on_board["score"] for r in matched)
    assert all(r["score"] <= on_board["score"] for r in results if r not in matched)
    # a gallery of another mode than the one measured is refused, as board-files refuses it
    assert main(["enroll", str(enrolled), "--aligned", "--model", model, "--out", str(tmp_path / "mean.json"),
                 "--gallery-mode", "mean"]) == 0
    capsys.readouterr()
    assert main(["identify", probes[0], "--gallery", str(tmp_path / "mean.json"), "--model", model, "--aligned",
                 "--threshold-from", str(ident_json)]) == 2
    one_line_error(capsys, "identify", str(ident_json), "'max' gallery", "--gallery-mode mean")
