"""InsightFace's training sets as they are downloaded: ``train.rec`` + ``train.idx`` + ``property`` and the
verification ``.bin`` files beside them (CASIA-WebFace, MS1M-ArcFace, Glint360K, ...), read without mxnet.

:func:`scan` reads every record's header once (:mod:`.recordio`) and groups the photos by class.
Two layouts exist and both are read:

* InsightFace's ``rec_builder``: key 0 is a header whose two labels are (first identity-record key,
  end key); keys 1.. are the photos; then one empty record per identity holding its [first, end)
  photo keys;
* no header (a plain ``im2rec``-style set, keys from 0 or 1): every record is a photo.

Either way a photo's class is the label of its own header (a number, or an array whose first
element is the class), as arcface_torch reads it. The key-0 ranges are float32 and so exact only
below 2^24 keys (Glint360K has ~17M photos): they are checked against ``train.idx`` and the photos'
classes, and a disagreement is reported as a note, never used. ``property`` (``classes,112,112``)
is checked against what was read.
"""
import dataclasses
import heapq
import math
import struct
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from mobilefacenet_k210.data.recordio import DamagedRecord, RecordFile, RecordIOError, read_idx, unpack
from mobilefacenet_k210.preprocessing import INPUT_SIZE

REC_FILE, IDX_FILE, PROPERTY_FILE = "train.rec", "train.idx", "property"
FLOAT32_EXACT = 1 << 24  # float32 holds every integer below this, and not all above
SIZE_CHECKED = 8  # photos whose image size is checked before the build starts
INSIGHTFACE, NO_HEADER = "insightface (key-0 header, identity records)", "no header (class in each photo)"


def locate(src: Union[str, Path]) -> Optional[Tuple[Path, Path]]:
    """``(rec, idx)`` when ``src`` is a ``.rec`` file or a folder holding ``train.rec``, else None."""
    src = Path(src)
    if src.is_file() and src.suffix.lower() == ".rec":
        return src, src.with_suffix(".idx")
    if src.is_dir() and (src / REC_FILE).is_file():
        return src / REC_FILE, src / IDX_FILE
    return None


def read_property(path: Union[str, Path]) -> List[int]:
    """``num_classes,height,width`` of an InsightFace property file."""
    text = Path(path).read_text(encoding="utf-8").strip()
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3:
        raise RecordIOError(f"{path}: expected 'num_classes,112,112', got {text[:60]!r}")
    return values


def image_size(payload: bytes) -> Optional[Tuple[int, int, int]]:
    """(width, height, channels) from a JPEG's frame header or a PNG's IHDR, without decoding; None when
    the payload is neither or its header is damaged."""
    if payload[:8] == b"\x89PNG\r\n\x1a\n" and len(payload) >= 26:
        width, height = struct.unpack_from(">II", payload, 16)
        return width, height, {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(payload[25], 0)
    if payload[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(payload):
        if payload[pos] != 0xFF:
            return None
        marker = payload[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = struct.unpack_from(">H", payload, pos + 2)[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start-of-frame
            if pos + 10 > len(payload):
                return None
            height, width = struct.unpack_from(">HH", payload, pos + 5)
            return width, height, payload[pos + 9]
        if marker == 0xDA:  # start of scan before any frame header
            return None
        pos += 2 + length
    return None


def passes_through(payload: bytes) -> bool:
    """A JPEG that goes into the shards as it is: an aligned-size frame of 1 or 3 channels, ending in its
    end-of-image marker (a cut JPEG inside a whole record is decoded instead, and rejected if it fails)."""
    return (payload[-2:] == b"\xff\xd9" and payload[:2] == b"\xff\xd8"
            and image_size(payload) in ((INPUT_SIZE, INPUT_SIZE, 1), (INPUT_SIZE, INPUT_SIZE, 3)))


@dataclasses.dataclass
class RecordSet:
    """What :func:`scan` found: the photos of each class and how the set is laid out."""

    rec: Path
    idx: Path
    photos: Dict[int, List[Tuple[int, int]]]  # class id -> [(key, byte offset)] in key order
    rejected: List[Tuple[str, str]]  # (where, why): damaged records, stray records, bad .idx lines
    layout: str
    label_kinds: List[str]  # "number" and/or "array": how the photos carry their class
    keys: int
    notes: List[str] = dataclasses.field(default_factory=list)
    property: Optional[List[int]] = None

    def source(self, key: int) -> str:
        """How a record is named in the shards and in ``rejected.csv``: ``train.rec#KEY``."""
        return f"{self.rec.name}#{key}"

    def verification(self) -> Dict[str, str]:
        """The ``.bin`` verification sets beside the ``.rec``, by name (``lfw``, ``cfp_fp``, ``agedb_30``...)."""
        return {p.stem: str(p.resolve()) for p in sorted(self.rec.parent.glob("*.bin")) if p.is_file()}

    def info(self) -> Dict[str, Any]:
        """The JSON summary the build reports and keeps in ``metadata.json`` (``source``)."""
        bins = self.verification()
        return {"kind": "recordio", "rec": str(self.rec.resolve()), "idx": str(self.idx.resolve()),
                "layout": self.layout, "labels": self.label_kinds, "keys": self.keys,
                "photos": sum(len(v) for v in self.photos.values()), "classes": len(self.photos),
                "property": self.property, "notes": self.notes, "verification": bins,
                "train_with": " ".join(f"--set verification.{name}={path}" for name, path in bins.items())}


def scan(src: Union[str, Path]) -> RecordSet:
    """Read the headers of every record of an InsightFace set (see the module's docstring).

    Damaged records (offset past the end, no magic, cut short), empty records that are no identity
    record and labels that are no class id are listed in ``rejected``; the rest is built. Stops with
    :class:`RecordIOError` (one line naming the file) when there is no index, no readable photo, photos
    that are not 112x112 crops, or a ``property`` that contradicts the photos.
    """
    located = locate(src)
    if located is None:
        raise RecordIOError(f"{src}: neither a .rec file nor a folder holding {REC_FILE}")
    rec, idx = located
    if not idx.is_file():
        raise RecordIOError(f"{idx}: missing; the builder needs the index mxnet writes beside {rec.name} "
                            f"(InsightFace ships {IDX_FILE} with every set: download it again)")
    entries, rejected = read_idx(idx)
    if not entries:
        raise RecordIOError(f"{idx}: lists no record (expected KEY<TAB>OFFSET lines)")
    out = RecordSet(rec, idx, {}, rejected, NO_HEADER, [], len(entries))
    header: Optional[Tuple[float, ...]] = None
    identities: List[Tuple[int, float, float]] = []
    kinds = set()
    with RecordFile(rec) as f:
        for key in sorted(entries):
            try:
                head, payload = f.head(entries[key])
            except DamagedRecord as exc:
                out.rejected.append((out.source(key), f"{exc} (offset {entries[key]} from {idx.name})"))
                continue
            if payload == 0:
                if key == 0 and head.flag >= 2:
                    header = head.labels
                elif head.flag == 2:
                    identities.append((key, *head.labels))
                else:
                    out.rejected.append((out.source(key), "empty record: no image, and not an identity record"))
                continue
            cls = head.label
            if not (math.isfinite(cls) and cls == int(cls) and 0 <= cls < FLOAT32_EXACT):
                out.rejected.append((out.source(key), f"label {cls!r} is not a class id (an integer 0..2^24-1)"))
                continue
            kinds.add("array" if head.flag else "number")
            out.photos.setdefault(int(cls), []).append((key, entries[key]))
        out.label_kinds = sorted(kinds)
        if not out.photos:
            first = out.rejected[0] if out.rejected else ("", "no photo record")
            raise RecordIOError(f"{rec}: no readable photo among {len(entries):,} records of {idx.name} "
                                f"(first problem: {first[0]}: {first[1]}); download the set again")
        _check_sizes(f, out)
    if header is not None:
        out.layout = INSIGHTFACE
        out.notes.extend(_header_notes(out, header, identities, max(entries)))
    _check_property(out)
    return out


def _check_sizes(f: RecordFile, out: RecordSet) -> None:
    """Refuse a set whose first photos are not aligned 112x112 crops (one line naming the key)."""
    firsts = heapq.nsmallest(SIZE_CHECKED, (k for keys in out.photos.values() for k in keys))
    for key, offset in firsts:
        try:
            size = image_size(unpack(f.read(offset))[1])
        except DamagedRecord:
            continue  # rejected by the worker with its reason
        if size is not None and size[:2] != (INPUT_SIZE, INPUT_SIZE):
            raise RecordIOError(f"{f.path}: key {key} is a {size[0]}x{size[1]} image; the builder reads InsightFace's "
                                f"aligned {INPUT_SIZE}x{INPUT_SIZE} sets only: build the raw photos from a folder "
                                f"of identity folders instead (they are then detected and aligned)")


def _header_notes(out: RecordSet, header: Tuple[float, ...], identities: List[Tuple[int, float, float]],
                  last_key: int) -> List[str]:
    """Disagreements of key 0's ranges and the identity records with ``train.idx`` and the photos' own
    classes (the classes used), each said once."""
    first, end = header[0], header[1]
    problems = []
    if last_key + 1 != end or not identities or min(k for k, *_ in identities) != first:
        problems.append(f"key 0 says the identity records are keys {first:.0f}..{end - 1:.0f}, {out.idx.name} "
                        f"ends at key {last_key} and its identity records start at "
                        f"{min((k for k, *_ in identities), default='none')}")
    ranges = {(s, e) for _, s, e in identities}
    photos_keys = [keys for keys in out.photos.values()]
    off = sum(1 for keys in photos_keys if (float(keys[0][0]), float(keys[-1][0] + 1)) not in ranges
              or keys[-1][0] - keys[0][0] + 1 != len(keys))
    if off:
        problems.append(f"{off} of {len(photos_keys)} classes do not fill exactly one identity record's range")
    if not problems:
        return []
    why = (f"float32 labels are exact only below 2^24 = {FLOAT32_EXACT:,}, and this set has {last_key + 1:,} keys"
           if last_key + 1 > FLOAT32_EXACT else "the header or the identity records are damaged")
    return [f"{out.rec.name}: {'; '.join(problems)} ({why}); the classes were read from each photo's own "
            f"header, which is exact, and the ranges ignored"]


def _check_property(out: RecordSet) -> None:
    """``property`` against the photos: its image size must be 112x112, its class count the highest
    class + 1 (a count the damaged records may explain is a note; otherwise the build stops)."""
    path = out.rec.parent / PROPERTY_FILE
    if not path.is_file():
        out.notes.append(f"no {PROPERTY_FILE} file beside {out.rec.name}: nothing to check the classes against")
        return
    classes, height, width = out.property = read_property(path)
    if (height, width) != (INPUT_SIZE, INPUT_SIZE):
        raise RecordIOError(f"{path}: says {width}x{height} photos; the builder reads aligned "
                            f"{INPUT_SIZE}x{INPUT_SIZE} sets only")
    found = max(out.photos) + 1
    if classes == found:
        return
    said = f"{path}: says {classes:,} classes, the photos of {out.rec.name} are labelled 0..{found - 1:,}"
    if out.rejected:
        out.notes.append(f"{said}; {len(out.rejected)} damaged records (rejected.csv) may explain it")
        return
    raise RecordIOError(f"{said} and no record is damaged: the property file belongs to another set; "
                        f"correct or delete it")
