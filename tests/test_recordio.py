"""InsightFace's RecordIO sets read without mxnet, checked against files that real mxnet 1.9.1 wrote.

The fixture (tests/fixtures/recordio, made by tools/make_recordio_fixture.py in a throwaway mxnet venv)
holds real ORL faces, tinted per class, in three layouts, with what mxnet itself read back from them
(expected.json: class, payload sha256 and mxnet's RGB means per key).
"""
import hashlib
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from mobilefacenet_k210.data import insightface_set, recordio
from mobilefacenet_k210.data.insightface_set import INSIGHTFACE, NO_HEADER

FIXTURE = Path(__file__).parent / "fixtures" / "recordio"
LAYOUTS = {"insightface": (INSIGHTFACE, ["number"]), "noheader": (NO_HEADER, ["number"]),
           "arraylabels": (NO_HEADER, ["array"])}


def _expected(name: str) -> dict:
    return json.loads((FIXTURE / name / "expected.json").read_text())


def _photos(expected: dict) -> dict:
    """key -> class of mxnet's photo records."""
    return {int(k): v["class"] for k, v in expected["keys"].items() if v["kind"] == "photo"}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_photo_of_mxnets_sets_read_once_with_its_class_and_bytes(name):
    expected = _expected(name)
    found = insightface_set.scan(FIXTURE / name)
    assert (found.layout, found.label_kinds) == LAYOUTS[name]
    assert found.rejected == [] and found.notes == []
    keys = [k for keys in found.photos.values() for k, _ in keys]
    assert sorted(keys) == sorted(set(keys)) == sorted(_photos(expected))
    assert {k: c for c, keys in found.photos.items() for k, _ in keys} == _photos(expected)
    with recordio.RecordFile(found.rec) as f:
        for cls, keys in found.photos.items():
            for key, offset in keys:
                header, payload = recordio.unpack(f.read(offset))
                assert header.label == cls
                assert hashlib.sha256(payload).hexdigest() == expected["keys"][str(key)]["sha256"]
    assert found.property == [int((FIXTURE / name / "property").read_text().split(",")[0]), 112, 112]


def test_split_record_is_joined_and_our_writer_writes_mxnets_bytes(tmp_path):
    """Key 2 holds the magic twice: mxnet stored it in 3 chunks (flags 1, 2, 3) and the reader joins them;
    rewriting mxnet's records in its order with our writer gives mxnet's .rec and .idx byte for byte."""
    src = FIXTURE / "insightface"
    entries, bad = recordio.read_idx(src / "train.idx")
    assert bad == []
    data = (src / "train.rec").read_bytes()
    split_key = _expected("insightface")["split_key"]
    flags, pos = [], entries[split_key]
    while not flags or flags[-1] not in (recordio.WHOLE, recordio.LAST):
        magic, lrec = struct.unpack_from("<II", data, pos)
        flags.append(lrec >> 29)
        pos += 8 + ((lrec & (2**29 - 1)) + 3) // 4 * 4
    assert flags == [recordio.FIRST, recordio.MIDDLE, recordio.LAST]
    order = [int(line.split("\t")[0]) for line in (src / "train.idx").read_text().splitlines()]
    with recordio.RecordFile(src / "train.rec") as f:
        records = [(key, f.read(entries[key])) for key in order]
        assert recordio.unpack(f.read(entries[split_key]))[1].count(struct.pack("<I", recordio.MAGIC)) == 2
        assert f.head(entries[split_key])[1] == len(recordio.unpack(records[order.index(split_key)][1])[1])
    assert recordio.write_recordio(tmp_path / "t.rec", tmp_path / "t.idx", records) == len(records)
    assert (tmp_path / "t.rec").read_bytes() == data
    assert (tmp_path / "t.idx").read_text() == (src / "train.idx").read_text()


def _copy(name: str, dest: Path) -> Path:
    shutil.copytree(FIXTURE / name, dest)
    return dest


def test_truncated_rec_and_bad_idx_lines_are_named_with_their_keys(tmp_path):
    """A .rec cut inside key 7 loses keys 7.. (the header and identity records at its end too); an .idx
    line past the end, one pointing at no magic, one that is no KEY<TAB>OFFSET: each rejected by key."""
    cut = _copy("insightface", tmp_path / "cut")
    entries, _ = recordio.read_idx(cut / "train.idx")
    data = (cut / "train.rec").read_bytes()
    (cut / "train.rec").write_bytes(data[:entries[7] + 100])
    found = insightface_set.scan(cut)
    assert found.layout == NO_HEADER  # key 0 was lost with the end of the file
    assert sorted(k for keys in found.photos.values() for k, _ in keys) == list(range(1, 7))
    rejected = dict(found.rejected)
    assert set(rejected) == {f"train.rec#{k}" for k in [0, *range(7, 17)]}
    assert "cut short" in rejected["train.rec#7"] and "past the end" in rejected["train.rec#8"]
    assert any("says 4 classes" in n and "damaged records" in n for n in found.notes)

    bad = _copy("insightface", tmp_path / "badidx")
    lines = (bad / "train.idx").read_text().splitlines()
    lines[2] = f"3\t{len(data) + 400}"  # past the end
    lines[4] = f"5\t{entries[5] + 4}"  # inside a record: no magic there
    lines.insert(6, "seven\teight")
    (bad / "train.idx").write_text("\n".join(lines) + "\n")
    found = insightface_set.scan(bad)
    rejected = dict(found.rejected)
    assert "past the end" in rejected["train.rec#3"] and "no RecordIO magic" in rejected["train.rec#5"]
    assert "not a KEY<TAB>OFFSET line" in rejected["train.idx:7"]
    assert sorted(k for keys in found.photos.values() for k, _ in keys) == [1, 2, 4, *range(6, 13)]
    assert found.layout == INSIGHTFACE and any("do not fill exactly one identity" in n for n in found.notes)


def test_key0_ranges_past_float32_are_reported_and_the_photos_own_classes_used(tmp_path):
    """Keys above 2^24 (Glint360K has ~17M photos): key 0 and the identity records store their ranges as
    float32, which rounds odd keys there; the scan says so and reads each photo's class from its header."""
    big = insightface_set.FLOAT32_EXACT
    with recordio.RecordFile(FIXTURE / "insightface" / "train.rec") as f:
        jpeg = recordio.unpack(f.read(0))[1]
    photos = {1: 0, 2: 0, big + 1: 1, big + 3: 1}  # key -> class
    first_id = big + 5
    items = [(0, recordio.pack([first_id, first_id + 2], b"", 0, 1))]
    items += [(k, recordio.pack(c, jpeg, k)) for k, c in photos.items()]
    items += [(first_id, recordio.pack([1, 3], b"")), (first_id + 1, recordio.pack([big + 1, big + 4], b""))]
    recordio.write_recordio(tmp_path / "train.rec", tmp_path / "train.idx", items)
    found = insightface_set.scan(tmp_path)
    assert {c: [k for k, _ in keys] for c, keys in found.photos.items()} == {0: [1, 2], 1: [big + 1, big + 3]}
    assert found.rejected == [] and found.layout == INSIGHTFACE
    assert len(found.notes) == 2 and "exact only below 2^24" in found.notes[0]
    assert "no property file" in found.notes[1]


def test_sets_that_cannot_be_built_stop_in_one_line(tmp_path, capsys):
    """Photos of another size, a missing .idx, a property of another set: the CLI prints one line naming
    the file (and the key) and exits 2."""
    from mobilefacenet_k210.cli import main

    no_idx = _copy("noheader", tmp_path / "noidx")
    (no_idx / "train.idx").unlink()
    other = _copy("noheader", tmp_path / "other")
    (other / "property").write_text("9,112,112\n")
    cases = [(FIXTURE / "wrongsize", "key 1 is a 96x96 image"), (no_idx, "train.idx: missing"),
             (other / "train.rec", "says 9 classes")]
    for src, message in cases:
        assert main(["build-tfrecords", str(src), str(tmp_path / "out"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out" / "metadata.json").exists()


def test_image_size_reads_jpeg_and_png_headers_without_decoding():
    import cv2

    image = np.zeros((40, 30, 3), np.uint8)
    assert insightface_set.image_size(cv2.imencode(".jpg", image)[1].tobytes()) == (30, 40, 3)
    assert insightface_set.image_size(cv2.imencode(".png", image)[1].tobytes()) == (30, 40, 3)
    assert insightface_set.image_size(cv2.imencode(".jpg", image[:, :, 0])[1].tobytes()) == (30, 40, 1)
    assert insightface_set.image_size(b"\xff\xd8\xff") is None and insightface_set.image_size(b"GIF89a") is None


def test_each_record_is_kept_by_reference_decoded_or_rejected_with_its_reason(tmp_path):
    """A 112x112 JPEG is kept as a reference into the .rec, a PNG is decoded, a cut JPEG, a 96x96 JPEG and
    bytes that are no image are rejected; no photo stops the others."""
    import cv2

    from mobilefacenet_k210.data import stages

    with recordio.RecordFile(FIXTURE / "insightface" / "train.rec") as f:
        jpeg = recordio.unpack(f.read(0))[1]
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    payloads = [jpeg, cv2.imencode(".png", image)[1].tobytes(), jpeg[:len(jpeg) // 2],
                cv2.imencode(".jpg", cv2.resize(image, (96, 96)))[1].tobytes(), b"not an image"]
    recordio.write_recordio(tmp_path / "train.rec", tmp_path / "train.idx",
                            [(k, recordio.pack(0, p)) for k, p in enumerate(payloads)])
    offsets, _ = recordio.read_idx(tmp_path / "train.idx")
    photos = [stages.Photo(str(tmp_path / "train.rec"), f"train.rec#{k}", True, offsets[k]) for k in range(5)]
    results = stages.align_photos(photos, None)
    assert [r.source for r in results] == [p.source for p in photos]
    assert results[0].jpeg == recordio.RecordRef(photos[0].path, offsets[0]) and results[0].crop is None
    assert recordio.read_payloads([results[0].jpeg]) == [jpeg]
    assert results[1].jpeg is None and results[1].crop.shape == (112, 112, 3)
    assert np.array_equal(results[1].crop, results[0].image())  # PNG of the same pixels, both RGB
    assert "cut short" in results[2].reason and "96x96" in results[3].reason and "not an image" in results[4].reason
    assert [r.face for r in results] == [True, True, False, False, False]
