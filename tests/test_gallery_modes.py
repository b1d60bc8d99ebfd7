"""Gallery modes: "max" (one entry per enrolled photo, a person scored by its best entry, as the board script
does with several entries of one name) against "mean" (one normalized mean per person), in the open-set
protocol, in `enroll`/`identify`, and in `board-files --ident-eval`."""
import json
import math

import numpy as np
import pytest

from mobilefacenet_k210.board import gallery, sd_card
from mobilefacenet_k210.cli import main
from mobilefacenet_k210.evaluate import identification as ident
from conftest import fake_kmodel, one_line_error

DIMS = 10


def _unit(**parts: float) -> np.ndarray:
    v = np.zeros(DIMS)
    for name, w in parts.items():
        v[int(name[1:])] = w
    assert abs(np.linalg.norm(v) - 1.0) < 1e-9
    return v


# Four people, photos 0 and 1 enrolled, photo 2 the probe. Fold 1 enrolls A, B (strangers C, D); fold 2
# enrolls C, D (strangers A, B). Board score = 50 + 50 * dot; a mean of two orthogonal photos is their sum / sqrt 2.
B_MEAN = np.array([1.2, 0, 0.8, 0.8]) / math.sqrt(2.72)  # (b0 + b1) normalized, on e0, e1, e2, e3
PHOTOS = {
    "A": [_unit(e0=1), _unit(e1=1), _unit(e0=0.8, e4=0.6)],
    "B": [_unit(e0=0.6, e2=0.8), _unit(e0=0.6, e3=0.8), _unit(e2=1)],
    "C": [_unit(e5=1), _unit(e6=1), _unit(e5=1)],
    "D": [_unit(e7=1), _unit(e8=1), _unit(e7=0.8, e1=0.6)],  # D's probe shares e1 with A's photo 1
}


def _set():
    features = np.stack([v for person in PHOTOS.values() for v in person])
    labels = [name for name, person in PHOTOS.items() for _ in person]
    order = [k for person in PHOTOS.values() for k in range(len(person))]
    return features, labels, order


def _score(dot: float) -> float:
    return 50 + 50 * dot


def test_max_and_mean_give_the_answers_worked_out_by_hand():
    by_max = ident.open_set(*_set(), enroll_photos=2, fpirs=(0.01, 0.1), gallery_sizes=(1, 2), gallery_mode="max")
    by_mean = ident.open_set(*_set(), enroll_photos=2, fpirs=(0.01, 0.1), gallery_sizes=(1, 2), gallery_mode="mean")
    assert (by_max["gallery_mode"], by_mean["gallery_mode"]) == ("max", "mean")
    for r in (by_max, by_mean):
        assert (r["enrolled_people"], r["mated_probes"], r["nonmated_probes"]) == ([2, 2], 4, 12)
    # max: A's probe scores 90 with A's photo 0 and 74 with B's photos: every probe is named right.
    # mean: it scores 50 + 50 * 0.8 / sqrt 2 = 78.3 with A but 50 + 50 * 0.8 * B_MEAN[0] = 79.1 with B.
    assert _score(0.8 * B_MEAN[0]) > _score(0.8 / math.sqrt(2))
    assert by_max["rank1"] == 1.0 and by_mean["rank1"] == 3 / 4
    # Strangers: all score 50 but D's probe against A: 50 + 50 * 0.6 = 80 (max), 50 + 50 * 0.6 / sqrt 2 (mean).
    # FPIR 10% of 12 lets one stranger above: threshold 50; FPIR 1% none: threshold = that stranger's score.
    assert by_max["at_fpir"]["0.1"] == {"threshold_score": pytest.approx(50.0), "fpir": 1 / 12, "fnir": 0.0}
    assert by_max["at_fpir"]["0.01"]["threshold_score"] == pytest.approx(80.0)
    assert (by_max["at_fpir"]["0.01"]["fpir"], by_max["at_fpir"]["0.01"]["fnir"]) == (0.0, 0.0)  # mated tops 90, 90, 100, 90
    assert by_mean["at_fpir"]["0.1"] == {"threshold_score": pytest.approx(50.0), "fpir": 1 / 12, "fnir": 1 / 4}
    assert by_mean["at_fpir"]["0.01"]["threshold_score"] == pytest.approx(_score(0.6 / math.sqrt(2)), abs=1e-4)
    # mated tops with mean: A 79.1 (wrong person), B 74.3, C 85.4, D 78.3; all above 71.2, A's is wrong
    assert (by_mean["at_fpir"]["0.01"]["fpir"], by_mean["at_fpir"]["0.01"]["fnir"]) == (0.0, 1 / 4)
    assert "max over each person's photos" in ident.table({"m": by_max})


def test_the_impostor_comparison_is_one_person_not_one_entry():
    r = ident.open_set(*_set(), enroll_photos=2, fpirs=(0.01, 0.1), gallery_sizes=(1, 2), gallery_mode="max")
    # per fold: 2 mated probes x 1 other person + 6 strangers x 2 people = 14, not 28 per-entry comparisons
    assert r["impostor_count"] == 28
    # above 50: D's probe against A (80, its best of A's two entries), A's probe against B (74, best of 0.48, 0.48)
    assert r["impostor_tail"][:3] == pytest.approx([80.0, 74.0, 50.0], abs=1e-4)
    # 5% for one person allows 1 of 28 comparisons above: the threshold is the second highest, 74
    assert ident.threshold_for_gallery(np.array(r["impostor_tail"]), r["impostor_count"], 1, 0.05)["score"] == \
        pytest.approx(74.0, abs=1e-4)
    names, best = ident.person_scores(np.array([[10.0, 30.0, 20.0]]), np.array(["p", "q", "p"]))
    assert names.tolist() == ["p", "q"] and best.tolist() == [[20.0, 30.0]]


def test_enroll_max_writes_one_entry_per_photo_and_identify_names_the_person(tmp_path, people, capsys):
    from mobilefacenet_k210.runtime.backends import load_backend
    from mobilefacenet_k210.evaluate.metrics import l2_normalize

    out = tmp_path / "g.json"
    assert main(["enroll", str(people["faces"]), "--model", str(people["model"]), "--out", str(out), "--aligned",
                 "--gallery-mode", "max"]) == 0
    assert "wrote " + str(out) + ": 4 people in 16 entries (gallery mode max)" in capsys.readouterr().out
    saved = gallery.load_gallery(out)
    assert saved["mode"] == "max"
    assert [p["name"] for p in saved["people"]] == [n for n in ("s1", "s2", "s3", "s4") for _ in range(4)]
    photos = [people["faces"] / p["name"] / f"{k}.png" for p, k in zip(saved["people"], [1, 2, 3, 4] * 4)]
    assert [p["sources"] for p in saved["people"]] == [[str(p)] for p in photos]
    crops, _, _ = gallery.load_crops(photos, aligned=True)
    own = l2_normalize(load_backend(people["model"]).embed(crops, batch_size=16, flip=False))
    np.testing.assert_allclose(np.array([p["feature"] for p in saved["people"]]), own, atol=1e-6)

    # each person's score is the best of its 4 entries (computed here from the JSON), the name that person's
    probes = [photos[1], photos[6], photos[11], photos[12]]
    found = gallery.identify(probes, out, people["model"], aligned=True)
    features = np.array([p["feature"] for p in saved["people"]])
    for result, feature in zip(found, own[[1, 6, 11, 12]]):
        per_person = {n: max(50 + 50 * float(np.dot(feature, p["feature"])) for p in saved["people"] if p["name"] == n)
                      for n in ("s1", "s2", "s3", "s4")}
        assert result["best"] == max(per_person, key=per_person.get)
        assert result["score"] == pytest.approx(max(per_person.values()), abs=1e-3)
    assert [r["best"] for r in found] == ["s1", "s2", "s3", "s4"]  # each probe is one of its own entries
    assert all(r["score"] == pytest.approx(100.0, abs=1e-3) for r in found)
    assert features.shape == (16, 16)

    old = json.loads(out.read_text())
    del old["mode"]
    out.write_text(json.dumps(old))
    assert gallery.load_gallery(out)["mode"] == "mean"  # written before modes existed
    assert main(["enroll", str(people["faces"]), "--model", str(people["model"]), "--out", str(tmp_path / "m.json"),
                 "--aligned", "--gallery-mode", "mean"]) == 0
    assert [p["name"] for p in gallery.load_gallery(tmp_path / "m.json")["people"]] == ["s1", "s2", "s3", "s4"]


def test_wrong_gallery_mode_is_one_line(tmp_path, capsys):
    assert main(["evaluate", "--identification", "--model", "m.keras", "--folder", str(tmp_path),
                 "--gallery-mode", "median"]) == 2
    one_line_error(capsys, "evaluate", "gallery_mode 'median'", "max, mean")
    assert main(["enroll", str(tmp_path), "--model", "m.keras", "--out", str(tmp_path / "g.json"),
                 "--gallery-mode", "median"]) == 2
    one_line_error(capsys, "enroll", "--gallery-mode 'median'", "max, mean")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "mfk210-gallery", "mode": "median", "people": [{"name": "a", "feature": [1]}]}))
    with pytest.raises(gallery.GalleryError, match="gallery mode 'median'"):
        gallery.load_gallery(bad)


def _ident_json(path, mode):
    from mobilefacenet_k210 import atomic

    result = ident.open_set(*_set(), enroll_photos=2, fpirs=(0.01, 0.1), gallery_sizes=(1, 2), gallery_mode=mode)
    atomic.write_json(path, {"format": ident.FORMAT, "version": 1, "results": {"m.kmodel": result}})
    return path


def _gallery(path, mode, names):
    entries = [{"name": n, "feature": [1.0 if j == i else 0.0 for j in range(DIMS)]} for i, n in enumerate(names)]
    path.write_text(json.dumps({"format": "mfk210-gallery", "version": 1, "mode": mode, "people": entries}))
    return path


def test_board_files_refuses_a_threshold_of_the_other_mode_and_records_the_mode(tmp_path, capsys):
    kmodel = fake_kmodel(tmp_path / "m.kmodel")
    by_max, by_mean = _ident_json(tmp_path / "max.json", "max"), _ident_json(tmp_path / "mean.json", "mean")
    g_max = _gallery(tmp_path / "g_max.json", "max", ["p", "p", "q", "q"])
    assert main(["board-files", "--out", str(tmp_path / "sd"), "--kmodel", str(kmodel), "--ident-eval", str(by_max),
                 "--fpir", "0.1", "--gallery", str(g_max)]) == 0
    threshold = json.loads((tmp_path / "sd" / sd_card.CONFIG_NAME).read_text())["threshold"]
    assert (threshold["gallery_mode"], threshold["gallery_size"]) == ("max", 2)  # 2 people in 4 entries
    assert "gallery mode max" in capsys.readouterr().out
    assert main(["board-files", "--out", str(tmp_path / "sd2"), "--kmodel", str(kmodel), "--ident-eval",
                 str(by_mean), "--gallery", str(g_max)]) == 2
    one_line_error(capsys, "board-files", str(by_mean), str(g_max), "'mean' gallery", "'max' gallery",
                    "--gallery-mode max")
    assert not (tmp_path / "sd2").exists()
    old = _gallery(tmp_path / "old.json", "mean", ["p", "q"])
    data = json.loads(old.read_text())
    del data["mode"]  # a gallery from before modes: "mean"
    old.write_text(json.dumps(data))
    assert main(["board-files", "--out", str(tmp_path / "sd3"), "--kmodel", str(kmodel), "--ident-eval",
                 str(by_max), "--gallery", str(old)]) == 2
    one_line_error(capsys, "board-files", str(by_max), str(old), "'max' gallery", "--gallery-mode mean")
