"""The demo's ``report.md``: what ran, how long, the numbers against the targets, and the pictures.

Only formatting: every number comes from the results the demo's steps recorded.
"""
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mobilefacenet_k210.config import DemoConfig, recorded_gallery_mode, to_dict
from mobilefacenet_k210.bench.provenance import machine, timestamp
from mobilefacenet_k210.bench.targets import TARGETS


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def image_link(out: Path, path: Path, alt: str) -> str:
    return f"![{alt}]({path.relative_to(out)})" if path.is_file() else f"*({alt}: {path.name} missing)*"


# (figure, what the row says, how the measured value is shown); the targets themselves: targets.TARGETS
REPORTED_TARGETS = (
    ("orl_acc_keras", "held-out ORL verification, Keras (10-fold)", pct),
    ("orl_acc_drop", "held-out ORL verification, kmodel in nncase's simulator: drop vs Keras", pct),
    ("kmodel_bytes", "kmodel size", lambda v: f"{v:,} bytes"),
    ("kpu_mac_share", "multiply-adds on the KPU", pct),
    ("cosine_kmodel_mean", "embedding cosine Keras vs kmodel, mean", lambda v: f"{v:.4f}"),
    ("cosine_kmodel_min", "embedding cosine Keras vs kmodel, min", lambda v: f"{v:.4f}"),
)


def targets_table(figures: Dict[str, Any], rows: Sequence[Tuple[str, str, Any]] = REPORTED_TARGETS,
                  prefix: str = "") -> List[str]:
    """Markdown rows of ``rows`` (figure, what it is, how it is shown) against ``TARGETS[prefix + figure]``."""
    named = {prefix + key: value for key, value in figures.items()}
    lines = ["| figure | measured | target | met |", "|---|---|---|---|"]
    for key, what, shown in rows:
        target = TARGETS[prefix + key]
        met = "yes" if target.met(prefix + key, named) else "**no**"
        lines.append(f"| {what} | {shown(figures[key])} | {target.text} | {met} |")
    return lines


def open_set_section(out: Path, openset: Any, threshold: Dict[str, Any]) -> List[str]:
    """Section 5b: open-set figures of the kmodel and the threshold the board files carry."""
    if not openset:
        return []
    from mobilefacenet_k210.evaluate.identification import describe_mode

    first = next(iter(openset["results"].values()))
    method = first["gallery_size_method"]
    mode = describe_mode(first.get("gallery_mode"))
    carried = (f"The board files carry score > {threshold['score']:.1f} ({threshold.get('from', '?')}, "
               f"FPIR {100 * threshold['fpir']:g}% for a gallery of {threshold['gallery_size']} people, "
               f"gallery: {describe_mode(threshold.get('gallery_mode'))}"
               + ("; the highest impostor score seen, as the measured comparisons cannot resolve that rate)."
                  if threshold.get("limited") else ").")
               if threshold.get("gallery_size") else
               f"The board files carry score > {threshold.get('score', float('nan')):.1f} from 1:1 verification.")
    return ["## 5b. Open-set identification (as the board does it)", "",
            "Half of the held-out people enrolled, the other half strangers, then swapped; rank-1 and FNIR "
            "(enrolled people not named correctly) at FPIR (strangers given a name), board score in (). "
            f"Gallery: {mode}, as the board's gallery holds them.",
            "", openset["table"], f"Threshold for N people: {method}. {carried}", "",
            image_link(out, out / "openset" / "det_identification.png", "DET curve and threshold against gallery size"),
            ""]


def steps_section(steps: Sequence[Tuple[str, str, Any]], seconds: Dict[str, float],
                  usage: Optional[Dict[str, Dict[str, float]]] = None) -> List[str]:
    """What ran: wall and CPU seconds per step, and the machine's load average at its end."""
    usage = usage or {}

    def cell(name: str, key: str, fmt: str) -> str:
        value = usage.get(name, {}).get(key)
        return "-" if value is None else format(value, fmt)

    total_cpu = sum(u.get("cpu_seconds", 0.0) for u in usage.values())
    return ["## What ran", "", "| step | what | seconds | CPU seconds | load average |", "|---|---|---|---|---|",
            *[f"| {name} | {what} | {seconds.get(name, 0):.0f} | {cell(name, 'cpu_seconds', '.0f')} | "
              f"{cell(name, 'load_average', '.1f')} |" for name, what, *_ in steps],
            f"| total | | {sum(seconds.values()):.0f} | {total_cpu:.0f} | |", "",
            f"CPU seconds count this process and the ones it started (on {os.cpu_count()} cores); a load average "
            f"above the number of cores means other work shared them, and the seconds are upper bounds.", ""]


def verification_section(heading: str, out: Path, evaluated: Dict[str, Any]) -> List[str]:
    """The evaluate step's tables, ROC and Keras-vs-kmodel cosine pictures."""
    return [heading, "", evaluated["table"], "", evaluated.get("tar_table", ""), "",
            image_link(out, out / "evaluate" / "roc_test.png", "ROC of Keras and kmodel"),
            image_link(out, out / "evaluate" / "cosine_test.png", "cosine of Keras vs kmodel embeddings"), ""]


def export_section(heading: str, out: Path, export: Dict[str, Any]) -> List[str]:
    """The export step's kmodel in a few words, with its cosine histogram."""
    return [heading, "",
            f"nncase {export.get('nncase_version')}, {export.get('calibrate_method')} calibration on "
            f"{export.get('calibration_samples')} training faces; parity measured on held-out faces. "
            f"kmodel v{export.get('kmodel_version')}, {export.get('kmodel_bytes', 0):,} bytes, "
            f"{pct(export.get('kpu_mac_share', 0))} of multiply-adds on the KPU, nncase memory total "
            f"{export.get('memory_total_bytes') or 0:,} bytes. Full report: [export/report.md](export/report.md).",
            "", image_link(out, out / "export" / "cosine_histogram.png", "embedding cosine histograms"), ""]


def identify_section(heading: str, ident: Dict[str, Any]) -> List[str]:
    """Closed-set identification of the held-out people by Keras and the kmodel, as the board scores it."""
    return [heading, "",
            f"{ident['enrolled_photos_per_person']} photos of each held-out person enrolled (gallery mode "
            f"{recorded_gallery_mode(ident.get('gallery_mode'))}); their "
            f"{ident['probes']} other photos identified with the board's score and threshold:", "",
            "| model | correct name | closest is right (rank-1) | unknown | threshold (board score) |",
            "|---|---|---|---|---|",
            *[f"| {m} | {pct(ident[m]['accuracy'])} | {pct(ident[m]['rank1'])} | {ident[m]['unknown']} | "
              f"{ident[m]['threshold_score']:.1f} |" for m in ("keras", "kmodel")], "",
            f"The kmodel (in nncase's simulator) gives the same answer as Keras on {ident['same_names']} of "
            f"{ident['probes']} photos.", ""]


def board_section(heading: str, board: Dict[str, Any]) -> List[str]:
    """The kflash package and the board files written."""
    return [heading, "",
            f"`{board['kfpkg']}` (kflash package) and the CanMV `feat/kpu` files in `board/sd/`: "
            + ", ".join(Path(f).name for f in board["files"]) + ". See docs/board.md.", ""]


def config_section(heading: str, config: Any) -> List[str]:
    """The run's config, field by field."""
    return [heading, "", "```", *[f"{k}: {v}" for k, v in to_dict(config).items()], "```", ""]


def render(out: Path, config: DemoConfig, results: Dict[str, Any], seconds: Dict[str, float],
           figures: Dict[str, Any], steps: Sequence[Tuple[str, str, Any]],
           usage: Optional[Dict[str, Dict[str, float]]] = None) -> str:
    """Markdown for ``OUT/report.md``; image links are relative to ``OUT``; ``steps`` are (name, what, ...);
    ``usage``: each step's CPU seconds and load average, as its record holds them."""
    faces, shards, train = results["faces"], results["shards"], results["train"]
    ident, export, board = results["identify"], results["export"], results["board"]
    lines = [
        "# mobilefacenet_k210 demo report",
        "",
        f"Written {timestamp()} on {machine()}. "
        f"ORL faces (AT&T Laboratories Cambridge): training identities s{config.train[0]}-s{config.train[-1]}, "
        f"checkpoint chosen on s{config.select[0]}-s{config.select[-1]}, every figure below measured on "
        f"s{config.test[0]}-s{config.test[-1]}, which training and checkpoint selection never saw.",
        "",
        "## Targets",
        "",
        *targets_table(figures),
        "",
        *steps_section(steps, seconds, usage),
        "## 1. Photos to shards",
        "",
        f"Raw photos: {faces['photos']['train']} for training, {faces['photos']['select']} for checkpoint "
        f"selection, {faces['photos']['test']} held out. MTCNN aligned {shards['faces']} of {shards['photos']} "
        f"training photos ({shards['rejected']} rejected) at {shards['images_per_s']:.1f} photos/s. "
        f"The per-identity policy ({config.build_config}) kept {shards['identities']['kept']} of "
        f"{shards['identities']['input']} identities and wrote {shards['records'].get('train', 0)} training records "
        f"(originals and augmented copies).",
        "",
        image_link(out, out / "inspect" / "contact_sheet.png", "contact sheet of the training shards"),
        "",
        "## 2. Training",
        "",
        f"Config {config.train_config}; {train.get('completed_phases', '?')} phase(s): "
        + "; ".join(f"{p.get('head', '?')} for {p.get('epochs', '?')} epochs" for p in train.get("phases", []))
        + (f". Best checkpoint by {train['best']['monitor']} = {train['best']['value']:.4f}"
           if train.get("best") else "") + ".",
        "",
        image_link(out, out / "train" / "loss.png", "loss and accuracy curves"),
        "",
        *verification_section("## 3. Verification on held-out identities (10 folds, InsightFace protocol)", out,
                              results["evaluate"]),
        *export_section("## 4. Export for the K210", out, export),
        *identify_section("## 5. Enroll and identify", ident),
        *open_set_section(out, results.get("openset"), board.get("threshold") or {}),
        *board_section("## 6. Board", board),
        *config_section("## Demo configuration", config),
    ]
    return "\n".join(lines)
