"""`make bench`'s distill_trend stage: what more (unlabelled-by-the-teacher) training photos buy.

From the demo's outputs (select/test pairs, held-out aligned faces) and the distill stage's shards with
teacher embeddings it trains a from-scratch student (the demo's recipe) and a distilled one (the distill
stage's recipe) on the first photos of each identity for a few photo budgets, all with one seed, and
records each student's held-out verification accuracy and its mean cosine to the teacher on the
held-out faces.

Every run is recorded in ``distill_trend.json`` as soon as it ends (written atomically), keyed by
its inputs, so a killed bench resumes where it stopped; ``distill_trend.png`` plots the trend.
"""
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from mobilefacenet_k210 import atomic
from mobilefacenet_k210.errors import Mfk210Error
from mobilefacenet_k210.fileinfo import sha256_file
from mobilefacenet_k210.bench.provenance import machine, timestamp

BUDGETS = (100, 200, None)
"""Training records per run; None: all of them (the demo's own shards)."""
KINDS = {"scratch": "configs/demo_cpu.yaml", "distill": "configs/demo_distill.yaml"}
"""Student kind -> its training recipe (the demo's from-scratch and distilled configs)."""
SEED = 2
JSON_FILE, PNG_FILE = "distill_trend.json", "distill_trend.png"
SUBSET_FILE = "subset.json"


class TrendError(Mfk210Error, ValueError):
    """Inputs the distillation trend cannot use (missing demo outputs, a budget too small); names the file."""


def subset_order(labels: Sequence[int], augmentations: Sequence[str], seed: int) -> List[int]:
    """Record indices in the order a budget takes them: round-robin over identities (in a seeded order),
    each identity's originals first, then its augmented copies, each group in a seeded order.

    The first ``k`` indices are thus the first photos of each identity, spread as evenly as the
    identities' record counts allow (identities differ by at most one record until one runs out).
    """
    rng = np.random.default_rng(seed)
    queues: Dict[int, List[int]] = {}
    for label in sorted(set(labels)):
        idx = [i for i, lab in enumerate(labels) if lab == label]
        originals = [i for i in idx if augmentations[i] == "original"]
        copies = [i for i in idx if augmentations[i] != "original"]
        queues[label] = [int(i) for i in rng.permutation(originals)] + [int(i) for i in rng.permutation(copies)]
    order = [int(x) for x in rng.permutation(sorted(queues))]
    out: List[int] = []
    for depth in range(max(len(q) for q in queues.values())):
        out.extend(queues[label][depth] for label in order if depth < len(queues[label]))
    return out


def write_subset(src: Union[str, Path], dest: Union[str, Path], budget: int, seed: int = SEED) -> Dict[str, Any]:
    """``dest``: a shard folder holding ``budget`` of ``src``'s training records (:func:`subset_order`);
    returns its metadata. Every identity keeps at least one record, so labels and classes are unchanged.

    Built in a hidden ``.NAME.partial`` folder and renamed when complete; an existing ``dest`` made from
    the same source, budget and seed is reused.
    """
    import tensorflow as tf

    from mobilefacenet_k210.data import tfrecord

    src, dest = Path(src), Path(dest)
    meta = tfrecord.load_metadata(src)
    key = {"source": str(src), "source_metadata_sha256": sha256_file(src / tfrecord.METADATA_FILE),
           "budget": budget, "seed": seed}
    if dest.is_dir() and (dest / tfrecord.METADATA_FILE).is_file():
        old = atomic.read_json(dest / tfrecord.METADATA_FILE, "no metadata")
        if {k: old.get("subset", {}).get(k) for k in key} == key:
            return old
    if budget < meta["num_classes"]:
        raise TrendError(f"{src / tfrecord.METADATA_FILE}: a budget of {budget} training photos cannot keep one "
                         f"photo of each of its {meta['num_classes']} identities; give a budget of at least "
                         f"{meta['num_classes']}")
    files = [str(f) for f in tfrecord.shard_files(src, "train", meta)]
    raw = [r.numpy() for r in tf.data.TFRecordDataset(files)]
    decoded = [tfrecord.decode_record(r) for r in raw]
    order = subset_order([d[tfrecord.LABEL] for d in decoded], [d[tfrecord.AUGMENTATION] for d in decoded], seed)
    chosen = sorted(order[:budget])
    work = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    entry = tfrecord.write_shard(work / tfrecord.shard_name("train", 0, 1), [raw[i] for i in chosen])
    counts = {str(label): 0 for label in range(meta["num_classes"])}
    tags: Dict[str, int] = {}
    for i in chosen:
        counts[str(decoded[i][tfrecord.LABEL])] += 1
        tags[decoded[i][tfrecord.AUGMENTATION]] = tags.get(decoded[i][tfrecord.AUGMENTATION], 0) + 1
    for f in sorted(src.iterdir()):
        if f.is_file() and not f.name.startswith(".") and f.suffix != ".tfrecord" and f.name != tfrecord.METADATA_FILE:
            shutil.copy2(f, work / f.name)
    new_meta = {**meta, "shards": [{**entry, "split": "train"}], "splits": {"train": len(chosen), "val": 0},
                "total_records": len(chosen), "class_counts": counts,
                "class_counts_val": {k: 0 for k in counts}, "augmentation": tags,
                "subset": {**key, "records": len(chosen), "per_identity_min": min(counts.values()),
                           "per_identity_max": max(counts.values())}}
    atomic.write_json(work / tfrecord.METADATA_FILE, new_meta)
    shutil.rmtree(dest, ignore_errors=True)
    work.rename(dest)
    return new_meta


def _check_demo(demo_out: Path, source: Path) -> None:
    if not (source / "metadata.json").exists():
        raise TrendError(f"{source / 'metadata.json'}: missing; the distillation trend reads the shards with "
                         f"teacher embeddings that the bench's distill stage writes (`mfk210 bench --only "
                         f"distill,distill_trend`)")
    for path in (demo_out / "select.bin", demo_out / "test.bin", demo_out / "aligned" / "test"):
        if not path.exists():
            raise TrendError(f"{path}: missing; the distillation trend reads the demo's outputs (`make demo`, "
                             f"or --demo-out pointing at a finished demo folder)")


def train_and_measure(config_path: str, overrides: List[str], shards: Path, run: Path, demo_out: Path,
                      teacher: Any, crops: np.ndarray, progress: bool) -> Dict[str, Any]:
    """Train one student on ``shards`` into ``run`` (or resume it); its test accuracy and held-out cosine."""
    from mobilefacenet_k210 import config as config_lib
    from mobilefacenet_k210.training import run as training_run
    from mobilefacenet_k210.config import EvalConfig
    from mobilefacenet_k210.bench.students import heldout_cosine
    from mobilefacenet_k210.evaluate import evaluate, report

    cfg = config_lib.load(config_lib.TrainConfig, config_path, overrides)
    training_run.train(cfg, shards, run, progress=progress, source=f"{config_path} {' '.join(overrides)}")
    test = demo_out / "test.bin"
    result = evaluate(EvalConfig(models=[str(run)], bins=[str(test)], flip=True, json=str(run / "evaluate.json")))
    acc = result["results"][str(run)][report.set_name(test)]
    return {"accuracy": acc["accuracy"], "accuracy_std": acc["accuracy_std"],
            "heldout_cosine": heldout_cosine(str(run), teacher, crops)}


def run_trend(demo_out: Union[str, Path], out: Union[str, Path] = "bench", work: Optional[Union[str, Path]] = None,
              budgets: Sequence[Optional[int]] = BUDGETS, seed: int = SEED,
              configs: Optional[Dict[str, str]] = None, overrides: Sequence[str] = (), teacher: Any = None,
              progress: bool = True, teacher_shards: Optional[Union[str, Path]] = None) -> Dict[str, Any]:
    """Train and measure both students at every budget; ``out/distill_trend.json`` after each run;
    returns its content.

    ``configs``: kind -> recipe (default :data:`KINDS`); ``overrides`` are applied to both (after the
    seed and the select pairs); ``teacher``: a :class:`Teacher` (default the demo's, SFace);
    ``teacher_shards``: the demo's shards with the teacher's embeddings (the distill stage's
    ``shards_teacher``; default ``demo_out/shards_teacher``).
    """
    from mobilefacenet_k210.bench.students import TEACHER, aligned_crops
    from mobilefacenet_k210.config.loader import resolve
    from mobilefacenet_k210.teacher.loader import load_teacher

    demo_out, out = Path(demo_out), Path(out)
    work = Path(work) if work else out / "work" / "distill_trend"
    source = Path(teacher_shards) if teacher_shards else demo_out / "shards_teacher"
    _check_demo(demo_out, source)
    configs = configs or KINDS
    teacher = teacher or load_teacher(TEACHER)
    crops = aligned_crops(demo_out / "aligned" / "test")
    path = out / JSON_FILE
    state = atomic.read_json(path, "no trend file") if path.is_file() else {}
    runs: List[Dict[str, Any]] = state.get("runs", []) if isinstance(state, dict) else []
    common = {"seed": seed, "source_metadata_sha256": sha256_file(source / "metadata.json"),
              "select_sha256": sha256_file(demo_out / "select.bin"), "test_sha256": sha256_file(demo_out / "test.bin"),
              "teacher": teacher.info(), "overrides": list(overrides)}
    header = {"machine": machine(), "demo_out": str(demo_out), "seed": seed}
    total = len(budgets) * len(configs)
    start = time.perf_counter()
    done = 0
    for budget in budgets:
        label = "all" if budget is None else str(budget)
        shards = source if budget is None else work / f"shards_{label}_seed{seed}"
        if budget is not None:
            write_subset(source, shards, budget, seed)
        records = sum(int(s["records"]) for s in atomic.read_json(shards / "metadata.json", "no metadata")["shards"]
                      if s.get("split") == "train")
        for kind, config_path in configs.items():
            done += 1
            inputs = {**common, "budget": label, "kind": kind, "config": config_path,
                      "config_sha256": sha256_file(resolve(config_path))}
            if any(r.get("inputs") == inputs for r in runs):
                print(f"[distill_trend {done}/{total}] {kind} on {records} photos: recorded, skipped", flush=True)
                continue
            print(f"[distill_trend {done}/{total}] {kind} on {records} photos: training "
                  f"(elapsed {time.perf_counter() - start:.0f} s)", flush=True)
            t0 = time.perf_counter()
            figures = train_and_measure(config_path, [f"seed={seed}", f"verification.select={demo_out / 'select.bin'}",
                                                      *overrides], shards, work / f"{kind}_{label}_seed{seed}",
                                        demo_out, teacher, crops, progress)
            seconds = time.perf_counter() - t0
            runs = [r for r in runs if (r.get("inputs", {}).get("budget"), r.get("inputs", {}).get("kind"),
                                        r.get("inputs", {}).get("seed")) != (label, kind, seed)]
            runs.append({"inputs": inputs, "photos": records, **figures, "seconds": seconds, "date": timestamp()})
            atomic.write_json(path, {**header, "runs": runs})
            print(f"[distill_trend {done}/{total}] {kind} on {records} photos: accuracy {figures['accuracy']:.4f}, "
                  f"cosine to teacher {figures['heldout_cosine']:.3f}, {seconds:.0f} s "
                  f"(elapsed {time.perf_counter() - start:.0f} s)", flush=True)
    state = {**header, "runs": runs}
    atomic.write_json(path, state)
    return state


def series(state: Dict[str, Any], seed: int) -> Dict[str, Any]:
    """The recorded runs of ``seed`` as lists over photo counts (ascending), one per kind and figure."""
    rows = [r for r in state["runs"] if r["inputs"]["seed"] == seed]
    photos = sorted({r["photos"] for r in rows})
    out: Dict[str, Any] = {"photos": photos}
    for kind in sorted({r["inputs"]["kind"] for r in rows}):
        by = {r["photos"]: r for r in rows if r["inputs"]["kind"] == kind}
        out[f"acc_{kind}"] = [by[p]["accuracy"] if p in by else None for p in photos]
        out[f"cos_{kind}"] = [by[p]["heldout_cosine"] if p in by else None for p in photos]
    return out


def plot(state: Dict[str, Any], seed: int, path: Path) -> Path:
    """Accuracy (left) and cosine to the teacher (right) against training photos, one line per kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = series(state, seed)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    kinds = sorted(k[4:] for k in s if k.startswith("acc_"))
    for kind in kinds:
        for ax, key in ((left, f"acc_{kind}"), (right, f"cos_{kind}")):
            pts = [(p, v) for p, v in zip(s["photos"], s[key]) if v is not None]
            ax.plot([p for p, _ in pts], [v for _, v in pts], marker="o", label=kind)
    left.set(xlabel="training photos", ylabel="held-out verification accuracy (10-fold, flip)",
             title=f"accuracy (seed {seed})")
    right.set(xlabel="training photos", ylabel="mean cosine to the teacher, held-out faces",
              title=f"cosine to teacher (seed {seed})")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return atomic.save_figure(fig, path, dpi=100)


def recorded_figures(out: Union[str, Path] = "bench", seed: int = SEED) -> Dict[str, Any]:
    """``out/distill_trend.png`` and the results.json keys (lists over photos) of the runs recorded in
    ``out/distill_trend.json`` for ``seed`` (all of them, or those a stopped bench finished)."""
    out = Path(out)
    state = atomic.read_json(out / JSON_FILE, "no trend recorded yet (`mfk210 bench --only distill_trend`)")
    plot(state, seed, out / PNG_FILE)
    s = series(state, seed)
    figures: Dict[str, Any] = {"distill_trend_seed": seed, "distill_trend_photos": s["photos"],
                               "distill_trend_png": PNG_FILE}
    for kind in KINDS:
        figures[f"distill_trend_acc_{kind}"] = s.get(f"acc_{kind}", [])
        figures[f"distill_trend_cos_{kind}"] = s.get(f"cos_{kind}", [])
    return figures


def trend_figures(demo_out: Union[str, Path], out: Union[str, Path] = "bench", seed: int = SEED,
                  **options: Any) -> Dict[str, Any]:
    """The bench stage: :func:`run_trend`, then :func:`recorded_figures`."""
    run_trend(demo_out, out, seed=seed, **options)
    return recorded_figures(out, seed)


def markdown_section(results: Dict[str, Any]) -> List[str]:
    """results.md's trend table and PNG (empty when the stage has not run)."""
    if "distill_trend_photos" not in results:
        return []

    def cell(values: List[Any], i: int, fmt: str) -> str:
        return "-" if i >= len(values) or values[i] is None else format(values[i], fmt)

    lines = [f"## Distillation trend (seed {results['distill_trend_seed']})", "",
             "| training photos | accuracy, from scratch | accuracy, distilled | cosine to teacher, from scratch "
             "| cosine to teacher, distilled |", "|---|---|---|---|---|"]
    for i, photos in enumerate(results["distill_trend_photos"]):
        lines.append(f"| {photos} | {cell(results['distill_trend_acc_scratch'], i, '.4f')} | "
                     f"{cell(results['distill_trend_acc_distill'], i, '.4f')} | "
                     f"{cell(results['distill_trend_cos_scratch'], i, '.3f')} | "
                     f"{cell(results['distill_trend_cos_distill'], i, '.3f')} |")
    return lines + ["", f"![distillation trend]({results['distill_trend_png']})", ""]
