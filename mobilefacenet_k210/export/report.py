"""The export report: ``report.json`` (machine-read by ``make bench``), ``report.md`` and a cosine histogram PNG."""
from pathlib import Path
from typing import Any, Dict, Union

import numpy as np

from mobilefacenet_k210 import atomic
from mobilefacenet_k210.export.result import REPORT_JSON, ExportResult

REPORT_MD = "report.md"
COSINE_PNG = "cosine_histogram.png"
BACKEND_LABELS = {"tflite": "float TFLite", "int8": "int8 TFLite", "kmodel": "kmodel (nncase simulator)"}


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) embedding arrays."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)


def plot_cosines(cosines: Dict[str, np.ndarray], path: Union[str, Path]) -> Path:
    """Histogram of per-face cosine (each backend vs Keras) as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    low = min(float(np.min(v)) for v in cosines.values())
    bins = np.linspace(min(low, 0.95), 1.0, 41)
    for name, values in cosines.items():
        ax.hist(values, bins=bins, alpha=0.55,
                label=f"{BACKEND_LABELS.get(name, name)}: mean {np.mean(values):.4f}, min {np.min(values):.4f}")
    ax.set_xlabel("cosine similarity to the Keras embedding (held-out faces)")
    ax.set_ylabel("faces")
    ax.set_title("Export parity")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return atomic.save_figure(fig, path, format="png")


def _kb(n: Any) -> str:
    return f"{n:,} B ({n / 1024:.1f} KiB)" if isinstance(n, int) else "-"


def render_markdown(report: Dict[str, Any]) -> str:
    """A person-readable summary of ``report.json``."""
    lines = [f"# Export report: {report['model_name']}", "",
             f"nncase {report['nncase_version']} (runtime {report['nncase_runtime']}), target k210, "
             f"kmodel v{report['kmodel_version']}; "
             + (f"PTQ calibrated with `{report['calibrate_method']}` on {report['calibration_samples']} faces."
                if report["quantized"] else "not quantized (float kmodel: parity only, not deployable)."),
             "", "## Files", "", "| file | size |", "|---|---|"]
    if report.get("input_orientation", "upright") != "upright":
        lines[2:2] = ["", f"The TFLite and the kmodel take the aligned crop turned ({report['input_orientation']}), "
                          "as their `.json` records say: the evaluation backends turn upright crops for them, and "
                          "the board files carry the alignment template turned to match."]
    for name, size in report["files"].items():
        lines.append(f"| {name} | {_kb(size)} |")
    lines += ["", "## Model", "",
              f"- parameters {report['params']:,}, multiply-adds {report['macs_total']:,} per face",
              f"- multiply-adds on the KPU: {report['macs_kpu']:,} = **{100 * report['kpu_mac_share']:.2f}%**",
              f"- KPU operators: {report['kpu_ops']} in {report['kpu_modules']} KPU regions",
              f"- CPU operators: {report['cpu_ops']}",
              f"- convolutions on the CPU: {report['cpu_conv_layers'] or 'none'}"]
    if report.get("ambiguous_layers"):
        lines.append(f"- layers nncase's names do not pin to one node (counted as CPU): {report['ambiguous_layers']}")
    if report.get("unplaced_layers"):
        lines.append(f"- layers not found in nncase's graph (counted as CPU): {report['unplaced_layers']}")
    mem = report.get("memory", {})
    lines += ["", "## Memory (as nncase reports it)", "", "| pool | bytes |", "|---|---|"]
    lines += [f"| {k} | {_kb(v)} |" for k, v in mem.items()]
    lines += ["", f"## Parity on {report['holdout_samples']} held-out faces (cosine to Keras)", "",
              "| backend | mean | min |", "|---|---|---|"]
    for key in ("tflite", "int8", "kmodel"):
        if f"cosine_{key}_mean" in report:
            lines.append(f"| {BACKEND_LABELS[key]} | {report[f'cosine_{key}_mean']:.4f} | "
                         f"{report[f'cosine_{key}_min']:.4f} |")
    lines += ["", f"![cosine histogram]({COSINE_PNG})", "", "## Time per stage", "", "| stage | seconds |",
              "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in report["stage_seconds"].items()]
    if report.get("k210_warnings"):
        lines += ["", "## K210 checker warnings", ""] + [f"- {w}" for w in report["k210_warnings"]]
    return "\n".join(lines) + "\n"


def write_report(result: ExportResult, out_dir: Union[str, Path]) -> None:
    """Write ``report.json`` and ``report.md`` into ``out_dir``."""
    out_dir = Path(out_dir)
    report = result.to_dict()
    atomic.write_json(out_dir / REPORT_JSON, report)
    atomic.write_text(out_dir / REPORT_MD, render_markdown(report))
