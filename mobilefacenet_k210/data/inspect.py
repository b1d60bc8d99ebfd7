"""``mfk210 inspect SHARDS_DIR``: what training will see, in numbers and in one picture.

Reads every record of every shard listed in ``metadata.json`` (checking counts, and sha256 with
``verify``), reports per-split counts, classes and the augmentation mix, and draws a contact sheet
PNG of random crops of random identities, each captioned with its augmentation tag and split.
"""
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from mobilefacenet_k210 import atomic
from mobilefacenet_k210.data import tfrecord


def contact_sheet(samples: Dict[str, List[Dict[str, Any]]], path: Union[str, Path], title: str = "") -> Path:
    """One row per identity, its crops captioned ``tag (split)``; written atomically as a PNG."""
    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    rows = max(1, len(samples))
    cols = max([len(v) for v in samples.values()] + [1])
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, (name, items) in enumerate(samples.items()):
        for c, item in enumerate(items):
            img = cv2.imdecode(np.frombuffer(item["jpeg"], np.uint8), cv2.IMREAD_COLOR)
            ax = axes[r][c]
            ax.imshow(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
            ax.set_title(f"{item['tag']} ({item['split']})", fontsize=7)
        axes[r][0].text(-8, 56, f"{name}\nlabel {items[0]['label']}" if items else name, fontsize=7,
                        ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return atomic.save_figure(fig, path, dpi=100)


def inspect_shards(shards_dir: Union[str, Path], out_png: Optional[Union[str, Path]] = None, identities: int = 8,
                   per_identity: int = 8, seed: int = 0, verify: bool = False) -> Dict[str, Any]:
    """Scan the shards; return counts (per split, per class, per tag) and the contact sheet's path.

    Raises :class:`tfrecord.ShardError` when a shard is truncated or corrupt, or its record count
    (or, with ``verify``, its sha256) differs from the metadata.
    """
    from tqdm import tqdm

    shards_dir = Path(shards_dir)
    meta = tfrecord.load_metadata(shards_dir)
    labels_path = shards_dir / tfrecord.LABELS_FILE
    names = labels_path.read_text(encoding="utf-8").splitlines() if labels_path.is_file() else []
    rng = np.random.default_rng(seed)
    pick = set(rng.choice(meta["num_classes"], size=min(identities, meta["num_classes"]), replace=False).tolist())
    reservoir: Dict[int, List[Dict[str, Any]]] = {k: [] for k in sorted(pick)}
    seen: Dict[int, int] = {k: 0 for k in pick}
    splits: Dict[str, Dict[str, Any]] = {}
    total = sum(s["records"] for s in meta["shards"])
    with tqdm(total=total, desc="inspect", unit="rec", leave=False) as bar:  # cleared on error: one error line
        for shard in meta["shards"]:
            split = shard["split"]
            path = shards_dir / shard["file"]
            if verify and tfrecord.sha256_file(path) != shard["sha256"]:
                raise tfrecord.ShardError(f"{path}: sha256 differs from metadata.json (damaged or replaced shard)")
            stats = splits.setdefault(split, {"records": 0, "classes": set(), "augmentation": {}, "shards": 0})
            stats["shards"] += 1
            count = 0
            for rec in tfrecord.read_examples(path):
                label, tag = rec[tfrecord.LABEL], rec[tfrecord.AUGMENTATION]
                count += 1
                stats["classes"].add(label)
                stats["augmentation"][tag] = stats["augmentation"].get(tag, 0) + 1
                if label in reservoir:
                    seen[label] += 1
                    item = {"jpeg": rec[tfrecord.IMAGE], "tag": tag, "split": split, "label": label}
                    if len(reservoir[label]) < per_identity:
                        reservoir[label].append(item)
                    else:
                        j = int(rng.integers(seen[label]))
                        if j < per_identity:
                            reservoir[label][j] = item
                bar.update(1)
            if count != shard["records"]:
                raise tfrecord.ShardError(f"{path}: {count} records, metadata.json says {shard['records']}")
            stats["records"] += count
    report: Dict[str, Any] = {"shards_dir": str(shards_dir), "num_classes": meta["num_classes"],
                              "package_version": meta.get("package_version"),
                              "policy": (meta.get("policy") or {}).get("name"), "splits": {}}
    for split, stats in splits.items():
        report["splits"][split] = {"records": stats["records"], "shards": stats["shards"],
                                   "classes": len(stats["classes"]),
                                   "augmentation": dict(sorted(stats["augmentation"].items()))}
    counts = [int(v) for v in meta.get("class_counts", {}).values()]
    if counts:
        report["train_per_class"] = {"min": min(counts), "median": float(np.median(counts)), "max": max(counts)}
    samples = {(names[k] if k < len(names) else str(k)): v for k, v in reservoir.items() if v}
    out_png = Path(out_png) if out_png else shards_dir / "contact_sheet.png"
    title = f"{shards_dir.name}: {meta['num_classes']} classes, " + ", ".join(
        f"{s} {v['records']}" for s, v in report["splits"].items())
    report["contact_sheet"] = str(contact_sheet(samples, out_png, title))
    return report


def format_report(report: Dict[str, Any]) -> str:
    """The report as a few lines of text for the terminal."""
    lines = [f"{report['shards_dir']}: {report['num_classes']} classes, policy {report.get('policy')}, "
             f"package {report.get('package_version')}"]
    for split, s in report["splits"].items():
        mix = ", ".join(f"{k} {v}" for k, v in s["augmentation"].items())
        lines.append(f"  {split:5s} {s['records']:8d} records in {s['shards']} shard(s), {s['classes']} classes; {mix}")
    if "train_per_class" in report:
        t = report["train_per_class"]
        lines.append(f"  train records per class: min {t['min']}, median {t['median']:g}, max {t['max']}")
    lines.append(f"  contact sheet: {report['contact_sheet']}")
    return "\n".join(lines)
