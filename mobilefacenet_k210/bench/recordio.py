"""`make bench`'s ``recordio`` stage: building shards from an InsightFace RecordIO set against building them
from a folder of the same JPEGs.

The 400 ORL photos are aligned once by the package's builder (MTCNN) and encoded as InsightFace does
(``cv2.imencode`` JPEG, quality 95). Sets of ``SIZES`` records are made from them in classes of
``PER_CLASS`` photos (MS1M-ArcFace's mean: 5.8M photos of 85k people), the crops taken in turn, and
written as ``train.rec``/``train.idx``/``property`` in InsightFace's layout (key-0 header, identity
records) and, byte for byte the same JPEGs, as a folder ``<class>/<key>.jpg``. Each is built with 2
workers and policy ``none`` (the folder with ``--aligned``).

A build has a fixed cost (worker processes, the contact sheet, and once per process TensorFlow's
import for the shard writer) and a cost per record. An untimed build of the small set first imports
what every build needs, so that each timed build pays the same fixed cost; the figures are then the
records per second of the records added from the small set to the large one (what a set of millions
costs), the fixed seconds, and the hours MS1M-ArcFace would take: fixed + 5.8M / rate.
"""
import math
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mobilefacenet_k210 import atomic

SIZES = (4_000, 100_000)  # the difference must take far longer than the fixed cost's noise
PER_CLASS = 68
MS1M_PHOTOS = 5_800_000  # MS1M-ArcFace (faces_emore): 5.8M photos of 85k people


def orl_jpegs(work: Path) -> List[List[bytes]]:
    """The aligned ORL crops of each person as InsightFace's ``pack_img`` encodes them (JPEG 95, from BGR)."""
    import cv2
    import numpy as np

    from mobilefacenet_k210.data.orl import fetch_orl
    from mobilefacenet_k210.demo.steps import align_tree

    aligned = work / "orl_aligned"
    if not (aligned / ".complete").is_file():
        align_tree(fetch_orl(), aligned, workers=2)
        atomic.write_text(aligned / ".complete", "aligned\n")
    people = []
    for folder in sorted(p for p in aligned.iterdir() if p.is_dir()):
        crops = [cv2.imread(str(p)) for p in sorted(folder.glob("*.png"))]
        people.append([cv2.imencode(".jpg", np.ascontiguousarray(c), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
                       for c in crops])
    return people


def scaled_sets(work: Path, records: int, crops: Sequence[bytes]) -> Tuple[Path, Path, int]:
    """The RecordIO set and the folder of the same JPEGs, at least ``records`` photos in classes of
    ``PER_CLASS``, the ``crops`` taken in turn; reused when complete."""
    from mobilefacenet_k210.data import insightface_set, recordio

    rec_dir, folder = work / f"rec{records}", work / f"jpeg{records}"
    done = work / f"sets{records}.json"
    if done.is_file() and rec_dir.is_dir() and folder.is_dir():
        return rec_dir, folder, int(atomic.read_json(done, "no marker")["records"])
    classes = math.ceil(records / PER_CLASS)
    photos = [(1 + i, i // PER_CLASS, crops[i % len(crops)]) for i in range(classes * PER_CLASS)]  # key, class, jpeg
    first_identity, end = len(photos) + 1, len(photos) + 1 + classes
    items = [(0, recordio.pack([first_identity, end], b"", 0, 1))]
    items += [(key, recordio.pack(cls, jpeg, key)) for key, cls, jpeg in photos]
    items += [(first_identity + c, recordio.pack([1 + c * PER_CLASS, 1 + (c + 1) * PER_CLASS], b"", first_identity + c))
              for c in range(classes)]
    shutil.rmtree(rec_dir, ignore_errors=True)
    recordio.write_recordio(rec_dir / insightface_set.REC_FILE, rec_dir / insightface_set.IDX_FILE, items)
    atomic.write_text(rec_dir / insightface_set.PROPERTY_FILE, f"{classes},112,112\n")
    shutil.rmtree(folder, ignore_errors=True)
    for key, cls, jpeg in photos:
        (folder / f"{cls:06d}").mkdir(parents=True, exist_ok=True)
        (folder / f"{cls:06d}" / f"{key}.jpg").write_bytes(jpeg)
    atomic.write_json(done, {"records": len(photos), "classes": classes})
    return rec_dir, folder, len(photos)


def _build(src: Path, out: Path, aligned: bool) -> float:
    """Seconds of one whole build (scan to metadata), checked to have written every photo."""
    from mobilefacenet_k210.data import builder

    shutil.rmtree(out, ignore_errors=True)
    cfg = builder.load_build_config(None, None, workers=2, policy="none", aligned=aligned)
    summary = builder.build(src, out, cfg, progress=False)
    if summary["rejected"] or summary["faces"] != summary["photos"]:
        raise RuntimeError(f"{out}: {summary['rejected']} of {summary['photos']} photos rejected")
    shutil.rmtree(out, ignore_errors=True)
    return summary["seconds"]


def recordio_figures(work: Path, sizes: Sequence[int] = SIZES,
                     crops: Optional[Sequence[bytes]] = None) -> Dict[str, Any]:
    """Per kind (``rec``: the RecordIO set; ``rec_folder``: the folder of the same JPEGs): the records/s of
    the records added between the two sizes, the fixed seconds, and whole-build seconds; their ratio;
    MS1M-ArcFace's hours at the RecordIO figures. ``crops``: JPEGs of aligned faces (default: the
    ORL crops, :func:`orl_jpegs`)."""
    work = work / "recordio"
    crops = crops or [jpeg for person in orl_jpegs(work) for jpeg in person]
    sets = [scaled_sets(work, n, crops) for n in sorted(sizes)]
    _build(sets[0][0], work / "shards_warmup", aligned=False)
    out: Dict[str, Any] = {"rec_records": sets[-1][2], "rec_records_small": sets[0][2], "rec_per_class": PER_CLASS}
    for kind, column, aligned in (("rec", 0, False), ("rec_folder", 1, True)):
        seconds = [_build(s[column], work / f"shards_{kind}", aligned) for s in sets]
        rate = (sets[-1][2] - sets[0][2]) / max(seconds[-1] - seconds[0], 1e-9)
        out.update({f"{kind}_records_per_s": rate, f"{kind}_fixed_seconds": seconds[-1] - sets[-1][2] / rate,
                    f"{kind}_seconds": seconds[-1], f"{kind}_seconds_small": seconds[0]})
    out["rec_over_folder"] = out["rec_records_per_s"] / out["rec_folder_records_per_s"]
    out["rec_ms1m_hours"] = (max(out["rec_fixed_seconds"], 0.0) + MS1M_PHOTOS / out["rec_records_per_s"]) / 3600
    return out
