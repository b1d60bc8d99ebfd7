"""``--runner beam``: the builder's per-photo and per-identity functions as an Apache Beam pipeline.

Same functions as the local runner (``builder.chunks``, ``builder.align_photos``,
``builder.identity_records``), so a seed-scale build can run on Flink, Spark or Dataflow with the
usual pipeline options (``BuildConfig.beam_options``, e.g. ``--runner=FlinkRunner``), and the
DirectRunner gives the same records as ``--runner local``. Shape of the pipeline:

    Create(detection batches: identity, file paths)  -- paths, never image bytes
      -> ParDo(decode + MTCNN, one detector per DoFn instance)  -> (identity, photo result)
      -> GroupByKey(identity) -> identity_records (policy, augmentation, split, JPEG)
      -> labels from the sorted kept identities (a side input) -> WriteToTFRecord per split

Beam's file sink writes temporary files and renames them into place. The metadata, labels and
``rejected.csv`` are written afterwards from the shards and the per-identity summaries, with the
same functions as the local runner. Apache Beam is an optional extra (``pip install
mobilefacenet_k210[beam]``) and is imported only here, inside functions.
"""
import json
import math
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple, Union

from mobilefacenet_k210 import atomic
from mobilefacenet_k210 import config as config_lib
from mobilefacenet_k210.config import BuildConfig
from mobilefacenet_k210.data import builder, tfrecord

SHARD_TEMPLATE = "-SSSSS-of-NNNNN"  # gives builder/tfrecord's shard names: train-00000-of-00004.tfrecord


def _import_beam() -> Any:
    try:
        import apache_beam as beam
    except ImportError:
        raise builder.BuildError("--runner beam needs Apache Beam: pip install 'mobilefacenet_k210[beam]' "
                                 "(or use --runner local)") from None
    return beam


def _align_dofn(beam: Any) -> Any:
    class AlignChunk(beam.DoFn):
        """Decode and align one detection batch; one MTCNN per DoFn instance, built in ``setup``."""

        def __init__(self, cfg_dict: Dict[str, Any]):
            self._cfg_dict = cfg_dict
            self._aligner = None

        def setup(self) -> None:
            cfg = config_lib.from_dict(BuildConfig, self._cfg_dict)
            self._aligner = builder.make_aligner(cfg) if not cfg.aligned else None

        def process(self, element: Tuple[str, List[builder.Photo]]) -> Iterator[Tuple[str, Tuple]]:
            name, photos = element
            aligner = self._aligner
            if aligner is None and any(not p.aligned for p in photos):
                aligner = builder.make_aligner(config_lib.from_dict(BuildConfig, self._cfg_dict))
                self._aligner = aligner
            for r in builder.align_photos(photos, aligner):
                yield name, (r.source, r.crop, r.reason)

    return AlignChunk


def _identity(kv: Tuple[str, Any], cfg_dict: Dict[str, Any]) -> builder.IdentityOutput:
    cfg = config_lib.from_dict(BuildConfig, cfg_dict)
    name, results = kv
    return builder.identity_records(name, [builder.PhotoResult(*r) for r in results], cfg)


def _examples(out: builder.IdentityOutput, labels: Dict[str, int]) -> Iterator[Tuple[str, bytes]]:
    if out.dropped:
        return
    label = labels[out.name]
    for split, source, tag, jpeg in out.records:
        yield split, tfrecord.encode_example(jpeg, label, out.name, source, tag)


def _shard_entries(out_dir: Path, split: str) -> List[Dict[str, Any]]:
    import tensorflow as tf

    entries = []
    for path in sorted(out_dir.glob(f"{split}-*-of-*.tfrecord")):
        count = sum(1 for _ in tf.data.TFRecordDataset(str(path)))
        entries.append({"file": path.name, "records": count, "sha256": tfrecord.sha256_file(path), "split": split})
    return entries


def build_beam(raw_dir: Union[str, Path], out_dir: Union[str, Path], cfg: BuildConfig,
               progress: bool = True) -> Dict[str, Any]:
    """Run the build as a Beam pipeline (DirectRunner unless ``cfg.beam_options`` names another)."""
    beam = _import_beam()
    from apache_beam.options.pipeline_options import PipelineOptions

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    tasks, scan_rejected = builder.scan(raw_dir, cfg.aligned)
    if not tasks:
        raise builder.BuildError(f"{raw_dir}: no identity folder with photo files found")
    builder.prepare_out_dir(out_dir)
    meta_path = out_dir / tfrecord.METADATA_FILE
    if meta_path.exists():
        meta_path.unlink()
    builder.remove_partial_files(out_dir)
    for old in out_dir.glob("*-of-*.tfrecord"):
        if old.name.split("-")[0] in tfrecord.SPLITS:
            old.unlink()
    work = out_dir / builder.WORK_DIR / f"beam-{builder.config_key(cfg)}"
    work.mkdir(parents=True, exist_ok=True)
    cfg_dict = config_lib.to_dict(cfg)
    photos = sum(len(t.photos) for t in tasks)
    # Beam cannot know the record count before it runs: size shards from the input photo count.
    train_shards = max(1, math.ceil(photos / cfg.records_per_shard))
    position = {t.name: i for i, t in enumerate(tasks)}  # labels follow the input order, as in the local runner
    batches = [(t.name, chunk) for t in tasks for chunk in builder.chunks(t.photos, cfg.detect_batch_size)]
    options = PipelineOptions(cfg.beam_options or ["--runner=DirectRunner"])
    with beam.Pipeline(options=options) as p:
        outs = (p
                | "Batches" >> beam.Create(batches)
                | "Spread" >> beam.Reshuffle()
                | "Align" >> beam.ParDo(_align_dofn(beam)(cfg_dict))
                | "ByIdentity" >> beam.GroupByKey()
                | "Policy" >> beam.Map(_identity, cfg_dict))
        summaries = outs | "Summary" >> beam.Map(lambda o: json.dumps(o.summary(), sort_keys=True))
        names = (outs
                 | "Kept" >> beam.Filter(lambda o: not o.dropped and bool(o.records))
                 | "Name" >> beam.Map(lambda o: o.name)
                 | "Names" >> beam.combiners.ToList()
                 | "Labels" >> beam.Map(lambda ns: {n: i for i, n in enumerate(sorted(ns, key=position.get))}))
        examples = outs | "Encode" >> beam.FlatMap(_examples, labels=beam.pvalue.AsSingleton(names))
        for split in tfrecord.SPLITS:
            if split == "val" and cfg.val_fraction <= 0:
                continue
            (examples
             | f"Only{split}" >> beam.Filter(lambda kv, s=split: kv[0] == s)
             | f"Bytes{split}" >> beam.Map(lambda kv: kv[1])
             | f"Write{split}" >> beam.io.WriteToTFRecord(str(out_dir / split), file_name_suffix=".tfrecord",
                                                          num_shards=train_shards if split == "train" else 1,
                                                          shard_name_template=SHARD_TEMPLATE))
        _ = summaries | "Summaries" >> beam.io.WriteToText(str(work / "summaries"), file_name_suffix=".jsonl",
                                                           shard_name_template="")
    t_pipeline = time.perf_counter()
    summaries_list = [json.loads(line) for line in (work / "summaries.jsonl").read_text(encoding="utf-8").splitlines()
                      if line.strip()]
    by_name = {s["name"]: s for s in summaries_list}
    ordered = [by_name[t.name] for t in tasks]
    names = builder.kept_names(ordered)
    rejected = builder.all_rejected(scan_rejected, ordered, cfg)
    builder.write_rejected(out_dir / tfrecord.REJECTED_FILE, rejected)
    if not names:
        raise builder.BuildError(f"nothing left after the policy '{cfg.policy.name}' (see "
                                 f"{out_dir / tfrecord.REJECTED_FILE}); for a small set use --policy none")
    shards = [e for split in tfrecord.SPLITS for e in _shard_entries(out_dir, split)]
    class_counts = {i: dict(by_name[n]["records"]) for i, n in enumerate(names)}
    builder.write_labels(out_dir / tfrecord.LABELS_FILE, names)
    builder.write_property(out_dir / builder.PROPERTY_FILE, len(names))
    meta = builder.build_metadata(cfg, names, class_counts, shards, ordered, len(rejected), str(raw_dir))
    atomic.write_json(meta_path, meta)
    if not cfg.keep_work:
        import shutil

        shutil.rmtree(out_dir / builder.WORK_DIR, ignore_errors=True)
    seconds = time.perf_counter() - t0
    return {
        **builder.run_summary("beam", meta, ordered, out_dir, seconds, photos=photos, photos_processed=photos,
                              resumed=0),
        "workers": None,
        "pipeline_seconds": round(t_pipeline - t0, 3),
        "images_per_s": round(photos / (t_pipeline - t0), 2) if t_pipeline > t0 else 0.0,
    }
