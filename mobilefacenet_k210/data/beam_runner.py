"""``--runner beam``: the builder's per-photo and per-identity functions as an Apache Beam pipeline.

Same steps as the local runner (``stages.chunks``, ``stages.align_photos``,
``stages.identity_records``), so a seed-scale build can run on Flink, Spark or Dataflow with the
usual pipeline options (``BuildConfig.beam_options``, e.g. ``--runner=FlinkRunner``; OUT_DIR must
then be on a filesystem the workers share). Shape of the pipeline:

    Create(detection batches of the identities not yet cached: identity, file paths)
      -> ParDo(decode + MTCNN, one detector per DoFn instance)  -> (identity, photo result)
      -> GroupByKey(identity) -> identity_records (policy, augmentation, split, JPEG)
      -> cache.cache_save: the atomic per-identity cache the local runner uses too

The shards, labels, metadata, ``rejected.csv`` and the contact sheet are then written from that
cache by ``writer.write_outputs``, the one output writer: both runners write the same set of files
and the same shards byte for byte, and a killed Beam build rerun skips the identities it cached
(and so does a local rerun). Apache Beam is an optional extra
(``pip install mobilefacenet_k210[beam]``) and is imported only here, inside functions.
"""
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple, Union

from mobilefacenet_k210 import config as config_lib
from mobilefacenet_k210.config import BuildConfig
from mobilefacenet_k210.data import stages
from mobilefacenet_k210.data.cache import cache_load_summary, cache_save
from mobilefacenet_k210.data.writer import open_work, run_summary, write_outputs


def _import_beam() -> Any:
    try:
        import apache_beam as beam
    except ImportError:
        raise stages.BuildError("--runner beam needs Apache Beam: pip install 'mobilefacenet_k210[beam]' "
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
            self._aligner = stages.make_aligner(cfg) if not cfg.aligned else None

        def process(self, element: Tuple[str, List[stages.Photo]]) -> Iterator[Tuple[str, Tuple]]:
            name, photos = element
            aligner = self._aligner
            if aligner is None and any(not p.aligned for p in photos):
                aligner = stages.make_aligner(config_lib.from_dict(BuildConfig, self._cfg_dict))
                self._aligner = aligner
            for r in stages.align_photos(photos, aligner):
                yield name, (r.source, r.crop, r.reason)

    return AlignChunk


def _identity_to_cache(kv: Tuple[str, Any], cfg_dict: Dict[str, Any], work: str,
                       tasks: Dict[str, stages.IdentityTask]) -> str:
    """Policy, augmentation and JPEGs of one identity, saved in the shared cache; returns its name."""
    cfg = config_lib.from_dict(BuildConfig, cfg_dict)
    name, results = kv
    ordered = sorted((stages.PhotoResult(*r) for r in results), key=lambda r: r.source)
    cache_save(Path(work), tasks[name], stages.identity_records(name, ordered, cfg))
    return name


def build_beam(raw_dir: Union[str, Path], out_dir: Union[str, Path], cfg: BuildConfig,
               progress: bool = True, teacher: Any = None) -> Dict[str, Any]:
    """Run the build as a Beam pipeline (DirectRunner unless ``cfg.beam_options`` names another);
    ``teacher``'s embeddings, if given, are added by :func:`writer.write_outputs` in this process."""
    beam = _import_beam()
    from apache_beam.options.pipeline_options import PipelineOptions

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    tasks, scan_rejected = stages.scan_input(raw_dir, cfg)
    work, _, todo = open_work(out_dir, cfg, tasks)
    if todo:
        cfg_dict = config_lib.to_dict(cfg)
        batches = [(t.name, chunk) for t in todo for chunk in stages.chunks(t.photos, cfg.detect_batch_size)]
        options = PipelineOptions(cfg.beam_options or ["--runner=DirectRunner"])
        with beam.Pipeline(options=options) as p:
            _ = (p
                 | "Batches" >> beam.Create(batches)
                 | "Spread" >> beam.Reshuffle()
                 | "Align" >> beam.ParDo(_align_dofn(beam)(cfg_dict))
                 | "ByIdentity" >> beam.GroupByKey()
                 | "PolicyToCache" >> beam.Map(_identity_to_cache, cfg_dict, str(work), {t.name: t for t in todo}))
    t_pipeline = time.perf_counter()
    summaries = {t.name: cache_load_summary(work, t) for t in tasks}
    missing = [n for n, s in summaries.items() if s is None]
    if missing:
        raise stages.BuildError(f"{work}: the pipeline left {len(missing)} identities uncached "
                                f"(first: {missing[0]!r}); rerun the same command to do them")
    ordered = [summaries[t.name] for t in tasks]
    meta = write_outputs(out_dir, work, cfg, ordered, scan_rejected, str(Path(raw_dir).resolve()), teacher, progress)
    seconds = time.perf_counter() - t0
    photos = sum(len(t.photos) for t in todo)
    return {
        **run_summary("beam", meta, ordered, out_dir, seconds, photos=sum(len(t.photos) for t in tasks),
                      photos_processed=photos, resumed=len(tasks) - len(todo)),
        "workers": None,
        "pipeline_seconds": round(t_pipeline - t0, 3),
        "images_per_s": round(photos / (t_pipeline - t0), 2) if photos and t_pipeline > t0 else 0.0,
    }
