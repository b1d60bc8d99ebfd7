"""The demo's ``report.md``: what ran, how long, the numbers against the targets, and the pictures.

Only formatting: every number comes from the results the demo's steps recorded.
"""
import time
from pathlib import Path
from typing import Any, Dict, List

from mobilefacenet_k210.config import DemoConfig, to_dict


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _image(out: Path, path: Path, alt: str) -> str:
    return f"![{alt}]({path.relative_to(out)})" if path.is_file() else f"*({alt}: {path.name} missing)*"


def _targets(figures: Dict[str, Any]) -> List[str]:
    rows = [
        ("held-out ORL verification, Keras (10-fold)", _pct(figures["orl_acc_keras"]), ">= 95%",
         figures["orl_acc_keras"] >= 0.95),
        ("held-out ORL verification, kmodel in nncase's simulator", _pct(figures["orl_acc_kmodel"]),
         "within 0.5 point of Keras", figures["orl_acc_drop"] <= 0.005),
        ("kmodel size", f"{figures['kmodel_bytes']:,} bytes", "<= 1,500,000", figures["kmodel_bytes"] <= 1_500_000),
        ("multiply-adds on the KPU", _pct(figures["kpu_mac_share"]), ">= 98%", figures["kpu_mac_share"] >= 0.98),
        ("embedding cosine Keras vs kmodel, mean", f"{figures['cosine_kmodel_mean']:.4f}", ">= 0.985",
         figures["cosine_kmodel_mean"] >= 0.985),
        ("embedding cosine Keras vs kmodel, min", f"{figures['cosine_kmodel_min']:.4f}", ">= 0.95",
         figures["cosine_kmodel_min"] >= 0.95),
    ]
    lines = ["| figure | measured | target | met |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {'yes' if ok else '**no**'} |" for a, b, c, ok in rows]
    return lines


def render(out: Path, config: DemoConfig, results: Dict[str, Any], seconds: Dict[str, float],
           figures: Dict[str, Any]) -> str:
    """Markdown for ``OUT/report.md``; image links are relative to ``OUT``."""
    from mobilefacenet_k210.bench import machine
    from mobilefacenet_k210.demo import STEPS

    faces, shards, train = results["faces"], results["shards"], results["train"]
    ident, export, board = results["identify"], results["export"], results["board"]
    lines = [
        "# mobilefacenet_k210 demo report",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine()}. "
        f"ORL faces (AT&T Laboratories Cambridge): training identities s{config.train[0]}-s{config.train[-1]}, "
        f"checkpoint chosen on s{config.select[0]}-s{config.select[-1]}, every figure below measured on "
        f"s{config.test[0]}-s{config.test[-1]}, which training and checkpoint selection never saw.",
        "",
        "## Targets",
        "",
        *_targets(figures),
        "",
        "## What ran",
        "",
        "| step | what | seconds |",
        "|---|---|---|",
        *[f"| {name} | {what} | {seconds.get(name, 0):.0f} |" for name, what, _ in STEPS],
        f"| total | | {sum(seconds.values()):.0f} |",
        "",
        "## 1. Photos to shards",
        "",
        f"Raw photos: {faces['photos']['train']} for training, {faces['photos']['select']} for checkpoint "
        f"selection, {faces['photos']['test']} held out. MTCNN aligned {shards['faces']} of {shards['photos']} "
        f"training photos ({shards['rejected']} rejected) at {shards['images_per_s']:.1f} photos/s. "
        f"The per-identity policy ({config.build_config}) kept {shards['identities']['kept']} of "
        f"{shards['identities']['input']} identities and wrote {shards['records'].get('train', 0)} training records "
        f"(originals and augmented copies).",
        "",
        _image(out, out / "inspect" / "contact_sheet.png", "contact sheet of the training shards"),
        "",
        "## 2. Training",
        "",
        f"Config {config.train_config}; {train.get('completed_phases', '?')} phase(s): "
        + "; ".join(f"{p.get('head', '?')} for {p.get('epochs', '?')} epochs" for p in train.get("phases", []))
        + (f". Best checkpoint by {train['best']['monitor']} = {train['best']['value']:.4f}"
           if train.get("best") else "") + ".",
        "",
        _image(out, out / "train" / "loss.png", "loss and accuracy curves"),
        "",
        "## 3. Verification on held-out identities (10 folds, InsightFace protocol)",
        "",
        results["evaluate"]["table"],
        "",
        results["evaluate"].get("tar_table", ""),
        "",
        _image(out, out / "evaluate" / "roc_test.png", "ROC of Keras and kmodel"),
        _image(out, out / "evaluate" / "cosine_test.png", "cosine of Keras vs kmodel embeddings"),
        "",
        "## 4. Export for the K210",
        "",
        f"nncase {export.get('nncase_version')}, {export.get('calibrate_method')} calibration on "
        f"{export.get('calibration_samples')} training faces; parity measured on held-out faces. "
        f"kmodel v{export.get('kmodel_version')}, {export.get('kmodel_bytes', 0):,} bytes, "
        f"{_pct(export.get('kpu_mac_share', 0))} of multiply-adds on the KPU. Full report: "
        f"[export/report.md](export/report.md).",
        "",
        _image(out, out / "export" / "cosine_histogram.png", "embedding cosine histograms"),
        "",
        "## 5. Enroll and identify",
        "",
        f"{ident['enrolled_photos_per_person']} photos of each held-out person enrolled; their "
        f"{ident['probes']} other photos identified with the board's score and threshold:",
        "",
        "| model | correct name | closest is right (rank-1) | unknown | threshold (board score) |",
        "|---|---|---|---|---|",
        *[f"| {m} | {_pct(ident[m]['accuracy'])} | {_pct(ident[m]['rank1'])} | {ident[m]['unknown']} | "
          f"{ident[m]['threshold_score']:.1f} |" for m in ("keras", "kmodel")],
        "",
        f"The kmodel (in nncase's simulator) gives the same answer as Keras on {ident['same_names']} of "
        f"{ident['probes']} photos.",
        "",
        "## 6. Board",
        "",
        f"`{board['kfpkg']}` (kflash package) and the CanMV `feat/kpu` files in `board/sd/`: "
        + ", ".join(Path(f).name for f in board["files"]) + ". See the README's *On the board*.",
        "",
        "## Demo configuration",
        "",
        "```",
        *[f"{k}: {v}" for k, v in to_dict(config).items()],
        "```",
        "",
    ]
    return "\n".join(lines)
