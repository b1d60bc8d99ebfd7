"""What people look at: ROC and distance-histogram PNGs, the model x set Markdown table, JSON.

The table follows the InsightFace notes: one column per set, in the order LFW, CFP-FF, CFP-FP,
AgeDB-30, VGG2-FP (other sets after them, by name), one row per model, accuracy as
``mean ± std`` in percent; rows after the first also show the drop from the first row
(e.g. Keras first, its kmodel second: the quantization loss).
"""
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from mobilefacenet_k210 import atomic
from mobilefacenet_k210.evaluate.metrics import FAR_TARGETS, far_key

KNOWN_SETS = {"lfw": "LFW", "cfp_ff": "CFP-FF", "cfp_fp": "CFP-FP", "agedb_30": "AgeDB-30", "vgg2_fp": "VGG2-FP"}
"""InsightFace's file stems and the column names of the notes' table, in the table's order."""

Results = Dict[str, Dict[str, Dict[str, Any]]]
"""results[model label][set name] = a ``metrics.verify`` result (or its summary)."""


def set_name(path_or_name: Union[str, Path]) -> str:
    """Column name of a set: ``.../agedb_30.bin`` -> ``AgeDB-30``; unknown sets keep their stem."""
    stem = Path(str(path_or_name)).stem
    return KNOWN_SETS.get(stem.lower().replace("-", "_"), stem)


def ordered_sets(names: Sequence[str]) -> List[str]:
    """Known sets in the notes' order, then the others in order of first appearance."""
    known = [n for n in KNOWN_SETS.values() if n in names]
    return known + [n for n in dict.fromkeys(names) if n not in known]


def slug(text: str) -> str:
    """A file-name-safe form of a model or set label."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


def markdown_table(results: Results) -> str:
    """Models as rows, sets as columns, ``acc ± std`` in percent, drop from the first model in ()."""
    models = list(results)
    sets = ordered_sets([s for m in models for s in results[m]])
    lines = ["| Model | " + " | ".join(sets) + " |", "|---|" + "---:|" * len(sets)]
    first = models[0] if models else None
    for model in models:
        cells = []
        for s in sets:
            r = results[model].get(s)
            if r is None:
                cells.append("-")
                continue
            cell = f"{100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f}"
            base = results[first].get(s)
            if model != first and base is not None:
                cell += f" ({100 * (r['accuracy'] - base['accuracy']):+.2f})"
            cells.append(cell)
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def tar_table(results: Results, far_targets: Sequence[float] = FAR_TARGETS) -> str:
    """TAR (percent) at each FAR target per model and set; '-' where the set has too few pairs."""
    models = list(results)
    sets = ordered_sets([s for m in models for s in results[m]])
    header = [f"{s} @FAR={far_key(f)}" for s in sets for f in far_targets]
    lines = ["| Model | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    for model in models:
        cells = []
        for s in sets:
            for f in far_targets:
                t = (results[model].get(s) or {}).get("tar_at_far", {}).get(far_key(f))
                cells.append("-" if t is None else f"{100 * t['tar']:.2f}")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _save_figure(fig, path: Union[str, Path]) -> Path:
    """Save a report figure (110 dpi, trimmed) atomically and close it."""
    return atomic.save_figure(fig, path, dpi=110, bbox_inches="tight")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(curves: Dict[str, Dict[str, Any]], path: Union[str, Path], title: str) -> Path:
    """ROC curves (TAR against FAR, log FAR axis) of several models on one set, with AUC in the legend."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    floor = 1.0
    for i, (label, result) in enumerate(curves.items()):
        roc = result["roc"]
        fpr, tpr = np.asarray(roc["fpr"]), np.asarray(roc["tpr"])
        keep = fpr > 0
        if keep.any():
            floor = min(floor, fpr[keep].min())
        ax.plot(fpr[keep], tpr[keep], linestyle=("-", "--", ":", "-.")[i % 4], label=f"{label} (acc {100 * result['accuracy']:.2f}%, AUC {roc['auc']:.4f})")
    for far in FAR_TARGETS:
        ax.axvline(far, color="0.85", linewidth=0.8, zorder=0)
    ax.set_xscale("log")
    ax.set_xlim(max(floor, 1e-4), 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false accept rate (FAR)")
    ax.set_ylabel("true accept rate (TAR)")
    ax.set_title(f"ROC: {title}")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    return _save_figure(fig, path)


def plot_distances(result: Dict[str, Any], path: Union[str, Path], title: str) -> Path:
    """Histogram of squared L2 distances of genuine and impostor pairs, with the chosen threshold."""
    plt = _pyplot()
    dist, issame = np.asarray(result["distances"]), np.asarray(result["issame"], dtype=bool)
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0.0, 4.0, 81)
    ax.hist(dist[issame], bins=bins, alpha=0.6, color="tab:green", label=f"genuine ({issame.sum()})")
    ax.hist(dist[~issame], bins=bins, alpha=0.6, color="tab:red", label=f"impostor ({(~issame).sum()})")
    ax.axvline(result["best_threshold"], color="k", linestyle="--",
               label=f"threshold {result['best_threshold']:.2f} (acc {100 * result['accuracy']:.2f}%)")
    ax.set_xlabel("squared L2 distance of normalized embeddings")
    ax.set_ylabel("pairs")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save_figure(fig, path)


def plot_cosine(cosine: np.ndarray, path: Union[str, Path], title: str) -> Path:
    """Histogram of the per-image cosine similarity between two models' embeddings."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(np.asarray(cosine), bins=60, color="tab:blue")
    ax.set_xlabel("cosine similarity of the two models' embeddings of the same image")
    ax.set_ylabel("images")
    ax.set_title(title)
    return _save_figure(fig, path)


def write_payload(payload: Dict[str, Any], json_path: Optional[Union[str, Path]], files: List[str],
                  echo: Callable[[str], None]) -> Dict[str, Any]:
    """Write an evaluation's JSON (when asked), list every file it wrote (``files``, which the JSON
    also names), and return the payload."""
    if json_path:
        atomic.write_json(json_path, payload)
        files.append(str(json_path))
    for path in files:
        echo(f"wrote {path}")
    return payload
