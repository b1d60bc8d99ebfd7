"""InsightFace interop: ``.lst`` + ``property`` files from aligned folders, and merging shard sets.

InsightFace lists a dataset as ``.lst`` lines ``1<TAB>PATH<TAB>LABEL`` (1 = already aligned) beside a
``property`` file ``num_classes,112,112``; its ``dataset_merge`` joins sets by offsetting labels.
``mfk210 lst`` writes both from a folder of aligned crops (the builder reads ``.lst`` back);
``mfk210 merge`` joins shard folders built by this package into one, labels offset in input order.
"""
import csv
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

from mobilefacenet_k210 import atomic, folder_lock
from mobilefacenet_k210.data import stages, tfrecord, writer
from mobilefacenet_k210.data.scan import scan_folder


def write_lst(aligned_dir: Union[str, Path], out_lst: Union[str, Path]) -> Dict[str, Any]:
    """Write ``out_lst`` (absolute paths, label = identity folder's sorted position) and ``property``
    beside it. Files are listed as found (not decoded); hidden and nested entries are skipped."""
    aligned_dir = Path(aligned_dir).resolve()
    if not aligned_dir.is_dir():
        raise stages.BuildError(f"{aligned_dir}: no such folder of aligned identity folders")
    tasks, skipped = scan_folder(aligned_dir, aligned=True)
    if not tasks:
        raise stages.BuildError(f"{aligned_dir}: no identity folder with image files")
    out_lst = Path(out_lst)
    out_lst.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"1\t{Path(p.path).resolve()}\t{label}\n" for label, t in enumerate(tasks) for p in t.photos]
    atomic.write_text(out_lst, "".join(lines), sync=True)
    prop = out_lst.parent / writer.PROPERTY_FILE
    writer.write_property(prop, len(tasks))
    return {"lst": str(out_lst), "property": str(prop), "num_classes": len(tasks), "images": len(lines),
            "skipped": len(skipped)}


def read_labels(shards_dir: Union[str, Path]) -> List[str]:
    """Identity names by label from ``labels.txt``."""
    path = Path(shards_dir) / tfrecord.LABELS_FILE
    if not path.is_file():
        raise tfrecord.ShardError(f"{path}: missing labels.txt")
    return path.read_text(encoding="utf-8").splitlines()


def merge(inputs: Sequence[Union[str, Path]], out_dir: Union[str, Path], overwrite: bool = False) -> Dict[str, Any]:
    """Merge shard folders into ``out_dir``: labels of input ``i`` are offset by the classes before
    it; an identity name found in more than one input is prefixed with its folder's name. Every
    record is rewritten (new label and name) into renumbered shards; metadata, labels.txt,
    property and rejected.csv are written anew. Returns the new metadata.

    ``out_dir`` may not be, contain or lie inside an input; a dataset already there is replaced only
    with ``overwrite``, and stays whole until the merged one is complete (built beside, then swapped);
    a second writer of ``out_dir`` meanwhile is refused (:mod:`folder_lock`).
    """
    if len(inputs) < 2:
        raise tfrecord.ShardError("merge needs at least two shard folders")
    with folder_lock.hold(out_dir):
        target = writer.plan_output(out_dir, inputs, overwrite, lambda meta: False, error=tfrecord.ShardError)
        meta = _merge_into(inputs, target)
        writer.finish_output(target, Path(out_dir))
    return meta


def _merge_into(inputs: Sequence[Union[str, Path]], out_dir: Path) -> Dict[str, Any]:
    """:func:`merge`'s work, writing into ``out_dir``."""
    from tqdm import tqdm

    sets = []
    for d in inputs:
        d = Path(d)
        meta = tfrecord.load_metadata(d)
        names = read_labels(d)
        if len(names) != meta["num_classes"]:
            raise tfrecord.ShardError(f"{d}: labels.txt has {len(names)} names, metadata says {meta['num_classes']}")
        sets.append((d, meta, names))
    seen: Dict[str, int] = {}
    for _, _, names in sets:
        for n in set(names):
            seen[n] = seen.get(n, 0) + 1
    writer.prepare_out_dir(out_dir)
    if (out_dir / tfrecord.METADATA_FILE).exists():
        (out_dir / tfrecord.METADATA_FILE).unlink()
    all_names: List[str] = []
    class_counts: Dict[str, int] = {}
    class_counts_val: Dict[str, int] = {}
    plan = []  # (split, input dir, shard file, offset, renamed names, record count)
    for d, meta, names in sets:
        offset = len(all_names)
        renamed = [f"{d.name}/{n}" if seen[n] > 1 else n for n in names]
        all_names.extend(renamed)
        for label, count in meta.get("class_counts", {}).items():
            class_counts[str(int(label) + offset)] = count
        for label, count in meta.get("class_counts_val", {}).items():
            class_counts_val[str(int(label) + offset)] = count
        for shard in meta["shards"]:
            plan.append((shard["split"], d, shard["file"], offset, renamed, shard["records"]))
    shards = []
    written = set()
    total = sum(s["records"] for _, meta, _ in sets for s in meta["shards"])
    with tqdm(total=total, desc="merge", unit="rec", leave=False) as bar:  # cleared on error: one error line
        for split in tfrecord.SPLITS:
            mine = [p for p in plan if p[0] == split]
            for i, (_, d, file, offset, renamed, count) in enumerate(mine):
                def records(path=d / file, offset=offset, renamed=renamed):
                    for rec in tfrecord.read_examples(path):
                        label = rec[tfrecord.LABEL] + offset
                        bar.update(1)
                        yield tfrecord.encode_example(rec[tfrecord.IMAGE], label, renamed[rec[tfrecord.LABEL]],
                                                      rec[tfrecord.SOURCE], rec[tfrecord.AUGMENTATION])

                name = tfrecord.shard_name(split, i, len(mine))
                entry = tfrecord.write_shard(out_dir / name, records())
                if entry["records"] != count:
                    raise tfrecord.ShardError(f"{d / file}: {entry['records']} records, its metadata.json says "
                                              f"{count}; rebuild that shard folder")
                shards.append({**entry, "split": split})
                written.add(name)
    for old in out_dir.glob("*.tfrecord"):
        if old.name not in written and old.name.split("-")[0] in tfrecord.SPLITS:
            old.unlink()
    rows = []
    for d, _, _ in sets:
        rej = d / tfrecord.REJECTED_FILE
        if rej.is_file():
            with open(rej, newline="", encoding="utf-8") as f:
                rows.extend((f"{d.name}/{r['path']}", r["reason"]) for r in csv.DictReader(f))
    writer.write_rejected(out_dir / tfrecord.REJECTED_FILE, rows)
    writer.write_labels(out_dir / tfrecord.LABELS_FILE, all_names)
    writer.write_property(out_dir / writer.PROPERTY_FILE, len(all_names))
    meta_out = writer.shard_metadata(
        len(all_names), class_counts, class_counts_val, shards, (m.get("augmentation", {}) for _, m, _ in sets),
        len(rows), {"merged": [m.get("policy") for _, m, _ in sets]},
        {"merged_from": [{"dir": str(d), "num_classes": m["num_classes"],
                          "label_offset": sum(len(n) for _, _, n in sets[:i]), "build_config": m.get("build_config")}
                         for i, (d, m, _) in enumerate(sets)]})
    atomic.write_json(out_dir / tfrecord.METADATA_FILE, meta_out)
    return meta_out
