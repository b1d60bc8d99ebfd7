"""`make bench-scale`: how the cost of each stage grows with size, measured on this machine.

Three curves, each at sizes growing by about 10x:

- the builder on ``--aligned`` crops (1k -> 10k -> 100k records, 100 -> 10k identities): records/s,
  peak memory of the build process and its workers, size of ``metadata.json``;
- the training input (tf.data over 1 -> 64 -> 256 shards of the same records): images/s and the
  latency of the first batch;
- the margin head at 1k, 68k (the seeds') and 360k (Glint360K) classes on a tiny backbone:
  parameters, memory of weights plus optimizer slots, training-step time, and the same with a
  sampled head (Partial FC, ``sample_rate``) where the full head is too slow.

The crops are ORL photos padded to 112x112, each record a seeded augmentation of one of them (flip,
shift, opening, Gaussian or salt-and-pepper noise), so that no two records are the same bytes.
Results go to ``bench/scale.json`` and a table plus a PNG in ``docs/scale.md``.
"""
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Sequence, Union

import numpy as np

from mobilefacenet_k210 import atomic, folder_lock
from mobilefacenet_k210.errors import FileFormatError
from mobilefacenet_k210.bench.provenance import machine, timestamp

RECORDS = (1_000, 10_000, 100_000)
PER_IDENTITY = 10
SHARDS = (1, 64, 256)
CLASSES = (1_000, 68_000, 360_000)
SAMPLE_RATE = 0.1
BEGIN, END = "<!-- bench-scale:begin -->", "<!-- bench-scale:end -->"

_BUILD_CHILD = """
import json, resource, sys, time
from mobilefacenet_k210.data import builder
cfg = builder.load_build_config(None, None, aligned=True, policy="none", workers=int(sys.argv[3]), val_fraction=0.0)
start = time.perf_counter()
summary = builder.build(sys.argv[1], sys.argv[2], cfg, progress=False)
print(json.dumps({"seconds": time.perf_counter() - start, "records": sum(summary["records"].values()),
                  "maxrss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "maxrss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def generate_crops(out_dir: Path, records: int, per_identity: int = PER_IDENTITY, seed: int = 0) -> Path:
    """``out_dir/<identity>/<i>.jpg``: ``records`` distinct 112x112 crops, ``per_identity`` per identity.

    Reused when a previous run finished it (a ``done`` marker is written last).
    """
    import cv2
    from tqdm import tqdm

    from mobilefacenet_k210.data.augment import AUGMENTATIONS, augment
    from mobilefacenet_k210.data.orl import fetch_orl

    if (out_dir / "done").is_file():
        return out_dir
    photos = sorted(fetch_orl().glob("s*/*.pgm"))
    bases = [cv2.copyMakeBorder(cv2.imread(str(p)), 0, 0, 10, 10, cv2.BORDER_REFLECT) for p in photos]
    rng = np.random.default_rng(seed)
    tags = ("original",) + AUGMENTATIONS
    for i in tqdm(range(records), desc=f"crops {records:,}", unit="crop", leave=False):
        identity, index = divmod(i, per_identity)
        image = bases[rng.integers(len(bases))]
        image = np.roll(image[:, ::-1] if rng.random() < 0.5 else image, rng.integers(-4, 5, 2), axis=(0, 1))
        image = augment(np.ascontiguousarray(image), tags[i % len(tags)], seed=i)
        folder = out_dir / f"id{identity:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{index}.jpg"), image)
    atomic.write_text(out_dir / "done", f"{records}\n")
    return out_dir


def measure_builder(raw: Path, out: Path, workers: int = 2) -> Dict[str, Any]:
    """One ``--aligned`` build in a fresh process (so its peak memory is its own)."""
    proc = subprocess.run([sys.executable, "-c", _BUILD_CHILD, str(raw), str(out), str(workers)],
                          capture_output=True, text=True, check=True)
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    figures["records_per_s"] = figures["records"] / figures["seconds"]
    figures["metadata_bytes"] = (out / "metadata.json").stat().st_size
    return figures


def reshard(src: Path, dest: Path, count: int) -> Path:
    """The train records of shard folder ``src`` rewritten as ``count`` shards (same metadata schema)."""
    import tensorflow as tf

    from mobilefacenet_k210.data import tfrecord

    meta = atomic.read_json(src / tfrecord.METADATA_FILE, "no metadata")
    files = [str(src / s["file"]) for s in meta["shards"] if s["split"] == "train"]
    records = [r.numpy() for r in tf.data.TFRecordDataset(files)]
    shards = []
    for k, chunk in enumerate(np.array_split(np.arange(len(records)), count)):
        entry = tfrecord.write_shard(dest / tfrecord.shard_name("train", k, count), [records[j] for j in chunk])
        shards.append({**entry, "split": "train"})
    atomic.write_json(dest / tfrecord.METADATA_FILE, {**meta, "shards": shards,
                                                       "splits": {"train": len(records), "val": 0}})
    return dest


def measure_input(data_dir: Path, batch_size: int = 128, batches: int = 30) -> Dict[str, Any]:
    """tf.data images/s (after the first batches) and the seconds to the first batch of a new iterator."""
    from mobilefacenet_k210.config import PipelineConfig
    from mobilefacenet_k210.data import pipeline
    from mobilefacenet_k210.preprocessing import INPUT_SIZE

    config = PipelineConfig()
    start = time.perf_counter()
    data = pipeline.DataInfo(data_dir)
    steps = max(1, data.train_records // batch_size)
    next(iter(pipeline.train_dataset(data, batch_size, INPUT_SIZE, config, seed=0, epochs=1, steps_per_epoch=steps)))
    first = time.perf_counter() - start
    rate = pipeline.measure_throughput(data_dir, batch_size, INPUT_SIZE, config, batches=batches)
    return {"first_batch_s": first, "images_per_s": rate["images_per_s"]}


def measure_head(num_classes: int, batch_size: int = 128, steps: int = 4, sample_rate: float = 1.0) -> Dict[str, Any]:
    """Training-step time of an ArcFace head on a one-layer backbone (the head's own cost), and its memory."""
    import tensorflow as tf

    from mobilefacenet_k210.config import PhaseConfig
    from mobilefacenet_k210.model import heads

    dim = 128
    inputs = tf.keras.Input((dim,))
    backbone = tf.keras.Model(inputs, tf.keras.layers.Dense(dim)(inputs))
    phase = PhaseConfig(head="arcface", batch_size=batch_size, sample_rate=sample_rate)
    model, head = heads.build_training_model(backbone, phase, num_classes)
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1, momentum=0.9), loss=heads.make_loss(phase))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch_size, dim)).astype(np.float32)
    y = rng.integers(0, num_classes, batch_size).astype(np.int32)
    ds = tf.data.Dataset.from_tensors(((x, y), y)).repeat()
    model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    params = head.count_params()
    return {"classes": num_classes, "sample_rate": sample_rate, "step_s": (time.perf_counter() - start) / steps,
            "head_params": params, "head_mb_sgd": params * 4 * 2 / 2**20, "head_mb_adam": params * 4 * 3 / 2**20}


def plot(results: Dict[str, Any], path: Path) -> Path:
    """Three log-log panels: builder seconds vs records, tf.data images/s vs shards, head step vs classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    b = results["builder"]
    axes[0].loglog([r["records"] for r in b], [r["seconds"] for r in b], "o-")
    axes[0].set(xlabel="records", ylabel="build seconds", title="builder (--aligned, 2 workers)")
    i = results["input"]
    axes[1].semilogx([r["shards"] for r in i], [r["images_per_s"] for r in i], "o-")
    axes[1].set(xlabel="shards", ylabel="images/s", title="tf.data input")
    for rate in sorted({r["sample_rate"] for r in results["heads"]}):
        rows = [r for r in results["heads"] if r["sample_rate"] == rate]
        axes[2].loglog([r["classes"] for r in rows], [r["step_s"] for r in rows], "o-", label=f"sample_rate {rate:g}")
    axes[2].set(xlabel="classes", ylabel="seconds per step", title="ArcFace head, batch 128")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return atomic.save_figure(fig, path, dpi=100)


def table(results: Dict[str, Any]) -> str:
    """The Markdown that goes between the markers of ``docs/scale.md``."""
    lines = [f"Measured {results['date']} on {results['machine']} (`make bench-scale`, `bench/scale.json`).", "",
             "| builder records | identities | seconds | records/s | records/s of the added records | "
             "peak MB main / worker | metadata.json bytes |", "|---:|---:|---:|---:|---:|---:|---:|"]
    previous = None
    for r in results["builder"]:
        marginal = "" if previous is None else \
            f"{(r['records'] - previous['records']) / max(r['seconds'] - previous['seconds'], 1e-9):.0f}"
        lines.append(f"| {r['records']:,} | {r['records'] // PER_IDENTITY:,} | {r['seconds']:.1f} | "
                     f"{r['records_per_s']:.0f} | {marginal} | {r['maxrss_main_mb']:.0f} / {r['maxrss_worker_mb']:.0f} "
                     f"| {r['metadata_bytes']:,} |")
        previous = r
    lines += ["", "| tf.data shards | images/s | first batch s |", "|---:|---:|---:|"]
    lines += [f"| {r['shards']} | {r['images_per_s']:.0f} | {r['first_batch_s']:.2f} |" for r in results["input"]]
    lines += ["", "| head classes | sample_rate | parameters | MB weights+SGD slot | MB with Adam | s per step |",
              "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['classes']:,} | {r['sample_rate']:g} | {r['head_params']:,} | {r['head_mb_sgd']:.0f} | "
              f"{r['head_mb_adam']:.0f} | {r['step_s']:.3f} |" for r in results["heads"]]
    lines += ["", "![time against size](scale.png)"]
    return "\n".join(lines)


def write_docs(results: Dict[str, Any], doc: Path) -> None:
    """Replace the measured section of ``doc`` (between the markers) and draw ``scale.png`` beside it."""
    plot(results, doc.with_name("scale.png"))
    text = doc.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise FileFormatError(f"{doc}: the markers {BEGIN} ... {END} are missing; put them where the table goes")
    head, rest = text.split(BEGIN, 1)
    atomic.write_text(doc, head + BEGIN + "\n" + table(results) + "\n" + END + rest.split(END, 1)[1])


def run_bench_scale(out: Union[str, Path] = "bench", doc: Union[str, Path] = "docs/scale.md",
                    records: Sequence[int] = RECORDS, shards: Sequence[int] = SHARDS,
                    classes: Sequence[int] = CLASSES) -> Dict[str, Any]:
    """Measure every curve; write ``out/scale.json`` after each step and, at the end, the docs' table and PNG.
    ``out`` is locked meanwhile (:mod:`folder_lock`)."""
    with folder_lock.hold(out):
        return _run_bench_scale(Path(out), Path(doc), records, shards, classes)


def _run_bench_scale(out: Path, doc: Path, records: Sequence[int], shards: Sequence[int],
                     classes: Sequence[int]) -> Dict[str, Any]:
    """:func:`run_bench_scale` under ``out``'s lock."""
    work = out / "work" / "scale"
    results: Dict[str, Any] = {"machine": machine(), "date": timestamp(), "builder": [], "input": [], "heads": []}
    path = out / "scale.json"
    for n in records:
        raw = generate_crops(work / f"crops{n}", n)
        results["builder"].append(measure_builder(raw, work / f"shards{n}"))
        print(f"builder {n:,} records: {results['builder'][-1]['records_per_s']:.0f} records/s", flush=True)
        atomic.write_json(path, results)
    largest = work / f"shards{max(records)}"
    for count in shards:
        row = {"shards": count, **measure_input(reshard(largest, work / f"input{count}", count))}
        results["input"].append(row)
        print(f"tf.data {count} shards: {row['images_per_s']:.0f} images/s", flush=True)
        atomic.write_json(path, results)
    full: Dict[int, float] = {}
    for n in classes:
        row = measure_head(n)
        full[n] = row["step_s"]
        results["heads"].append(row)
        print(f"head {n:,} classes: {row['step_s']:.3f} s/step", flush=True)
        atomic.write_json(path, results)
    for n in classes:
        if n >= 10 * min(classes):
            results["heads"].append(measure_head(n, sample_rate=SAMPLE_RATE))
            atomic.write_json(path, results)
    results["seeds_over_1k_step"] = full[max(c for c in classes if c <= 68_000)] / full[min(classes)]
    results["glint_over_seeds_step"] = full[max(classes)] / full[max(c for c in classes if c <= 68_000)]
    atomic.write_json(path, results)
    write_docs(results, Path(doc))
    return results
