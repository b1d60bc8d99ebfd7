"""`make bench`: every measurable target of the project, in one flat JSON file and one Markdown table.

Figures that the demo already measured (accuracy, export parity) are read from its outputs instead
of being recomputed; the demo is run (or resumed) first. The distillation comparison (teacher,
from-scratch and distilled students) is a bench stage on the demo's outputs, not a demo step. Speed
claims are ratios measured in the same run on the same machine (a shared CPU makes absolute times drift): 2 vs 1 builder workers,
tf.data vs training consumption, our shuffling vs the seed's name-ordered stream, the YuNet builder on
2 workers vs the plain one-MTCNN loop (both on the 400 ORL photos), an InsightFace RecordIO set vs a
folder of the same JPEGs (:mod:`.recordio`).
"""
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from mobilefacenet_k210 import atomic, folder_lock
from mobilefacenet_k210.bench.provenance import machine, timestamp
from mobilefacenet_k210.bench.targets import TARGETS
from mobilefacenet_k210.errors import FileFormatError, Mfk210Error

# the table's rows, in order; targets.TARGETS says which have a target
FIGURES = ("params", "madds", "kmodel_bytes", "kmodel_version", "kpu_mac_share", "cosine_kmodel_mean",
           "cosine_kmodel_min", "builder_img_per_s_1w", "builder_img_per_s_2w", "builder_speedup_2w",
           "builder_aligned_img_per_s", "rec_records_per_s", "rec_folder_records_per_s", "rec_over_folder",
           "rec_fixed_seconds", "rec_ms1m_hours", "builder_beam_img_per_s_2w", "builder_yunet_img_per_s_2w",
           "builder_mtcnn_plain_loop_img_per_s", "yunet_over_plain_mtcnn", "landmark_distance_px",
           "tfdata_img_per_s", "train_img_per_s", "tfdata_over_train", "shuffle_mixing",
           "shuffle_mixing_seed_stream", "orl_acc_keras", "orl_acc_keras_yunet", "orl_acc_kmodel", "orl_acc_drop",
           "identify_kmodel", "orl_acc_teacher", "orl_acc_distill_keras", "orl_acc_distill_kmodel",
           "distill_cosine_heldout", "teacher_img_per_s", "distill_default_kmodel_bytes",
           "distill_default_kmodel_version", "distill_default_kpu_mac_share", "distill_default_cosine_kmodel_mean",
           "distill_default_cosine_kmodel_min", "demo_seconds", "demo_kmodel_bytes", "demo_cosine_kmodel_mean",
           "demo_cosine_kmodel_min", "pretrained_orl_acc_source", "pretrained_orl_acc_keras",
           "pretrained_orl_acc_kmodel", "pretrained_orl_acc_kmodel_seed_min", "pretrained_orl_acc_kmodel_seed_max",
           "pretrained_memory_total_bytes", "pretrained_kmodel_bytes", "pretrained_kpu_mac_share",
           "pretrained_cosine_kmodel_mean", "pretrained_identify_kmodel", "pretrained_total_seconds", "tests_seconds", "gpu_train_img_per_s_mixed_b512", "gpu_train_img_per_s_fp32_b512",
           "gpu_mixed_over_fp32")


def model_figures() -> Dict[str, Any]:
    """Parameters and multiply-adds of the default MobileFaceNet."""
    from mobilefacenet_k210.model.mobilefacenet import MobileFaceNet
    from mobilefacenet_k210.model.summary import count_macs, count_params

    model = MobileFaceNet()
    return {"params": count_params(model), "madds": count_macs(model)}


def demo_figures(demo_out: Path) -> Dict[str, Any]:
    """Accuracy and identification from the demo (run or resumed here), and its kmodel's figures."""
    from mobilefacenet_k210.demo.run import run_demo
    from mobilefacenet_k210.export.result import ExportResult

    figures = run_demo(demo_out)
    report = ExportResult.read(demo_out / "export")
    keep = ("orl_acc_keras", "orl_acc_kmodel", "orl_acc_drop", "identify_keras", "identify_kmodel")
    out = {k: figures[k] for k in keep}
    out["demo_seconds"] = float(sum(figures["seconds"].values()))  # every step, as its record measured it
    out.update(report.figures("demo_"))
    return out


def export_figures(demo_out: Path, work: Path, train_config: str, shards: Optional[Path] = None,
                   prefix: str = "") -> Dict[str, Any]:
    """Export parity of the default (width 1.0) MobileFaceNet, trained with ``train_config`` (the demo's
    recipe, or the distill stage's on its ``shards_teacher``) on ``shards`` (default the demo's),
    calibrated on the demo's training faces and measured on the held-out test faces; keys start with
    ``prefix``."""
    from mobilefacenet_k210 import config as config_lib
    from mobilefacenet_k210.training import run as training_run
    from mobilefacenet_k210.export.chain import export_model
    from mobilefacenet_k210.export.result import HEADLINE

    defaults = config_lib.ModelConfig()
    cfg = config_lib.load(config_lib.TrainConfig, train_config, [
        f"model.width_multiplier={defaults.width_multiplier}", f"model.embedding_size={defaults.embedding_size}",
        f"verification.select={demo_out / 'select.bin'}"])
    run = work / f"{prefix}train_default"
    training_run.train(cfg, shards or demo_out / "shards", run)
    report = export_model(run, demo_out / "shards", work / f"{prefix}export_default",
                          holdout=demo_out / "aligned" / "test")
    return report.figures(prefix, HEADLINE + ("kmodel_version", "nncase_version", "calibrate_method",
                                              "calibration_samples"))


def orl_photos() -> Path:
    """The 400 raw ORL photos (s1-s40, 10 each), fetched once: the builder figures all run on them."""
    from mobilefacenet_k210.data.orl import fetch_orl

    return fetch_orl()


def builder_figures(demo_out: Path, work: Path, raw: Optional[Path] = None) -> Dict[str, Any]:
    """Images/s of the MTCNN path with 1 and 2 workers on the same raw ORL photos, and of --aligned."""
    from mobilefacenet_k210.config import BuildConfig
    from mobilefacenet_k210.data import builder, policy

    raw = raw or orl_photos()
    rates = {}
    for workers in (1, 2):
        out = work / f"builder_{workers}w"
        shutil.rmtree(out, ignore_errors=True)
        cfg = BuildConfig(workers=workers, val_fraction=0.0, policy=policy.preset("none"))
        rates[workers] = builder.build(raw, out, cfg)["images_per_s"]
    out = work / "builder_aligned"
    shutil.rmtree(out, ignore_errors=True)
    cfg = BuildConfig(workers=2, aligned=True, val_fraction=0.0, policy=policy.preset("none"), records_per_shard=10)
    aligned = builder.build(demo_out / "aligned" / "test", out, cfg)["images_per_s"]
    return {"builder_img_per_s_1w": rates[1], "builder_img_per_s_2w": rates[2],
            "builder_speedup_2w": rates[2] / rates[1], "builder_aligned_img_per_s": aligned,
            "builder_photos": sum(1 for _ in raw.rglob("*.pgm"))}


def plain_mtcnn_loop(photos: List[Path]) -> Dict[str, Any]:
    """The seed's way: one reused ``mtcnn.MTCNN``, one photo per call, one process, largest face aligned.

    Returns images/s (after one untimed warm-up call) and each photo's chosen landmarks (None: no face)."""
    import numpy as np
    from mtcnn import MTCNN

    from mobilefacenet_k210.data.align import align_to_template, read_image

    detector = MTCNN()
    detector.detect_faces(read_image(photos[0]).astype(np.float32))
    marks: List[Any] = []
    t0 = time.perf_counter()
    for path in photos:
        image = read_image(path)
        rows = np.asarray(detector.detect_faces(image.astype(np.float32), output_type="numpy", box_format="xyxy"),
                          dtype=np.float64).reshape(-1, 16)
        if not len(rows):
            marks.append(None)
            continue
        row = rows[np.argmax((rows[:, 3] - rows[:, 1]) * (rows[:, 4] - rows[:, 2]))]
        marks.append(np.stack([row[6:11], row[11:16]], axis=1))
        align_to_template(image, marks[-1])
    return {"img_per_s": len(photos) / (time.perf_counter() - t0), "landmarks": marks}


def landmark_distance(photos: List[Path], mtcnn_marks: List[Any]) -> Dict[str, Any]:
    """Mean distance (pixels of the 112x112 crop) between YuNet's and MTCNN's 5 points on the same photos,
    both mapped by the similarity transform that aligns MTCNN's points (the crop the builder writes)."""
    import numpy as np
    from skimage.transform import SimilarityTransform

    from mobilefacenet_k210.data.align import read_image
    from mobilefacenet_k210.data.detectors import YuNetAligner
    from mobilefacenet_k210.preprocessing import ARCFACE_TEMPLATE

    yunet = YuNetAligner()
    distances = []
    for path, marks in zip(photos, mtcnn_marks):
        image = read_image(path)
        face = yunet.choose(yunet.detect([image])[0], image.shape)
        if marks is None or face is None:
            continue
        tform = SimilarityTransform()
        tform.estimate(marks, ARCFACE_TEMPLATE.astype(np.float64))
        distances.append(float(np.linalg.norm(tform(face.landmarks) - tform(marks), axis=1).mean()))
    return {"landmark_distance_px": float(np.mean(distances)) if distances else float("nan"),
            "landmark_distance_px_max": float(np.max(distances)) if distances else float("nan"),
            "landmark_photos": len(distances)}


DIRECT_2W = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]


def detector_figures(work: Path, raw: Optional[Path] = None) -> Dict[str, Any]:
    """Issue 15: the Beam DirectRunner with 2 worker processes (MTCNN) and the local runner with YuNet on 2
    workers, against the plain MTCNN loop, on the same photos; and YuNet's landmarks against MTCNN's."""
    from mobilefacenet_k210.config import BuildConfig
    from mobilefacenet_k210.data import builder, policy

    raw = raw or orl_photos()
    photos = sorted(raw.rglob("*.pgm"))
    rates = {}
    for key, extra in (("builder_beam_img_per_s_2w", {"runner": "beam", "beam_options": DIRECT_2W}),
                       ("builder_yunet_img_per_s_2w", {"workers": 2, "detector": "yunet"})):
        out = work / key
        shutil.rmtree(out, ignore_errors=True)
        rates[key] = builder.build(raw, out, BuildConfig(val_fraction=0.0, policy=policy.preset("none"), **extra),
                                   progress=False)["images_per_s"]
    loop = plain_mtcnn_loop(photos)
    return {**rates, "builder_mtcnn_plain_loop_img_per_s": loop["img_per_s"],
            "yunet_over_plain_mtcnn": rates["builder_yunet_img_per_s_2w"] / loop["img_per_s"],
            "detector_photos": len(photos), **landmark_distance(photos, loop["landmarks"])}


def detector_accuracy(demo_out: Path, work: Path, detector: str, build_config: str, train_config: str,
                      train_overrides: Optional[List[str]] = None, workers: int = 0) -> Dict[str, Any]:
    """The demo's protocol on ``detector``'s crops: shards of the demo's training photos (its build config),
    select/test pairs of the same held-out photos, the demo's training recipe, Keras accuracy on test.bin."""
    from mobilefacenet_k210 import config as config_lib
    from mobilefacenet_k210.demo import steps as demo_steps
    from mobilefacenet_k210.training import run as training_run
    from mobilefacenet_k210.data import builder
    from mobilefacenet_k210.evaluate import evaluate, report

    base, raw = work / f"demo_{detector}", demo_out / "raw"
    cfg = builder.load_build_config(build_config, [f"workers={workers}", f"detector={detector}"])
    shards = builder.build(raw / "train", base / "shards", cfg, progress=False)
    for group in ("select", "test"):
        demo_steps.align_tree(raw / group, base / "aligned" / group, workers, detector=detector)
        demo_steps.write_pairs(base / "aligned" / group, base / f"{group}.bin")
    train_cfg = config_lib.load(config_lib.TrainConfig, train_config,
                                [f"verification.select={base / 'select.bin'}", *(train_overrides or [])])
    training_run.train(train_cfg, base / "shards", base / "train")
    result = evaluate(config_lib.EvalConfig(models=[str(base / "train")], bins=[str(base / "test.bin")], flip=True,
                                            json=str(base / "evaluate.json")))
    acc = result["results"][str(base / "train")][report.set_name(base / "test.bin")]
    return {f"orl_acc_keras_{detector}": acc["accuracy"], f"orl_acc_keras_{detector}_std": acc["accuracy_std"],
            f"{detector}_train_faces": shards["faces"], f"{detector}_train_rejected": shards["rejected"]}


def input_figures(demo_out: Path, work: Path, train_config: str) -> Dict[str, Any]:
    """tf.data delivery vs training consumption (same batch size), and batch mixing vs the seed's stream."""
    from mobilefacenet_k210 import config as config_lib
    from mobilefacenet_k210.data import pipeline
    from mobilefacenet_k210.bench.throughput import measure_train_throughput

    cfg = config_lib.load(config_lib.TrainConfig, train_config)
    batch = cfg.phases[0].batch_size
    data = demo_out / "shards"
    tfdata = pipeline.measure_throughput(data, batch_size=batch, config=cfg.pipeline)["images_per_s"]
    trained = measure_train_throughput(cfg, 0, num_classes=27, batch_size=batch)["images_per_s"]
    mixing = pipeline.shuffle_mixing(work / "builder_aligned", batch_size=32, num_batches=20)
    return {"tfdata_img_per_s": tfdata, "train_img_per_s": trained, "tfdata_over_train": tfdata / trained,
            "shuffle_mixing": mixing["pipeline"]["distinct_labels_per_batch"],
            "shuffle_mixing_seed_stream": mixing["baseline"]["distinct_labels_per_batch"],
            "shuffle_mixing_random": mixing["random"]["distinct_labels_per_batch"]}


def test_figures(root: Path) -> Dict[str, Any]:
    """Wall time of the whole test suite, as `make test` runs it."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=root,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    tail = proc.stdout.strip().splitlines()[-1:] or [""]
    return {"tests_seconds": seconds, "tests_summary": tail[0], "tests_exit": proc.returncode}


class NoGPUError(Mfk210Error, RuntimeError):
    """`make bench-gpu` on a machine where TensorFlow sees no GPU."""


def gpu_figures(batch_size: int = 512, steps: int = 20, require_gpu: bool = True,
                model_overrides: Optional[List[str]] = None) -> Dict[str, Any]:
    """Training images/s of the default model with an ArcFace head at ``batch_size``, mixed float16
    and float32, on the first GPU; their ratio is the claim, the absolute figures name the GPU."""
    import tensorflow as tf

    from mobilefacenet_k210 import config as config_lib
    from mobilefacenet_k210.bench.throughput import measure_train_throughput

    gpus = tf.config.list_physical_devices("GPU")
    if require_gpu and not gpus:
        raise NoGPUError("TensorFlow sees no GPU, and bench-gpu measures GPU training. On a machine with an "
                         "NVIDIA GPU and its driver, `make bench-gpu` swaps the venv's CPU build of TensorFlow "
                         "for the CUDA one (pip's tensorflow[and-cuda], same version) before measuring.")
    name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus else "CPU"
    out: Dict[str, Any] = {"gpu": name}
    for precision, mixed in (("mixed", True), ("fp32", False)):
        cfg = config_lib.load(config_lib.TrainConfig, None, [
            "phases.0.head=arcface", f"mixed_precision={str(mixed).lower()}", *(model_overrides or [])])
        figure = measure_train_throughput(cfg, 0, num_classes=10_000, steps=steps, batch_size=batch_size)
        out[f"gpu_train_img_per_s_{precision}_b{batch_size}"] = figure["images_per_s"]
        out[f"gpu_train_seconds_{precision}_b{batch_size}"] = figure["seconds"]
        out[f"gpu_train_images_{precision}_b{batch_size}"] = figure["steps"] * figure["batch_size"]
    out["gpu_mixed_over_fp32"] = (out[f"gpu_train_img_per_s_mixed_b{batch_size}"]
                                  / out[f"gpu_train_img_per_s_fp32_b{batch_size}"])
    return out


def read_results(path: Union[str, Path]) -> Dict[str, Any]:
    """A ``results.json`` written by `make bench`; a broken one is a :class:`FileFormatError` naming it."""
    path = Path(path)
    results = atomic.read_json(path, "no such results file (`make bench` writes it)")
    if not isinstance(results, dict):
        raise FileFormatError(f"{path}: not an object of figures (found {type(results).__name__}); delete it "
                              "and run `make bench` again")
    return results


def run_bench_gpu(out: Union[str, Path] = "bench", **figure_options: Any) -> Dict[str, Any]:
    """Add the GPU figures to ``out/results.json`` (kept from `make bench`) and rewrite ``results.md``.

    ``figure_options`` go to :func:`gpu_figures` (batch size, steps...). ``out`` is locked meanwhile.
    """
    with folder_lock.hold(out):
        return _run_bench_gpu(Path(out), figure_options)


def _run_bench_gpu(out: Path, figure_options: Dict[str, Any]) -> Dict[str, Any]:
    """:func:`run_bench_gpu` under ``out``'s lock."""
    path = out / "results.json"
    results: Dict[str, Any] = read_results(path) if path.exists() else {}
    figures = gpu_figures(**figure_options)
    results.update(figures)
    results.update({"gpu_machine": f"{figures['gpu']} with {machine()}",
                    "gpu_date": timestamp()})
    results.setdefault("machine", machine())
    results.setdefault("date", results["gpu_date"])
    atomic.write_json(path, results)
    md = render_markdown(results)
    atomic.write_text(out / "results.md", md)
    print("\n" + md)
    return results


def render_markdown(results: Dict[str, Any]) -> str:
    """Figure | value | target | pass | machine; then the distillation trend's table and PNG."""
    from mobilefacenet_k210.bench.distill_trend import markdown_section

    lines = ["# mobilefacenet_k210 benchmark", "",
             f"Measured {results['date']} on {results['machine']}; nncase {results.get('nncase_version', '?')}.", "",
             "| figure | value | target | pass |", "|---|---|---|---|"]
    for key in FIGURES:
        target = TARGETS.get(key)
        text = target.text if target else ""
        if key not in results:
            why = " (`make bench-gpu`, on a GPU)" if key.startswith("gpu_") else ""
            lines.append(f"| {key} | not measured{why} | {text} | - |")
            continue
        value = results[key]
        shown = f"{value:,.4f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)
        unmet = target is None or (target.relative_to is not None and target.relative_to not in results)
        verdict = "-" if unmet else ("pass" if target.met(key, results) else "**fail**")
        lines.append(f"| {key} | {shown} | {text} | {verdict} |")
    lines += ["", f"Tests: {results.get('tests_summary', '-')}", ""]
    reruns = sorted(k[len("bench_"):-len("_date")] for k in results if k.startswith("bench_") and k.endswith("_date"))
    lines[-1:-1] = [f"Stage `{name}` rerun alone (`--only`): measured {results[f'bench_{name}_date']} on "
                    f"{results.get(f'bench_{name}_machine', 'a machine not recorded')}." for name in reruns]
    lines += markdown_section(results)
    if "gpu_machine" in results:
        lines[-1:-1] = [f"GPU figures: measured {results['gpu_date']} on {results['gpu_machine']}."]
    return "\n".join(lines)


class UnknownStageError(Mfk210Error, ValueError):
    """``--only`` naming a stage `make bench` does not have."""


def run_bench(out: Union[str, Path] = "bench", demo_out: Union[str, Path] = "runs/demo",
              train_config: str = "configs/demo_cpu.yaml", tests: bool = True,
              root: Union[str, Path] = ".", only: Optional[List[str]] = None,
              pretrained_out: Union[str, Path] = "runs/pretrained") -> Dict[str, Any]:
    """Measure everything (or the ``only`` stages, their keys replaced in the existing results.json);
    write ``out/results.json`` and ``out/results.md``; return the figures. ``out`` is locked meanwhile
    (:mod:`folder_lock`; the demo stage locks ``demo_out``)."""
    with folder_lock.hold(out):
        return _run_bench(Path(out), Path(demo_out), train_config, tests, Path(root), only, Path(pretrained_out))


def _run_bench(out: Path, demo_out: Path, train_config: str, tests: bool, root: Path,
               only: Optional[List[str]], pretrained_out: Path) -> Dict[str, Any]:
    """:func:`run_bench` under ``out``'s lock."""
    from mobilefacenet_k210.bench.distill_trend import trend_figures
    from mobilefacenet_k210.bench.recordio import recordio_figures
    from mobilefacenet_k210.bench.students import distill_figures
    from mobilefacenet_k210.bench.pretrained import pretrained_figures
    from mobilefacenet_k210.config import DemoConfig

    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    teacher_shards = work / "distill" / "shards_teacher"  # the distill stage's; the two after it read them
    stages: List[Tuple[str, Callable[[], Dict[str, Any]]]] = [
        ("model", model_figures),
        ("demo", lambda: demo_figures(demo_out)),
        ("distill", lambda: distill_figures(demo_out, work / "distill")),
        ("distill_trend", lambda: trend_figures(demo_out, out, teacher_shards=teacher_shards)),
        ("pretrained", lambda: pretrained_figures(pretrained_out)),
        ("export", lambda: export_figures(demo_out, work, train_config)),
        ("distill_export", lambda: export_figures(demo_out, work, DemoConfig().distill_config, teacher_shards,
                                                  "distill_default_")),
        ("builder", lambda: builder_figures(demo_out, work)),
        ("recordio", lambda: recordio_figures(work)),
        ("detectors", lambda: detector_figures(work)),
        ("detector_accuracy", lambda: detector_accuracy(demo_out, work, "yunet", DemoConfig().build_config,
                                                        train_config)),
        ("input", lambda: input_figures(demo_out, work, train_config)),
        ("tests", lambda: test_figures(root)),
    ]
    names = [name for name, _ in stages]
    if only:
        unknown = [name for name in only if name not in names]
        if unknown:
            raise UnknownStageError(f"--only {','.join(unknown)}: no such bench stage; the stages are "
                                    f"{', '.join(names)}")
        stages = [(name, fn) for name, fn in stages if name in only]
    elif not tests:
        stages = [(name, fn) for name, fn in stages if name != "tests"]
    path = out / "results.json"
    results: Dict[str, Any] = {"machine": machine(), "date": timestamp()}
    if only and path.exists():
        results = read_results(path)
    for i, (name, fn) in enumerate(stages, 1):
        print(f"\n[bench {i}/{len(stages)}] {name}", flush=True)
        t0 = time.perf_counter()
        results.update(fn())
        results[f"bench_{name}_seconds"] = time.perf_counter() - t0
        if only:  # a stage rerun alone may run on another machine than the rest of the file
            results[f"bench_{name}_date"], results[f"bench_{name}_machine"] = timestamp(), machine()
        atomic.write_json(path, results)
    md = render_markdown(results)
    atomic.write_text(out / "results.md", md)
    print("\n" + md)
    return results
