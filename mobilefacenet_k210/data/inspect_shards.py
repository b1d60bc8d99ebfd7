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
    """One row per identity, its crops captioned ``tag (split)``; written atomically as a PNG.

    The crops are laid out as one mosaic in one axes, captions as text on it: drawing a grid of
    one axes per crop (and laying it out) took seconds, most of the sheet's time.
    """
    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    rows = max(1, len(samples))
    cols = max([len(v) for v in samples.values()] + [1])
    crops = {name: [cv2.cvtColor(cv2.imdecode(np.frombuffer(item["jpeg"], np.uint8), cv2.IMREAD_COLOR),
                                 cv2.COLOR_BGR2RGB) for item in items] for name, items in samples.items()}
    size = max([c.shape[0] for v in crops.values() for c in v] + [1])
    gap, caption = size // 14, size // 7  # white space between crops, and above each for its caption
    cell_w, cell_h = size + gap, size + caption + gap
    mosaic = np.full((rows * cell_h, cols * cell_w, 3), 255, np.uint8)
    label_w, title_h = 1.0, 0.4 if title else 0.0  # inches beside the mosaic for names and above it for the title
    mosaic_w = 1.6 * cols
    mosaic_h = mosaic_w * mosaic.shape[0] / mosaic.shape[1]
    fig = plt.figure(figsize=(mosaic_w + label_w, mosaic_h + title_h))
    ax = fig.add_axes((label_w / fig.get_figwidth(), 0.0, mosaic_w / fig.get_figwidth(), mosaic_h / fig.get_figheight()))
    for r, (name, items) in enumerate(samples.items()):
        y = r * cell_h + caption
        for c, (item, img) in enumerate(zip(items, crops[name])):
            h, w = img.shape[:2]
            mosaic[y:y + h, c * cell_w:c * cell_w + w] = img
            ax.text(c * cell_w + size / 2, y - 2, f"{item['tag']} ({item['split']})", fontsize=7, ha="center",
                    va="bottom")
        ax.text(-gap, y + size / 2, f"{name}\nlabel {items[0]['label']}" if items else name, fontsize=7,
                ha="right", va="center")
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9, y=1.0 - 0.1 / fig.get_figheight(), va="top")
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
