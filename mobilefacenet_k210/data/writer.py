"""The builder's one output writer, used by both runners: OUT_DIR's plan and swap, then every output file.

OUT_DIR is checked first (:func:`plan_output`): it may not be, contain or lie inside an input, and
a dataset built there from another input is replaced only with ``overwrite``, by building beside it
and swapping the folders at the end (:func:`finish_output`), so the old dataset stays whole until
the new one is. :func:`open_work` readies it for a (re)run. From the per-identity cache,
:func:`write_outputs` then writes the labels, the shards, ``labels.txt``, ``property``,
``rejected.csv``, ``contact_sheet.png`` and ``metadata.json`` last: a folder with metadata is complete.
"""
import csv
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from mobilefacenet_k210 import atomic
from mobilefacenet_k210 import config as config_lib
from mobilefacenet_k210.config import BuildConfig
from mobilefacenet_k210.data import tfrecord
from mobilefacenet_k210.data.augment import stable_seed
from mobilefacenet_k210.data.cache import WORK_DIR, cache_load_records, cache_load_summary, cache_teacher, config_key
from mobilefacenet_k210.data.detectors import describe_detector
from mobilefacenet_k210.data.insightface_set import PROPERTY_FILE
from mobilefacenet_k210.data.scan import Scan
from mobilefacenet_k210.data.stages import BuildError, IdentityTask
from mobilefacenet_k210.preprocessing import INPUT_SIZE

CONTACT_SHEET = "contact_sheet.png"


def write_rejected(path: Path, rows: Iterable[Tuple[str, str]]) -> None:
    """``rejected.csv``: one ``path,reason`` row per input entry that gave no face."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "reason"])
    for row in rows:
        writer.writerow(row)
    atomic.write_text(path, buf.getvalue(), sync=True)


def write_labels(path: Path, names: Sequence[str]) -> None:
    """``labels.txt``: line ``i`` is the identity name of label ``i``."""
    atomic.write_text(path, "".join(f"{n}\n" for n in names), sync=True)


def write_property(path: Path, num_classes: int) -> None:
    """InsightFace's ``property`` file: ``num_classes,112,112``."""
    atomic.write_text(path, f"{num_classes},{INPUT_SIZE},{INPUT_SIZE}\n", sync=True)


def shard_counts(total: int, per_shard: int) -> List[int]:
    """Near-equal contiguous shard sizes for ``total`` records, none over ``per_shard``."""
    if total <= 0:
        return []
    n = math.ceil(total / per_shard)
    base, extra = divmod(total, n)
    return [base + (1 if i < extra else 0) for i in range(n)]


def shard_order(names: Sequence[str], seed: int) -> List[str]:
    """Identities in a seeded random order, so each shard mixes identities from the whole set."""
    ordered = sorted(names)
    perm = np.random.default_rng(stable_seed(seed, "shard-order")).permutation(len(ordered))
    return [ordered[i] for i in perm]


def shard_metadata(num_classes: int, class_counts: Dict[str, int], class_counts_val: Dict[str, int],
                   shards: List[Dict[str, Any]], augmentations: Iterable[Dict[str, int]], rejected: int, policy: Any,
                   build_config: Any, files: Optional[Dict[str, str]] = None, **details: Any) -> Dict[str, Any]:
    """The ``metadata.json`` of a shard folder, built or merged: the keys :func:`tfrecord.load_metadata`
    reads (splits and totals counted from ``shards``, augmentation tags summed over ``augmentations``),
    what made it (``policy``, ``build_config``, ``details``) and its other ``files`` besides the
    labels, rejections and property file every shard folder has."""
    from mobilefacenet_k210 import __version__

    splits = {s: sum(sh["records"] for sh in shards if sh["split"] == s) for s in tfrecord.SPLITS}
    aug: Dict[str, int] = {}
    for counts in augmentations:
        for tag, n in counts.items():
            aug[tag] = aug.get(tag, 0) + n
    return {
        "schema_version": tfrecord.SCHEMA_VERSION,
        "num_classes": num_classes,
        "class_counts": class_counts,
        "class_counts_val": class_counts_val,
        "splits": splits,
        "total_records": sum(splits.values()),
        "augmentation": dict(sorted(aug.items())),
        "shards": shards,
        "rejected": rejected,
        "policy": policy,
        "build_config": build_config,
        **details,
        "package_version": __version__,
        "image_size": [INPUT_SIZE, INPUT_SIZE, 3],
        "files": {"labels": tfrecord.LABELS_FILE, "rejected": tfrecord.REJECTED_FILE, "property": PROPERTY_FILE,
                  **(files or {})},
    }


def build_metadata(cfg: BuildConfig, names: Sequence[str], class_counts: Dict[int, Dict[str, int]],
                   shards: List[Dict[str, Any]], summaries: Sequence[Dict[str, Any]], rejected_count: int,
                   input_path: str) -> Dict[str, Any]:
    """A built folder's :func:`shard_metadata`, with the build's details (faces, identities, detector, input)."""
    faces = {s["name"]: s["faces"] for s in summaries}
    return shard_metadata(
        len(names), {str(i): class_counts[i]["train"] for i in range(len(names))},
        {str(i): class_counts[i]["val"] for i in range(len(names))}, shards,
        (s["augmentation"] for s in summaries), rejected_count, config_lib.to_dict(cfg.policy), config_lib.to_dict(cfg),
        files={"contact_sheet": CONTACT_SHEET},
        class_faces={str(i): faces[n] for i, n in enumerate(names)},
        identities={"input": len(summaries), "kept": len(names), "dropped": sum(1 for s in summaries if s["dropped"])},
        detector=None if cfg.aligned else describe_detector(cfg), config_key=config_key(cfg), input=input_path)


def kept_names(summaries: Sequence[Dict[str, Any]]) -> List[str]:
    """Identities that survive the policy, in input order (folder names sorted, or ``.lst`` labels
    ascending): their position is their label."""
    return [s["name"] for s in summaries if not s["dropped"] and sum(s["records"].values()) > 0]


def all_rejected(scan_rejected: Sequence[Tuple[str, str]], summaries: Sequence[Dict[str, Any]],
                 cfg: BuildConfig) -> List[Tuple[str, str]]:
    """Scan rejections, per-photo rejections and identities dropped by the policy, sorted by path."""
    rows = list(scan_rejected)
    for s in summaries:
        rows.extend(tuple(r) for r in s["rejected"])
        if s["dropped"]:
            rows.append((s["name"], f"identity dropped by policy '{cfg.policy.name}' ({s['faces']} aligned faces)"))
    return sorted(rows)


def write_outputs(out_dir: Path, work: Path, cfg: BuildConfig, summaries: Sequence[Dict[str, Any]],
                  scanned: Scan, input_path: str, teacher: Any = None,
                  progress: bool = True) -> Dict[str, Any]:
    """Labels, shards (each written atomically), labels.txt, property, rejected.csv, the contact sheet,
    then metadata.json last: a folder with metadata is complete. Drops the cache unless
    ``cfg.keep_work``. Both runners end here, so they write the same set of files. Returns the metadata.
    ``scanned``: the input's scan, whose rejections go to ``rejected.csv`` and whose ``source`` (what a
    RecordIO set is) to ``metadata.json``.

    ``teacher`` (an object with ``embed_records`` and ``info``, e.g. ``teacher.loader.Teacher``): each
    record also gets the teacher's embeddings of its crop and mirror, computed once per identity and
    cached (:func:`cache.cache_teacher`), and ``metadata.json`` the teacher's ``info()``."""
    from tqdm import tqdm

    names = kept_names(summaries)
    rejected = all_rejected(scanned.rejected, summaries, cfg)
    write_rejected(out_dir / tfrecord.REJECTED_FILE, rejected)
    if not names:
        raise BuildError(f"nothing left after the policy '{cfg.policy.name}': {len(summaries)} identities, none kept "
                         f"(see {out_dir / tfrecord.REJECTED_FILE}). For a small set use --policy none, or lower the "
                         f"thresholds with --set policy.rules...")
    label = {n: i for i, n in enumerate(names)}
    by_name = {s["name"]: s for s in summaries}
    order = shard_order(names, cfg.seed)
    class_counts = {label[n]: dict(by_name[n]["records"]) for n in names}
    shards: List[Dict[str, Any]] = []
    written = set()
    timing = embed_teacher(work, names, teacher, progress) if teacher is not None else None
    for split in tfrecord.SPLITS:
        sizes = shard_counts(sum(by_name[n]["records"][split] for n in names), cfg.records_per_shard)
        if not sizes:
            continue

        def stream(split: str = split) -> Iterator[bytes]:
            for n in order:
                recs = cache_load_records(work, n, split)
                emb, mirror = cache_teacher(work, n, split, teacher, recs) if teacher is not None else (None, None)
                for i, (_, source, tag, jpeg) in enumerate(recs):
                    yield tfrecord.encode_example(jpeg, label[n], n, source, tag, None if emb is None else emb[i],
                                                  None if mirror is None else mirror[i])

        records = stream()
        bar = tqdm(total=sum(sizes), desc=f"write {split}", unit="rec", leave=False)
        for i, size in enumerate(sizes):
            name = tfrecord.shard_name(split, i, len(sizes))
            entry = tfrecord.write_shard(out_dir / name, _take(records, size, bar))
            if entry["records"] != size:
                raise RuntimeError(f"{name}: wrote {entry['records']} records, expected {size}")
            shards.append({**entry, "split": split})
            written.add(name)
        bar.close()
    for old in out_dir.glob("*.tfrecord"):
        if old.name not in written and old.name.split("-")[0] in tfrecord.SPLITS:
            old.unlink()
    write_labels(out_dir / tfrecord.LABELS_FILE, names)
    write_property(out_dir / PROPERTY_FILE, len(names))
    write_contact_sheet(out_dir, work, names, cfg)
    meta = build_metadata(cfg, names, class_counts, shards, summaries, len(rejected), input_path)
    if scanned.source:
        meta["source"] = scanned.source
    if teacher is not None:
        meta[tfrecord.TEACHER_META] = teacher.info()
        meta["teacher_seconds"] = round(timing["seconds"], 3)
    atomic.write_json(out_dir / tfrecord.METADATA_FILE, meta)
    if not cfg.keep_work:
        shutil.rmtree(out_dir / WORK_DIR, ignore_errors=True)
    return meta


def embed_teacher(work: Path, names: Sequence[str], teacher: Any, progress: bool = True) -> Dict[str, float]:
    """Run the teacher once on every cached record of ``names`` not yet embedded with it (resumable per
    identity and split), with a progress bar in images per second. Returns the records and seconds."""
    import time

    from tqdm import tqdm

    total, start = 0, time.perf_counter()
    with tqdm(desc=f"teacher {teacher.info()['name']}", unit="img", disable=not progress) as bar:
        for n in names:
            for split in tfrecord.SPLITS:
                recs = cache_load_records(work, n, split)
                cache_teacher(work, n, split, teacher, recs)
                bar.update(len(recs))
                total += len(recs)
    return {"records": total, "seconds": time.perf_counter() - start}


def write_contact_sheet(out_dir: Path, work: Path, names: Sequence[str], cfg: BuildConfig,
                        identities: int = 8, per_identity: int = 8) -> Path:
    """``contact_sheet.png``: seeded random crops of seeded random identities, captioned with their
    tag and split, drawn from the cache (no pass over the shards; ``mfk210 inspect`` draws others)."""
    from mobilefacenet_k210.data.inspect_shards import contact_sheet

    rng = np.random.default_rng(stable_seed(cfg.seed, "contact-sheet"))
    picked = sorted(rng.choice(len(names), size=min(identities, len(names)), replace=False).tolist())
    samples = {}
    for label in picked:
        recs = [r for split in tfrecord.SPLITS for r in cache_load_records(work, names[label], split)]
        chosen = rng.choice(len(recs), size=min(per_identity, len(recs)), replace=False)
        samples[names[label]] = [{"jpeg": recs[i][3], "tag": recs[i][2], "split": recs[i][0], "label": label}
                                 for i in sorted(chosen.tolist())]
    title = f"{out_dir.name}: {len(names)} classes, policy {cfg.policy.name}"
    return contact_sheet(samples, out_dir / CONTACT_SHEET, title)


def _take(records: Iterator[bytes], size: int, bar: Any) -> Iterator[bytes]:
    """The next ``size`` records of a stream, ticking the progress bar."""
    for _, rec in zip(range(size), records):
        bar.update(1)
        yield rec


def remove_partial_files(out_dir: Path) -> None:
    """Delete what a killed run leaves behind, never valid output: hidden temporary files
    (``.<name>.<random>.tmp``, also in the cache folders, and the contact sheet's ``.png`` one) and
    the ``beam-temp-*`` folders of Beam's file sinks."""
    patterns = (".*.tmp", f".{CONTACT_SHEET}.*.png", f"{WORK_DIR}/*/.*.tmp", "beam-temp-*", f"{WORK_DIR}/*/beam-temp-*")
    for pattern in patterns:
        for path in out_dir.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.is_file():
                path.unlink()


def prepare_out_dir(out_dir: Path) -> None:
    """Create OUT_DIR and prove it is writable, or stop with what to do."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=out_dir)
        os.close(fd)
        os.remove(tmp)
    except OSError as exc:
        raise BuildError(f"{out_dir}: cannot write the output folder ({exc.strerror or exc}); "
                         f"choose another OUT_DIR or fix its permissions") from None


def _beside(out_dir: Path, what: str) -> Path:
    return out_dir.with_name(f".{out_dir.name}.{what}")


def plan_output(out_dir: Union[str, Path], inputs: Sequence[Union[str, Path]], overwrite: bool,
                reusable: Callable[[Dict[str, Any]], bool], error: Optional[type] = None) -> Path:
    """The folder to write into: OUT_DIR, or with ``overwrite`` a staging folder beside it when OUT_DIR
    already holds a dataset that ``reusable(metadata)`` refuses (:func:`finish_output` swaps it in).

    Refuses (``error``, default :class:`BuildError`) an OUT_DIR that is, contains or lies inside an
    input. First completes or undoes a swap that a kill interrupted.
    """
    error = error or BuildError
    out_dir = Path(out_dir)
    out = out_dir.resolve()
    for inp in inputs:
        src = Path(inp).resolve()
        if out == src or src in out.parents or out in src.parents:
            rel = "is" if out == src else ("lies inside" if src in out.parents else "contains")
            raise error(f"{out_dir}: the output folder {rel} the input {inp}; choose an OUT_DIR apart from the input")
    staging, old = _beside(out_dir, "overwrite"), _beside(out_dir, "old")
    if old.is_dir() and not out_dir.exists():  # killed between the two renames of finish_output
        os.replace(staging if (staging / tfrecord.METADATA_FILE).is_file() else old, out_dir)
    shutil.rmtree(old, ignore_errors=True)
    meta_path = out_dir / tfrecord.METADATA_FILE
    if not meta_path.is_file():
        return out_dir
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        ok = isinstance(meta, dict) and reusable(meta)
    except (ValueError, UnicodeDecodeError):
        ok = False
    if ok:
        return out_dir
    if not overwrite:
        raise error(f"{out_dir}: already holds a dataset ({meta_path.name}) made from other input; give --overwrite "
                    f"to replace it (it stays whole until the new one is complete) or choose another OUT_DIR")
    return staging


def finish_output(staging: Path, out_dir: Path) -> None:
    """Swap a complete staging folder in place of OUT_DIR, then delete the old dataset."""
    if staging == out_dir:
        return
    old = _beside(out_dir, "old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out_dir, old)
    os.replace(staging, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def same_input(raw_dir: Union[str, Path]) -> Callable[[Dict[str, Any]], bool]:
    """``reusable`` of :func:`plan_output` for a build: the dataset was built from this input."""
    here = Path(raw_dir).resolve()
    return lambda meta: isinstance(meta.get("input"), str) and Path(meta["input"]).resolve() == here


def open_work(out_dir: Path, cfg: BuildConfig, tasks: Sequence[IdentityTask]
              ) -> Tuple[Path, Dict[str, Dict[str, Any]], List[IdentityTask]]:
    """Ready OUT_DIR for a (re)run, shared by both runners: writable, marked incomplete, leftovers of a
    killed run removed, the cache folder made. Returns it, the cached summaries and the tasks to do."""
    prepare_out_dir(out_dir)
    meta_path = out_dir / tfrecord.METADATA_FILE
    if meta_path.exists():
        meta_path.unlink()  # the folder is incomplete until the new metadata is written
    remove_partial_files(out_dir)
    work = out_dir / WORK_DIR / config_key(cfg)
    work.mkdir(parents=True, exist_ok=True)
    atomic.write_json(work / "config.json", config_lib.to_dict(cfg))
    summaries: Dict[str, Dict[str, Any]] = {}
    todo: List[IdentityTask] = []
    for task in tasks:
        cached = cache_load_summary(work, task)
        if cached is not None:
            summaries[task.name] = cached
        else:
            todo.append(task)
    return work, summaries, todo


def run_summary(runner: str, meta: Dict[str, Any], ordered: List[Dict[str, Any]], out_dir: Path,
                seconds: float, photos: int, photos_processed: int, resumed: int) -> Dict[str, Any]:
    """The summary keys both runners report, read from the metadata they wrote and the identity summaries."""
    return {
        "runner": runner,
        "photos": photos,
        "photos_processed": photos_processed,
        "faces": sum(s["faces"] for s in ordered),
        "rejected": meta["rejected"],
        "identities": meta["identities"],
        "num_classes": meta["num_classes"],
        "records": meta["splits"],
        "augmentation": meta["augmentation"],
        "shards": len(meta["shards"]),
        "resumed_identities": resumed,
        "seconds": round(seconds, 3),
        **({"teacher": meta["teacher"]["name"], "teacher_seconds": meta.get("teacher_seconds")}
           if meta.get("teacher") else {}),
        **({"source": meta["source"]} if meta.get("source") else {}),
        "out_dir": str(out_dir),
    }
