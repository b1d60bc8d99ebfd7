"""``loss.png``: the curves of ``logs/phase<i>.csv`` across phases, redrawn as training goes."""
import csv
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from mobilefacenet_k210 import atomic
from mobilefacenet_k210.evaluate.callback import VERIFICATION_METRIC

PLOT_FILE = "loss.png"


def read_history(run_dir: Union[str, Path]) -> List[Tuple[int, List[Dict[str, float]]]]:
    """(phase index, rows) of every ``logs/phase<i>.csv``; one row per epoch, the latest kept if repeated."""
    out = []
    for path in sorted(Path(run_dir, "logs").glob("phase*.csv"), key=lambda p: int(p.stem[5:])):
        rows: Dict[int, Dict[str, float]] = {}
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                try:
                    rows[int(row["epoch"])] = {k: float(v) for k, v in row.items() if v not in ("", "NA")}
                except (KeyError, ValueError):
                    continue
        out.append((int(path.stem[5:]), [rows[e] for e in sorted(rows)]))
    return out


def plot_history(run_dir: Union[str, Path]) -> Optional[Path]:
    """Write ``RUN_DIR/loss.png``: one curve per metric across phases, phases marked by vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = read_history(run_dir)
    if not any(rows for _, rows in history):
        return None
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    offset = 0
    for phase, rows in history:
        x = np.arange(offset + 1, offset + len(rows) + 1)
        ax_loss.plot(x, [r.get("loss", np.nan) for r in rows], label=f"phase {phase} loss")
        if any("val_loss" in r for r in rows):
            ax_loss.plot(x, [r.get("val_loss", np.nan) for r in rows], "--", label=f"phase {phase} val loss")
        for key in ("accuracy", "val_accuracy", VERIFICATION_METRIC):
            if any(key in r for r in rows):
                ax_acc.plot(x, [r.get(key, np.nan) for r in rows], "o-" if key == VERIFICATION_METRIC else "-",
                            markersize=3, label=f"phase {phase} {key}")
        for ax in (ax_loss, ax_acc):
            ax.axvline(offset + 0.5, color="grey", lw=0.5)
        offset += len(rows)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.01))
    for ax in (ax_loss, ax_acc):
        if ax.get_legend_handles_labels()[0]:  # a triplet-only run has no accuracy curve
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return atomic.save_figure(fig, Path(run_dir) / PLOT_FILE, dpi=100)
