"""`make bench`'s distill stage: the teacher, the demo's from-scratch student and a distilled student
side by side on the demo's held-out pairs.

The teacher's (SFace) embeddings are added to the demo's shards once, a student is trained on them
(``DemoConfig.distill_config``: the demo's photos and augmentations, taught by the teacher), exported
as the demo exports its own, and the three are compared on the same test pairs. Its steps run like
the demo's (:class:`~mobilefacenet_k210.demo.run.Demo`: recorded, skipped when made from the same
inputs, chained after the demo's last step so that a changed demo reruns them), in ``WORK/distill``.

The held-out cosine is the mean cosine between a student's and the teacher's embeddings of the
held-out faces: it says how much of the teacher's function the student learned (a from-scratch
student, never shown the teacher, sits near 0 whatever its accuracy).
"""
import time
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np

from mobilefacenet_k210.config import DemoConfig
from mobilefacenet_k210.demo.run import Demo
from mobilefacenet_k210.errors import Mfk210Error

TEACHER = "sface"
"""The teacher (``teacher.loader.load_teacher``): SFace, fetched once."""


class DemoNotFinishedError(Mfk210Error, RuntimeError):
    """The distill stage asked for a demo folder whose steps are missing or were made from other inputs."""


class DistillSteps(Demo):
    """The distill stage's steps, run and recorded like the demo's, in their own folder."""

    steps = [
        ("teacher", "the teacher's (SFace) embeddings of each training crop and its mirror, added to the shards", 2),
        ("distill", "train the distilled student on the same photos, taught by the teacher", 25),
        ("distill_export", "export the distilled student: TFLite, kmodel, parity report", 10),
        ("distill_compare", "teacher, from-scratch and distilled students on the test pairs; cosine to the teacher",
         5),
    ]
    step_config = {"distill": ("distill_config",),
                   "distill_export": ("calibrate_method", "calibration_samples", "int8_tflite")}
    step_outputs = {"teacher": ("shards_teacher",), "distill": ("train_distill",),
                    "distill_export": ("export_distill",), "distill_compare": ("compare",)}


def add_teacher_step(demo_out: Path, work: Path) -> Dict[str, Any]:
    """``work/shards_teacher``: the demo's shards with the teacher's embeddings of each crop and mirror."""
    from mobilefacenet_k210.teacher.loader import load_teacher
    from mobilefacenet_k210.teacher.shards import add_teacher

    teacher = load_teacher(TEACHER)
    start = time.perf_counter()
    meta = add_teacher(demo_out / "shards", teacher, work / "shards_teacher")
    seconds = time.perf_counter() - start
    records = sum(int(s["records"]) for s in meta["shards"])
    # each record is embedded twice (the crop and its mirror)
    return {"teacher": meta["teacher"], "records": records, "seconds": seconds,
            "teacher_img_per_s": 2 * records / seconds if seconds > 0 else 0.0}


def train_distilled(demo_out: Path, work: Path, train_config: str) -> Dict[str, Any]:
    """Train the distilled student into ``work/train_distill``, its checkpoint chosen on the demo's select pairs."""
    from mobilefacenet_k210 import config as config_lib
    from mobilefacenet_k210.training import run as training_run

    cfg = config_lib.load(config_lib.TrainConfig, train_config, [f"verification.select={demo_out / 'select.bin'}"])
    return training_run.train(cfg, work / "shards_teacher", work / "train_distill")


def export_distilled(demo_out: Path, work: Path, config: Any) -> Dict[str, Any]:
    """The distilled student's TFLite and kmodel in ``work/export_distill`` (``config``: the demo's
    ExportConfig, the same as the from-scratch student's), with its parity report (as the step records
    it: :meth:`ExportResult.to_dict`)."""
    from mobilefacenet_k210.export.chain import export_model

    return export_model(work / "train_distill", demo_out / "shards", work / "export_distill", config,
                        holdout=demo_out / "aligned" / "test").to_dict()


def aligned_crops(folder: Path) -> np.ndarray:
    """Every aligned crop (uint8 RGB) of an identity-per-folder tree, in name order."""
    import cv2

    paths = sorted(folder.glob("*/*.png"))
    return np.stack([cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for p in paths])


def heldout_cosine(student: str, teacher: Any, crops: np.ndarray) -> float:
    """Mean cosine between ``student``'s embeddings (any evaluate backend) and the teacher's of ``crops``;
    NaN when their sizes differ (the training-only projection is not part of an exported student)."""
    from mobilefacenet_k210.runtime.backends import load_backend
    from mobilefacenet_k210.teacher.loader import l2_normalize

    s = l2_normalize(load_backend(student).embed(crops, progress=False))
    t = teacher.embed(crops)
    if s.shape != t.shape:
        return float("nan")
    return float(np.mean(np.sum(s * t, axis=1)))


def compare(demo_out: Path, work: Path, scratch: Dict[str, Any]) -> Dict[str, Any]:
    """Teacher, from-scratch and distilled students (Keras and kmodel) on the test pairs, and the
    students' held-out cosine to the teacher on the test faces. ``scratch``: the demo's evaluate step
    result, which already holds the from-scratch student's accuracy on the same pairs (same flip)."""
    from mobilefacenet_k210.config import EvalConfig
    from mobilefacenet_k210.demo.steps import model_paths
    from mobilefacenet_k210.evaluate import evaluate as evaluate_fn
    from mobilefacenet_k210.evaluate import report
    from mobilefacenet_k210.teacher.loader import load_teacher

    teacher = load_teacher(TEACHER)
    scratch_models = model_paths(demo_out)
    models = {"teacher": str(teacher.path), "scratch_keras": scratch_models["keras"],
              "scratch_kmodel": scratch_models["kmodel"], "distill_keras": str(work / "train_distill"),
              "distill_kmodel": str(work / "export_distill" / "model.kmodel")}
    fresh = [path for key, path in models.items() if not key.startswith("scratch")]
    cfg = EvalConfig(models=fresh, bins=[str(demo_out / "test.bin")], flip=True,
                     json=str(work / "compare" / "results.json"), out=str(work / "compare"))
    accuracy = {**scratch["results"], **evaluate_fn(cfg)["results"]}
    set_name = report.set_name(demo_out / "test.bin")
    crops = aligned_crops(demo_out / "aligned" / "test")
    rows: Dict[str, Any] = {}
    for key, path in models.items():
        r = accuracy[path][set_name]
        rows[key] = {"model": path, "accuracy": r["accuracy"], "accuracy_std": r["accuracy_std"]}
        if key != "teacher":
            rows[key]["heldout_cosine"] = heldout_cosine(path, teacher, crops)
    return {"rows": rows, "heldout_faces": int(len(crops)), "teacher": teacher.info()}


def figures(results: Dict[str, Any]) -> Dict[str, Any]:
    """``make bench``'s distillation figures from the recorded step results."""
    from mobilefacenet_k210.export.result import ExportResult

    rows = results["distill_compare"]["rows"]
    export = ExportResult.from_dict(results["distill_export"], "the distill_export step record")
    return {
        "orl_acc_teacher": rows["teacher"]["accuracy"],
        "orl_acc_scratch_keras": rows["scratch_keras"]["accuracy"],
        "orl_acc_distill_keras": rows["distill_keras"]["accuracy"],
        "orl_acc_distill_keras_std": rows["distill_keras"]["accuracy_std"],
        "orl_acc_distill_kmodel": rows["distill_kmodel"]["accuracy"],
        "distill_cosine_heldout": rows["distill_keras"]["heldout_cosine"],
        "scratch_cosine_heldout": rows["scratch_keras"]["heldout_cosine"],
        "teacher_img_per_s": results["teacher"]["teacher_img_per_s"],
        **export.figures("distill_"),
    }


def distill_figures(demo_out: Union[str, Path], work: Union[str, Path],
                    config: Optional[DemoConfig] = None) -> Dict[str, Any]:
    """The bench stage: the distill steps after the finished demo in ``demo_out`` (run or skipped), in
    ``work``; returns :func:`figures`. ``config``: the demo's (its distill recipe and export settings)."""
    demo_out, work = Path(demo_out), Path(work)
    config = config or DemoConfig()
    demo = Demo(demo_out, config)
    missing = demo.replay()
    if missing:
        raise DemoNotFinishedError(f"{demo_out / 'steps' / (missing[0] + '.json')}: the demo's step {missing[0]} is "
                                   f"missing or was made from other inputs; run `mfk210 demo --out {demo_out}` "
                                   "first (the bench's demo stage does)")
    steps = DistillSteps(work, config, after=demo.previous)
    steps.run("teacher", lambda: add_teacher_step(demo_out, work))
    steps.run("distill", lambda: train_distilled(demo_out, work, config.distill_config))
    steps.run("distill_export", lambda: export_distilled(demo_out, work, config.export_config()))
    steps.run("distill_compare", lambda: compare(demo_out, work, demo.results["evaluate"]))
    return {**figures(steps.results), "distill_seconds": float(sum(steps.seconds.values()))}
