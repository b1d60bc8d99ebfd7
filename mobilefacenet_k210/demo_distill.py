"""The demo's distilled student: the teacher's embeddings added to the demo's shards once, a student
trained on them (``DemoConfig.distill_config``), exported like the from-scratch one, and teacher,
from-scratch student and distilled student compared on the same held-out pairs.

The held-out cosine is the mean cosine between a student's and the teacher's embeddings of the
held-out faces: it says how much of the teacher's function the student learned (a from-scratch
student, never shown the teacher, sits near 0 whatever its accuracy).
"""
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

TEACHER = "sface"
"""The demo's teacher (``teacher.models.load_teacher``): SFace, fetched once."""


def add_teacher_step(out: Path) -> Dict[str, Any]:
    """``out/shards_teacher``: the demo's shards with the teacher's embeddings of each crop and mirror."""
    from mobilefacenet_k210.teacher.models import load_teacher
    from mobilefacenet_k210.teacher.shards import add_teacher

    teacher = load_teacher(TEACHER)
    start = time.perf_counter()
    meta = add_teacher(out / "shards", teacher, out / "shards_teacher")
    seconds = time.perf_counter() - start
    records = sum(int(s["records"]) for s in meta["shards"])
    # each record is embedded twice (the crop and its mirror)
    return {"teacher": meta["teacher"], "records": records, "seconds": seconds,
            "teacher_img_per_s": 2 * records / seconds if seconds > 0 else 0.0}


def train_distilled(out: Path, train_config: str) -> Dict[str, Any]:
    """Train the distilled student into ``out/train_distill``, its checkpoint chosen on the select pairs."""
    from mobilefacenet_k210 import config as config_lib
    from mobilefacenet_k210 import train as train_lib

    cfg = config_lib.load(config_lib.TrainConfig, train_config, [f"verification.select={out / 'select.bin'}"])
    return train_lib.train(cfg, out / "shards_teacher", out / "train_distill")


def export_distilled(out: Path, config: Any) -> Dict[str, Any]:
    """The distilled student's TFLite and kmodel in ``out/export_distill`` (``config``: the demo's
    ExportConfig, the same as the from-scratch student's), with its parity report (as the step records
    it: :meth:`ExportResult.to_dict`)."""
    from mobilefacenet_k210.export.chain import export_model

    return export_model(out / "train_distill", out / "shards", out / "export_distill", config,
                        holdout=out / "aligned" / "test").to_dict()


def aligned_crops(folder: Path) -> np.ndarray:
    """Every aligned crop (uint8 RGB) of an identity-per-folder tree, in name order."""
    import cv2

    paths = sorted(folder.glob("*/*.png"))
    return np.stack([cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for p in paths])


def heldout_cosine(student: str, teacher: Any, crops: np.ndarray) -> float:
    """Mean cosine between ``student``'s embeddings (any evaluate backend) and the teacher's of ``crops``;
    NaN when their sizes differ (the training-only projection is not part of an exported student)."""
    from mobilefacenet_k210.evaluate.backends import load_backend
    from mobilefacenet_k210.teacher.models import l2_normalize

    s = l2_normalize(load_backend(student).embed(crops, progress=False))
    t = teacher.embed(crops)
    if s.shape != t.shape:
        return float("nan")
    return float(np.mean(np.sum(s * t, axis=1)))


def compare(out: Path, scratch: Dict[str, Any]) -> Dict[str, Any]:
    """Teacher, from-scratch and distilled students (Keras and kmodel) on the test pairs, and the
    students' held-out cosine to the teacher on the test faces. ``scratch``: the evaluate step's
    result, which already holds the from-scratch student's accuracy on the same pairs (same flip)."""
    from mobilefacenet_k210.config import EvalConfig
    from mobilefacenet_k210.evaluate import evaluate as evaluate_fn
    from mobilefacenet_k210.evaluate import report
    from mobilefacenet_k210.teacher.models import load_teacher

    teacher = load_teacher(TEACHER)
    models = {"teacher": str(teacher.path), "scratch_keras": str(out / "train"),
              "scratch_kmodel": str(out / "export" / "model.kmodel"), "distill_keras": str(out / "train_distill"),
              "distill_kmodel": str(out / "export_distill" / "model.kmodel")}
    fresh = [path for key, path in models.items() if not key.startswith("scratch")]
    cfg = EvalConfig(models=fresh, bins=[str(out / "test.bin")], flip=True,
                     json=str(out / "distill" / "results.json"), out=str(out / "distill"))
    accuracy = {**scratch["results"], **evaluate_fn(cfg)["results"]}
    set_name = report.set_name(out / "test.bin")
    crops = aligned_crops(out / "aligned" / "test")
    rows: Dict[str, Any] = {}
    for key, path in models.items():
        r = accuracy[path][set_name]
        rows[key] = {"model": path, "accuracy": r["accuracy"], "accuracy_std": r["accuracy_std"]}
        if key != "teacher":
            rows[key]["heldout_cosine"] = heldout_cosine(path, teacher, crops)
    return {"rows": rows, "heldout_faces": int(len(crops)), "teacher": teacher.info()}


def figures(results: Dict[str, Any]) -> Dict[str, Any]:
    """The demo's (and ``make bench``'s) distillation figures from the recorded step results."""
    from mobilefacenet_k210.export.result import ExportResult

    rows = results["distill_compare"]["rows"]
    export = ExportResult.from_dict(results["distill_export"], "the distill_export step record")
    return {
        "orl_acc_teacher": rows["teacher"]["accuracy"],
        "orl_acc_distill_keras": rows["distill_keras"]["accuracy"],
        "orl_acc_distill_kmodel": rows["distill_kmodel"]["accuracy"],
        "distill_cosine_heldout": rows["distill_keras"]["heldout_cosine"],
        "scratch_cosine_heldout": rows["scratch_keras"]["heldout_cosine"],
        "teacher_img_per_s": results["teacher"]["teacher_img_per_s"],
        "distill_kmodel_bytes": export.kmodel_bytes,
        "distill_kpu_mac_share": export.kpu_mac_share,
        "distill_cosine_kmodel_mean": export.cosine_kmodel_mean,
    }


def report_section(results: Dict[str, Any]) -> List[str]:
    """The report's side-by-side table of teacher, from-scratch and distilled students."""
    if "distill_compare" not in results:
        return []
    c = results["distill_compare"]
    names = {"teacher": f"teacher ({c['teacher']['name']}, {c['teacher']['dim']}-d)",
             "scratch_keras": "from-scratch student, Keras", "scratch_kmodel": "from-scratch student, kmodel",
             "distill_keras": "distilled student, Keras", "distill_kmodel": "distilled student, kmodel"}
    lines = ["## Teacher, from-scratch and distilled students", "",
             f"Same training photos; 10-fold verification on the held-out test pairs (flip); cosine to the "
             f"teacher's embedding over the {c['heldout_faces']} held-out test faces.", "",
             "| model | accuracy | cosine to teacher |", "|---|---|---|"]
    for key, name in names.items():
        r = c["rows"][key]
        cos = r.get("heldout_cosine")
        lines.append(f"| {name} | {100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f}% | "
                     f"{'-' if cos is None else f'{cos:.3f}'} |")
    t = results.get("teacher", {})
    if t:
        lines += ["", f"Teacher embeddings: {t['records']} records, crop and mirror, {t['teacher_img_per_s']:.1f} "
                      f"images/s, once (not once per epoch)."]
    return lines + [""]
