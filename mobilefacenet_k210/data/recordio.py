"""MXNet's RecordIO format (dmlc-core ``recordio.h``, mxnet ``recordio.py``), read and written with the
standard library only: InsightFace ships every training set in it and mxnet is retired.

A ``.rec`` file is a sequence of chunks: the magic ``0xCED7230A`` (little-endian uint32), a uint32
``lrec`` whose top 3 bits are a continuation flag and whose low 29 bits are the chunk's length, the
data, then zero padding to 4 bytes. A record whose data holds the magic at a 4-byte boundary is split
there (the magic itself is not stored): its chunks carry flags 1 (first), 2 (middle) and 3 (last), and
reading joins them with the magic between; a whole record has flag 0. The ``.idx`` beside it lists
``key<TAB>byte offset``, one line per record. A record of an image set starts with mxnet's
``IRHeader`` (``<IfQQ``: flag, label, id, id2; 24 bytes); when flag > 0, that many float32 labels follow
and the label field is unused; the payload (the encoded image) comes after.

Read back from files that mxnet 1.9.1 wrote (``tests/fixtures/recordio``); :func:`write_recordio`
writes what mxnet reads (``make bench`` uses it to scale a set up).
"""
import mmap
import os
import struct
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, NamedTuple, Sequence, Tuple, Union

from mobilefacenet_k210 import atomic
from mobilefacenet_k210.errors import Mfk210Error

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_CHUNK = struct.Struct("<II")  # magic, lrec
_HEADER = struct.Struct("<IfQQ")  # IRHeader: flag, label, id, id2
HEADER_BYTES = _HEADER.size
_LENGTH_BITS = 29
_LENGTH_MASK = (1 << _LENGTH_BITS) - 1
WHOLE, FIRST, MIDDLE, LAST = 0, 1, 2, 3  # continuation flags of a chunk


class RecordIOError(Mfk210Error, ValueError):
    """A RecordIO set that cannot be read as a whole; the message names the file and what to do."""


class DamagedRecord(RecordIOError):
    """One record that cannot be read; the message says why (the caller names the file and the key)."""


class Header(NamedTuple):
    """mxnet's ``IRHeader`` with its labels as a tuple: ``(label,)`` when flag is 0, else the flag float32 labels."""

    flag: int
    labels: Tuple[float, ...]
    id: int
    id2: int

    @property
    def label(self) -> float:
        """The first label: the class of a photo in InsightFace's sets, scalar or array."""
        return self.labels[0]


def _pad4(n: int) -> int:
    return (n + 3) & ~3


def unpack(record: bytes) -> Tuple[Header, bytes]:
    """A record -> (header, payload); :class:`DamagedRecord` when it is shorter than its header says."""
    if len(record) < HEADER_BYTES:
        raise DamagedRecord(f"record of {len(record)} bytes, shorter than mxnet's {HEADER_BYTES}-byte header")
    flag, label, rid, rid2 = _HEADER.unpack_from(record)
    end = HEADER_BYTES + 4 * flag
    if len(record) < end:
        raise DamagedRecord(f"header announces {flag} labels but the record holds {len(record)} bytes")
    labels = struct.unpack_from(f"<{flag}f", record, HEADER_BYTES) if flag else (label,)
    return Header(flag, tuple(labels), rid, rid2), record[end:]


def pack(labels: Union[float, Sequence[float]], payload: bytes, rid: int = 0, rid2: int = 0) -> bytes:
    """Header and payload as mxnet's ``recordio.pack`` makes them: a number is the label field (flag 0),
    a sequence becomes flag float32 labels before the payload."""
    if isinstance(labels, (int, float)):
        return _HEADER.pack(0, float(labels), rid, rid2) + payload
    labels = [float(v) for v in labels]
    return _HEADER.pack(len(labels), 0.0, rid, rid2) + struct.pack(f"<{len(labels)}f", *labels) + payload


class RecordFile:
    """Random access to the records of a ``.rec`` file by byte offset (memory-mapped, read only)."""

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb")
        except OSError as exc:
            raise RecordIOError(f"{self.path}: cannot open the RecordIO file ({exc.strerror or exc})") from None
        self.size = os.fstat(self._file.fileno()).st_size
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if self.size else b""

    def close(self) -> None:
        """Unmap and close the file."""
        if isinstance(self._map, mmap.mmap):
            self._map.close()
        self._file.close()

    def __enter__(self) -> "RecordFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _chunk(self, pos: int) -> Tuple[int, int, int]:
        """(continuation flag, length, data start) of the chunk at ``pos``."""
        if pos < 0 or pos + _CHUNK.size > self.size:
            raise DamagedRecord(f"offset {pos} is past the end of the file ({self.size:,} bytes): "
                                f"the .rec is cut short or the .idx belongs to another file")
        magic, lrec = _CHUNK.unpack_from(self._map, pos)
        if magic != MAGIC:
            raise DamagedRecord(f"no RecordIO magic at offset {pos}: the .idx does not match the .rec")
        flag, length = lrec >> _LENGTH_BITS, lrec & _LENGTH_MASK
        if pos + _CHUNK.size + length > self.size:
            raise DamagedRecord(f"record at offset {pos} needs {length:,} bytes, the file ends "
                                f"{self.size - pos - _CHUNK.size:,} bytes later: the .rec is cut short")
        return flag, length, pos + _CHUNK.size

    def read(self, offset: int) -> bytes:
        """The record starting at ``offset``, its parts joined when the writer split it."""
        flag, length, start = self._chunk(offset)
        if flag == WHOLE:
            return self._map[start:start + length]
        if flag != FIRST:
            raise DamagedRecord(f"offset {offset} is the continuation (flag {flag}) of a split record, "
                                f"not the start of one: the .idx does not match the .rec")
        parts = [self._map[start:start + length]]
        while flag != LAST:
            flag, length, start = self._chunk(start + _pad4(length))
            if flag not in (MIDDLE, LAST):
                raise DamagedRecord(f"split record at offset {offset}: a part has flag {flag}, "
                                    f"expected {MIDDLE} or {LAST}")
            parts.append(self._map[start:start + length])
        return _MAGIC_BYTES.join(parts)

    def head(self, offset: int) -> Tuple[Header, int]:
        """The header and payload size of the record at ``offset``, reading only the header's bytes
        (the whole record when it is split)."""
        flag, length, start = self._chunk(offset)
        if flag != WHOLE or length < HEADER_BYTES:
            header, payload = unpack(self.read(offset))
            return header, len(payload)
        labels_end = HEADER_BYTES + 4 * _HEADER.unpack_from(self._map, start)[0]
        header, _ = unpack(self._map[start:start + min(length, labels_end)])
        return header, length - labels_end


class RecordRef(NamedTuple):
    """Where a record lies: its ``.rec`` file and byte offset (its ``.idx`` entry); the builder keeps this
    instead of a copy of a JPEG it passes through unchanged."""

    path: str
    offset: int


def read_payloads(refs: Sequence[RecordRef]) -> List[bytes]:
    """The payloads (the bytes after the header and labels) of the records ``refs`` point at, each file
    opened once; :class:`DamagedRecord` names the file and offset of one that cannot be read."""
    files: Dict[str, RecordFile] = {}
    try:
        out = []
        for ref in refs:
            if ref.path not in files:
                files[ref.path] = RecordFile(ref.path)
            try:
                out.append(unpack(files[ref.path].read(ref.offset))[1])
            except DamagedRecord as exc:
                raise DamagedRecord(f"{ref.path}: {exc}") from None
        return out
    finally:
        for f in files.values():
            f.close()


def read_idx(path: Union[str, Path]) -> Tuple[Dict[int, int], List[Tuple[str, str]]]:
    """``key -> byte offset`` from a ``.idx`` and the lines that are not ``KEY<TAB>OFFSET``, as
    ``(file:line, reason)``. A key listed twice keeps its last offset, as mxnet's reader does."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else f"not a text file (byte {exc.start})"
        raise RecordIOError(f"{path}: cannot read the RecordIO index ({why}); it must be the KEY<TAB>OFFSET "
                            f"text that mxnet writes beside the .rec") from None
    entries: Dict[int, int] = {}
    bad: List[Tuple[str, str]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            key, offset = (int(p) for p in parts) if len(parts) == 2 else (None, None)
        except ValueError:
            key = None
        if key is None or offset < 0:
            bad.append((f"{path.name}:{lineno}", f"not a KEY<TAB>OFFSET line: {line[:60]!r}"))
            continue
        if key in entries:
            bad.append((f"{path.name}:{lineno}", f"key {key} listed again; its last offset is used, as mxnet does"))
        entries[key] = offset
    return entries, bad


def write_recordio(rec: Union[str, Path], idx: Union[str, Path], records: Iterable[Tuple[int, bytes]]) -> int:
    """Write ``(key, record)`` pairs to ``rec`` and its index ``idx`` as mxnet's ``MXIndexedRecordIO`` does
    (a record holding the magic is split); both files appear under their names only when complete.
    Returns the number of records."""
    count = 0
    with atomic.atomic_path(rec, sync=True) as tmp_rec, atomic.atomic_path(idx, sync=True) as tmp_idx:
        with open(tmp_rec, "wb") as out, open(tmp_idx, "w", encoding="ascii") as index:
            for key, record in records:
                index.write(f"{key}\t{out.tell()}\n")
                out.write(b"".join(_chunks(record)))
                count += 1
    return count


def _chunks(data: bytes) -> Iterator[bytes]:
    """The framed chunks of one record (dmlc-core's ``WriteRecord``): split where the magic sits at a
    4-byte boundary, the magic dropped."""
    start, flag = 0, WHOLE
    pos = data.find(_MAGIC_BYTES)
    while pos != -1:
        if pos % 4:
            pos = data.find(_MAGIC_BYTES, pos + 1)
            continue
        head = (FIRST if start == 0 else MIDDLE) << _LENGTH_BITS | (pos - start)
        yield _CHUNK.pack(MAGIC, head) + data[start:pos]
        start, flag = pos + 4, LAST
        pos = data.find(_MAGIC_BYTES, start)
    rest = data[start:]
    yield _CHUNK.pack(MAGIC, flag << _LENGTH_BITS | len(rest)) + rest + b"\0" * (_pad4(len(rest)) - len(rest))
