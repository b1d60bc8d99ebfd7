"""`make pretrained`'s ``report.md``: the imported model against its source and the targets, then the demo's
sections (verification, export, identification, open set, board) of the recovered model.

Only formatting: every number comes from the results the steps recorded.
"""
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mobilefacenet_k210.config import PretrainedConfig
from mobilefacenet_k210.demo.report import (board_section, config_section, export_section, identify_section,
                                            image_link, open_set_section, pct, steps_section, targets_table,
                                            verification_section)
from mobilefacenet_k210.bench.provenance import machine, timestamp

TARGET_PREFIX = "pretrained_"
"""`make bench` records these figures under this prefix; ``targets.TARGETS`` names them so."""
REPORTED_TARGETS = (
    ("orl_acc_kmodel", "held-out ORL verification, kmodel in nncase's simulator (10-fold, flip)", pct),
    ("memory_total_bytes", "nncase memory total (the kmodel's RAM on the board)", lambda v: f"{v:,} bytes"),
    ("kpu_mac_share", "multiply-adds on the KPU", pct),
    ("total_seconds", "`make pretrained`, all steps", lambda v: f"{v:,.0f} s"),
)


def _import_section(imported: Dict[str, Any], source: Dict[str, Any], recovered: Dict[str, Any],
                    config: PretrainedConfig) -> List[str]:
    model = imported["model"]
    phases = recovered.get("phases", [])
    return [
        "## 1. Import and recovery", "",
        f"Source `{source['path']}` (sha256 `{source['sha256'][:16]}...`): {imported['layers']} convolutions "
        f"({imported['folded_linear_1x1']} linear 1x1 folded into the one before), activations "
        f"{', '.join(imported['source_activations'])}, stride-2 padding {', '.join(imported['stride2_padding'])}. "
        f"Our MobileFaceNet of the same shape: width {model['width_multiplier']:g}, {model['embedding_size']}-d, "
        f"input orientation `{model['input_orientation']}` (it computes on the crop turned by 180 degrees, where "
        "TensorFlow's 'same' stride-2 padding is the KPU's symmetric one; the board's alignment template is "
        "turned to match).", "",
        f"The exact copy (per-channel PReLU) against the source on {imported['faces']} training faces: embedding "
        f"cosine min {imported['exact_cosine_min']:.6f}, mean {imported['exact_cosine_mean']:.6f}. Its K210 twin "
        f"(ReLU for PReLU) before recovery: mean {imported['twin_cosine_mean']:.3f}, min "
        f"{imported['twin_cosine_min']:.3f}.", "",
        f"Recovery ({config.recover_config}, seed {config.seed}): "
        + "; ".join(f"{p.get('head')} for {p.get('epochs')} epochs of {p.get('steps_per_epoch')} steps, "
                    f"{p.get('seconds', 0):.0f} s" for p in phases) + ".", "",
    ]


def render(out: Path, config: PretrainedConfig, results: Dict[str, Any], seconds: Dict[str, float],
           figures: Dict[str, Any], steps: Sequence[Tuple[str, str, Any]],
           usage: Optional[Dict[str, Dict[str, float]]] = None) -> str:
    """Markdown for ``OUT/report.md``; image links are relative to ``OUT``; ``usage``: each step's CPU
    seconds and load average."""
    lines = [
        "# mobilefacenet_k210: the pretrained MobileFaceNet on the K210", "",
        f"Written {timestamp()} on {machine()}. ORL faces (AT&T Laboratories Cambridge): recovery on the photos "
        f"of s{config.train[0]}-s{config.train[-1]} (no labels), every figure below measured on "
        f"s{config.test[0]}-s{config.test[-1]}, which nothing before the report saw. The source model: "
        f"{pct(figures['orl_acc_source'])} on the same pairs.", "",
        "## Targets", "", *targets_table(figures, REPORTED_TARGETS, TARGET_PREFIX), "",
        *steps_section(steps, seconds, usage),
        *_import_section(results["import"], results["source"], results["recover"], config),
        image_link(out, out / "train" / "loss.png", "recovery loss"), "",
        *verification_section("## 2. Verification on held-out identities (10 folds, InsightFace protocol)", out,
                              results["evaluate"]),
        *export_section("## 3. Export for the K210", out, results["export"]),
        *identify_section("## 4. Enroll and identify", results["identify"]),
        *open_set_section(out, results.get("openset"), results["board"].get("threshold") or {}),
        *board_section("## 5. Board", results["board"]),
        *config_section("## Configuration", config),
    ]
    return "\n".join(lines)
