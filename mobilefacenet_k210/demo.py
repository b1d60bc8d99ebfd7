"""`make demo`: the whole mission on the ORL faces, from raw photos to a verified kmodel.

Each step calls the package's own stage functions (the same ones the CLI calls) and records its
result under ``OUT/steps/<step>.json`` when it finishes, so a second run skips finished steps and an
interrupted one resumes (the builder and training also resume inside their step). Everything lands
in ``OUT`` (default ``runs/demo``), ending with ``report.md``.
"""
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

from mobilefacenet_k210 import atomic
from mobilefacenet_k210.config import DemoConfig

# rough minutes per step on 2 CPU cores, for the time estimate printed as the demo goes
STEPS = [
    ("faces", "fetch the ORL faces and lay out train/select/test photo folders", 0.3),
    ("shards", "MTCNN-align the training photos, apply the per-identity policy, write shards", 1.0),
    ("aligned", "MTCNN-align the held-out photos (checkpoint selection and test identities)", 0.5),
    ("pairs", "write verification pairs (.bin) of held-out identities", 0.1),
    ("train", "train: softmax, then ArcFace from the softmax weights", 3.0),
    ("export", "export: float TFLite, int8 TFLite, kmodel (nncase) with the parity report", 1.5),
    ("evaluate", "10-fold verification of the Keras model and the kmodel on the test identities", 0.5),
    ("identify", "enroll the test identities, identify their unseen photos (kmodel in the simulator)", 0.3),
    ("board", "package the kmodel (.kfpkg) and the CanMV board files with the measured threshold", 0.1),
    ("inspect", "contact sheet of the training shards", 0.2),
]


class Demo:
    """Runs the steps in order, skipping those whose result is already recorded."""

    def __init__(self, out: Union[str, Path], config: DemoConfig, root: Union[str, Path] = "."):
        self.out = Path(out)
        self.config = config
        self.root = Path(root)
        self.results: Dict[str, Any] = {}
        self.seconds: Dict[str, float] = {}

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def run(self, name: str, fn: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
        record = self.path("steps", f"{name}.json")
        index = [s[0] for s in STEPS].index(name)
        what = STEPS[index][1]
        left = sum(m for s, _, m in STEPS[index:] if not self.path("steps", f"{s}.json").is_file())
        if record.is_file():
            saved = json.loads(record.read_text())
            self.results[name], self.seconds[name] = saved["result"], saved["seconds"]
            print(f"[{index + 1}/{len(STEPS)}] {name}: done before ({saved['seconds']:.0f} s), skipped", flush=True)
            return self.results[name]
        print(f"\n[{index + 1}/{len(STEPS)}] {name}: {what} (about {left:.0f} min left in the demo)", flush=True)
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
        atomic.write_json(record, {"result": result, "seconds": seconds})
        self.results[name], self.seconds[name] = result, seconds
        print(f"[{index + 1}/{len(STEPS)}] {name}: finished in {seconds:.0f} s", flush=True)
        return result


def _copy_identity(src: Path, dst: Path, count: Optional[int] = None) -> int:
    photos = sorted(src.glob("*.pgm"), key=lambda p: int(p.stem))[:count]
    dst.mkdir(parents=True, exist_ok=True)
    for p in photos:
        if not (dst / p.name).is_file():
            shutil.copyfile(p, dst / p.name)
    return len(photos)


def lay_out_faces(out: Path, config: DemoConfig) -> Dict[str, Any]:
    """Copy ORL photos into raw/train, raw/select and raw/test identity folders."""
    from mobilefacenet_k210.data.orl import fetch_orl

    orl = fetch_orl()
    counts: Dict[str, Dict[str, int]] = {}
    for group in ("train", "select", "test"):
        counts[group] = {}
        for i in getattr(config, group):
            name = f"s{i}"
            limit = config.reduced_photos.get(name) if group == "train" else None
            counts[group][name] = _copy_identity(orl / name, out / "raw" / group / name, limit)
    return {"orl": str(orl), "photos": {g: sum(c.values()) for g, c in counts.items()}, "counts": counts}


def align_tree(src: Path, dst: Path, workers: int) -> Dict[str, Any]:
    """Aligned 112x112 PNG crops of an identity-per-folder tree (builder with no policy, then unpacked)."""
    from mobilefacenet_k210.config import BuildConfig
    from mobilefacenet_k210.data import builder, policy, tfrecord

    shards = dst.with_name(dst.name + "_shards")
    cfg = BuildConfig(workers=workers, val_fraction=0.0, policy=policy.preset("none"))
    summary = builder.build(src, shards, cfg)
    import cv2
    import numpy as np

    meta = tfrecord.load_metadata(shards)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    import tensorflow as tf

    count = 0
    for f in tfrecord.shard_files(shards, "train", meta):
        for raw in tf.data.TFRecordDataset(str(f)).as_numpy_iterator():
            rec = tfrecord.decode_record(raw)
            image = cv2.imdecode(np.frombuffer(rec[tfrecord.IMAGE], np.uint8), cv2.IMREAD_COLOR)
            out = tmp / rec[tfrecord.IDENTITY] / (Path(rec[tfrecord.SOURCE]).stem + ".png")
            out.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out), image)
            count += 1
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return {"crops": count, "rejected": summary["rejected"], "images_per_s": summary["images_per_s"]}


def write_pairs(aligned: Path, out: Path, seed: int = 0) -> Dict[str, Any]:
    """All same-person pairs of an aligned folder and as many different-person pairs, as a .bin."""
    from mobilefacenet_k210.evaluate import bins, pairs

    pair_list = pairs.folder_pairs(aligned, seed=seed)
    loaded = pairs.load_pair_images(pair_list, aligned=True)
    bins.write_bin(out, loaded.images, loaded.issame)
    return {"bin": str(out), "pairs": int(len(loaded.issame)), "positive": int(sum(loaded.issame))}


def run_demo(out: Union[str, Path] = "runs/demo", config: Optional[DemoConfig] = None) -> Dict[str, Any]:
    """Run (or resume) the whole demo into ``out`` and return the figures written to report.md."""
    from mobilefacenet_k210 import config as config_lib

    config = config or DemoConfig()
    demo = Demo(out, config)
    out = demo.out
    t0 = time.perf_counter()
    demo.run("faces", lambda: lay_out_faces(out, config))

    def shards() -> Dict[str, Any]:
        from mobilefacenet_k210.data import builder

        cfg = builder.load_build_config(config.build_config, [f"workers={config.workers}"])
        summary = builder.build(out / "raw" / "train", out / "shards", cfg)
        return {k: summary[k] for k in ("photos", "faces", "rejected", "identities", "num_classes", "records",
                                        "seconds", "images_per_s")}

    demo.run("shards", shards)
    demo.run("aligned", lambda: {g: align_tree(out / "raw" / g, out / "aligned" / g, config.workers)
                                 for g in ("select", "test")})
    demo.run("pairs", lambda: {g: write_pairs(out / "aligned" / g, out / f"{g}.bin") for g in ("select", "test")})

    def train() -> Dict[str, Any]:
        from mobilefacenet_k210 import train as train_lib

        cfg = config_lib.load(config_lib.TrainConfig, config.train_config,
                              [f"verification.select={out / 'select.bin'}"])
        return train_lib.train(cfg, out / "shards", out / "train")

    demo.run("train", train)

    def export() -> Dict[str, Any]:
        from mobilefacenet_k210.config import ExportConfig
        from mobilefacenet_k210.export.chain import export_model

        cfg = ExportConfig(calibrate_method=config.calibrate_method, calibration_samples=config.calibration_samples)
        return export_model(out / "train", out / "shards", out / "export", cfg, holdout=out / "aligned" / "test")

    demo.run("export", export)

    def evaluate() -> Dict[str, Any]:
        from mobilefacenet_k210.config import EvalConfig
        from mobilefacenet_k210.evaluate import evaluate as evaluate_fn

        models = [str(out / "train"), str(out / "export" / "model.kmodel")]
        cfg = EvalConfig(models=models, bins=[str(out / "test.bin")], flip=True, compare=models,
                         json=str(out / "evaluate" / "results.json"), out=str(out / "evaluate"))
        return evaluate_fn(cfg)

    demo.run("evaluate", evaluate)
    demo.run("identify", lambda: identify_test(out, config))
    demo.run("board", lambda: board_files(out))
    demo.run("inspect", lambda: inspect_shards(out))
    figures = summarize(demo)
    figures["demo_seconds_this_run"] = time.perf_counter() - t0
    write_report(demo, figures)
    return figures


def _models(out: Path) -> Dict[str, str]:
    return {"keras": str(out / "train"), "kmodel": str(out / "export" / "model.kmodel")}


def _eval_set(out: Path, model: str) -> str:
    """The name under which `evaluate --json` filed a model's result on the test pairs."""
    from mobilefacenet_k210.evaluate import report

    return f"{model}/{report.set_name(out / 'test.bin')}"


def identify_test(out: Path, config: DemoConfig) -> Dict[str, Any]:
    """Enroll the first photos of each test identity, identify the rest, with Keras and with the kmodel."""
    from mobilefacenet_k210.board import gallery, score

    aligned = out / "aligned" / "test"
    enroll_dir = out / "identify" / "enroll"
    probes: List[Path] = []
    truth: List[str] = []
    for person in sorted(p for p in aligned.iterdir() if p.is_dir()):
        photos = sorted(person.glob("*.png"), key=lambda p: (len(p.stem), p.stem))
        (enroll_dir / person.name).mkdir(parents=True, exist_ok=True)
        for p in photos[:config.enroll_photos]:
            shutil.copyfile(p, enroll_dir / person.name / p.name)
        probes += photos[config.enroll_photos:]
        truth += [person.name] * len(photos[config.enroll_photos:])
    results: Dict[str, Any] = {"probes": len(probes), "enrolled_photos_per_person": config.enroll_photos}
    eval_json = out / "evaluate" / "results.json"
    for name, model in _models(out).items():
        threshold = score.threshold_from_eval(eval_json, _eval_set(out, model))
        gallery_path = out / "identify" / f"gallery_{name}.json"
        gallery.enroll(enroll_dir, model, gallery_path, aligned=True)
        found = gallery.identify(probes, gallery_path, model, threshold_score=threshold["score"], aligned=True)
        names = [m["name"] for m in found]
        closest = [m["best"] for m in found]
        results[name] = {"names": names, "threshold_score": threshold["score"],
                         "accuracy": sum(n == t for n, t in zip(names, truth)) / max(1, len(truth)),
                         "rank1": sum(n == t for n, t in zip(closest, truth)) / max(1, len(truth)),
                         "unknown": sum(n == "unknown" for n in names)}
    results["same_names"] = sum(a == b for a, b in zip(results["keras"]["names"], results["kmodel"]["names"]))
    return results


def board_files(out: Path) -> Dict[str, Any]:
    """The .kfpkg for kflash and the CanMV script with the kmodel's measured threshold and gallery."""
    from mobilefacenet_k210.board import files, kfpkg

    kmodel = _models(out)["kmodel"]
    plan = kfpkg.build_kfpkg(kmodel, out / "board" / "mfk210.kfpkg")
    written = files.write_board_files(out / "board" / "sd", kmodel, out / "evaluate" / "results.json",
                                      eval_set=_eval_set(out, kmodel),
                                      gallery=out / "identify" / "gallery_kmodel.json")
    return {"kfpkg": str(out / "board" / "mfk210.kfpkg"), "flash": plan.get("files", plan),
            "files": written["files"], "threshold_score": written["config"].get("threshold_score"),
            "warnings": written["warnings"]}


def inspect_shards(out: Path) -> Dict[str, Any]:
    """Counts and the contact sheet of what training saw."""
    from mobilefacenet_k210.data import inspect

    (out / "inspect").mkdir(parents=True, exist_ok=True)
    return inspect.inspect_shards(out / "shards", out / "inspect" / "contact_sheet.png")


def summarize(demo: Demo) -> Dict[str, Any]:
    """The headline figures of the demo, read from the steps' recorded results."""
    r = demo.results
    models = _models(demo.out)
    accuracy = {k: r["evaluate"]["results"][m][_eval_set(demo.out, m).rsplit("/", 1)[1]]
                for k, m in models.items()}
    export = r["export"]
    figures = {
        "orl_acc_keras": accuracy["keras"]["accuracy"],
        "orl_acc_keras_std": accuracy["keras"]["accuracy_std"],
        "orl_acc_kmodel": accuracy["kmodel"]["accuracy"],
        "orl_acc_kmodel_std": accuracy["kmodel"]["accuracy_std"],
        "kmodel_bytes": export["kmodel_bytes"],
        "kpu_mac_share": export["kpu_mac_share"],
        "cosine_kmodel_mean": export["cosine_kmodel_mean"],
        "cosine_kmodel_min": export["cosine_kmodel_min"],
        "identify_keras": r["identify"]["keras"]["accuracy"],
        "identify_kmodel": r["identify"]["kmodel"]["accuracy"],
        "seconds": demo.seconds,
    }
    figures["orl_acc_drop"] = figures["orl_acc_keras"] - figures["orl_acc_kmodel"]
    return figures


def write_report(demo: Demo, figures: Dict[str, Any]) -> Path:
    """``report.md``: what ran, how long, the numbers against the targets, and the pictures."""
    from mobilefacenet_k210.demo_report import render

    path = demo.path("report.md")
    text = render(demo.out, demo.config, demo.results, demo.seconds, figures)
    atomic.write_text(path, text)
    print(f"\nreport: {path}")
    return path
