"""``--runner beam``: the builder's per-photo and per-identity functions as an Apache Beam pipeline.

Same steps as the local runner (``stages.chunks``, ``stages.align_photos``,
``stages.identity_records``), so a seed-scale build can run on Flink, Spark or Dataflow with the
usual pipeline options (``BuildConfig.beam_options``, e.g. ``--runner=FlinkRunner``; OUT_DIR must
then be on a filesystem the workers share). Shape of the pipeline:

    Create(detection batches of the identities not yet cached: identity, file paths)
      -> ParDo(decode + detect, one detector per DoFn instance)  -> (identity, photo result)
      -> GroupByKey(identity) -> identity_records (policy, augmentation, split, JPEG)
      -> cache.cache_save: the atomic per-identity cache the local runner uses too

The shards, labels, metadata, ``rejected.csv`` and the contact sheet are then written from that
cache by ``writer.write_outputs``, the one output writer: both runners write the same set of files
and the same shards byte for byte, and a killed Beam build rerun skips the identities it cached
(and so does a local rerun). Apache Beam is an optional extra
(``pip install mobilefacenet_k210[beam]``) and is imported only here, inside functions.

On one machine, ``--direct_num_workers=N --direct_running_mode=multi_processing`` runs the DoFns in
N subprocesses (the DirectRunner's SDK harnesses): each builds its own detector and limits its
threads to its share of the cores, like a local-runner worker. Every process that aligned photos
counts itself in a Beam counter; the summary's ``align_processes`` reads them back (docs/scale.md,
"Beam at scale", has the Flink, Spark and Dataflow command lines).
"""
import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from mobilefacenet_k210 import config as config_lib
from mobilefacenet_k210.config import BuildConfig
from mobilefacenet_k210.data import stages
from mobilefacenet_k210.data.scan import scan_input
from mobilefacenet_k210.data.cache import cache_load_summary, cache_save
from mobilefacenet_k210.data.writer import open_work, run_summary, write_outputs


def _import_beam() -> Any:
    try:
        import apache_beam as beam
    except ImportError:
        raise stages.BuildError("--runner beam needs Apache Beam: pip install 'mobilefacenet_k210[beam]' "
                                "(or use --runner local)") from None
    return beam


METRICS_NAMESPACE = "mfk210"
_PID_PREFIX = "align_pid_"


def _limit_threads(threads: int, detector: str) -> None:
    """In a DirectRunner worker subprocess: OpenCV's and (MTCNN only) TensorFlow's threads to ``threads``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import cv2

    cv2.setNumThreads(threads)
    if detector == "mtcnn":
        from mobilefacenet_k210.data.align import configure_threads

        configure_threads(threads)


def _align_dofn(beam: Any) -> Any:
    class AlignChunk(beam.DoFn):
        """Decode and align one detection batch; one detector per DoFn instance, built in ``setup``.

        ``driver_pid``/``threads``: in a process other than the driver's (a multi-processing DirectRunner
        worker) the detector's threads are limited to ``threads`` (0: no limit); the driver's own
        settings are never touched (the demo trains in that process)."""

        def __init__(self, cfg_dict: Dict[str, Any], driver_pid: int, threads: int):
            self._cfg_dict = cfg_dict
            self._driver_pid = driver_pid
            self._threads = threads
            self._aligner = None
            self._counter = None

        def setup(self) -> None:
            cfg = config_lib.from_dict(BuildConfig, self._cfg_dict)
            if self._threads > 0 and os.getpid() != self._driver_pid and not cfg.aligned:
                _limit_threads(self._threads, cfg.detector)
            self._aligner = stages.make_aligner(cfg) if not cfg.aligned else None
            self._counter = beam.metrics.Metrics.counter(METRICS_NAMESPACE, f"{_PID_PREFIX}{os.getpid()}")

        def process(self, element: Tuple[str, List[stages.Photo]]) -> Iterator[Tuple[str, Tuple]]:
            name, photos = element
            self._counter.inc(len(photos))
            aligner = self._aligner
            if aligner is None and any(not p.aligned for p in photos):
                aligner = stages.make_aligner(config_lib.from_dict(BuildConfig, self._cfg_dict))
                self._aligner = aligner
            for r in stages.align_photos(photos, aligner):
                yield name, (r.source, r.crop, r.reason, r.jpeg)

    return AlignChunk


def _identity_to_cache(kv: Tuple[str, Any], cfg_dict: Dict[str, Any], work: str,
                       tasks: Dict[str, stages.IdentityTask]) -> str:
    """Policy, augmentation and JPEGs of one identity, saved in the shared cache; returns its name."""
    cfg = config_lib.from_dict(BuildConfig, cfg_dict)
    name, results = kv
    ordered = sorted((stages.PhotoResult(*r) for r in results), key=lambda r: r.source)
    cache_save(Path(work), tasks[name], stages.identity_records(name, ordered, cfg))
    return name


def direct_workers(options: Any) -> Optional[int]:
    """``direct_num_workers`` when the DirectRunner runs its workers as subprocesses, else ``None``
    (one process, or another runner: its workers' cores are not this machine's)."""
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    runner = options.view_as(StandardOptions).runner
    direct = options.view_as(DirectOptions)
    if runner not in (None, "DirectRunner", "direct") or direct.direct_running_mode != "multi_processing":
        return None
    return max(1, int(direct.direct_num_workers or 1))


def _align_pids(result: Any) -> Optional[List[int]]:
    """The process ids that aligned photos, from the counters ``AlignChunk`` kept (None: the runner
    reports no metrics)."""
    from apache_beam.metrics.metric import MetricsFilter

    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]
    except (NotImplementedError, AttributeError, KeyError):
        return None
    names = {c.key.metric.name for c in counters if c.committed or c.attempted}
    return [int(n[len(_PID_PREFIX):]) for n in names if n.startswith(_PID_PREFIX)]


def build_beam(raw_dir: Union[str, Path], out_dir: Union[str, Path], cfg: BuildConfig,
               progress: bool = True, teacher: Any = None) -> Dict[str, Any]:
    """Run the build as a Beam pipeline (DirectRunner unless ``cfg.beam_options`` names another);
    ``teacher``'s embeddings, if given, are added by :func:`writer.write_outputs` in this process."""
    beam = _import_beam()
    from apache_beam.options.pipeline_options import PipelineOptions

    t0 = time.perf_counter()
    workers, pids = None, None
    out_dir = Path(out_dir)
    scanned = scan_input(raw_dir, cfg)
    tasks = scanned.tasks
    work, _, todo = open_work(out_dir, cfg, tasks)
    if todo:
        cfg_dict = config_lib.to_dict(cfg)
        # absolute paths: a worker elsewhere (another process, cwd or machine on the shared file system)
        # reads the same photos and writes the same cache
        batches = [(t.name, [dataclasses.replace(p, path=os.path.abspath(p.path)) for p in chunk])
                   for t in todo for chunk in stages.chunks(t.photos, cfg.detect_batch_size)]
        options = PipelineOptions(cfg.beam_options or ["--runner=DirectRunner"])
        workers = direct_workers(options)
        threads = max(1, (os.cpu_count() or 1) // workers) if workers else 0
        p = beam.Pipeline(options=options)
        _ = (p
             | "Batches" >> beam.Create(batches)
             | "Spread" >> beam.Reshuffle()
             | "Align" >> beam.ParDo(_align_dofn(beam)(cfg_dict, os.getpid(), threads))
             | "ByIdentity" >> beam.GroupByKey()
             | "PolicyToCache" >> beam.Map(_identity_to_cache, cfg_dict, os.path.abspath(work),
                                             {t.name: t for t in todo}))
        result = p.run()
        result.wait_until_finish()
        pids = _align_pids(result)
    t_pipeline = time.perf_counter()
    summaries = {t.name: cache_load_summary(work, t) for t in tasks}
    missing = [n for n, s in summaries.items() if s is None]
    if missing:
        raise stages.BuildError(f"{work}: the pipeline left {len(missing)} identities uncached "
                                f"(first: {missing[0]!r}); rerun the same command to do them")
    ordered = [summaries[t.name] for t in tasks]
    meta = write_outputs(out_dir, work, cfg, ordered, scanned, str(Path(raw_dir).resolve()), teacher, progress)
    seconds = time.perf_counter() - t0
    photos = sum(len(t.photos) for t in todo)
    return {
        **run_summary("beam", meta, ordered, out_dir, seconds, photos=sum(len(t.photos) for t in tasks),
                      photos_processed=photos, resumed=len(tasks) - len(todo)),
        "workers": workers if todo else None,
        "align_processes": sorted(pids) if todo and pids is not None else None,
        "pipeline_seconds": round(t_pipeline - t0, 3),
        "images_per_s": round(photos / (t_pipeline - t0), 2) if photos and t_pipeline > t0 else 0.0,
    }
