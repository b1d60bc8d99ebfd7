"""The local runner: each identity's work in ``workers`` processes, cached, then the one output writer.

Identities not yet in the cache (:mod:`.cache`) are run through :func:`stages.process_identity` in a
spawned process pool, largest first; ``workers == 1`` runs them in this process. A build killed at
any moment and rerun with the same command skips the cached identities and ends with the same
shards, byte for byte, as an uninterrupted run.

The worker state (config, cache folder, the one warmed MTCNN detector) lives in :data:`_WORKER`
only for the life of a pool process, or, with ``workers == 1``, only inside :func:`in_process_worker`:
nothing of it (detector, thread limits, environment) outlives :func:`build_local`, since the demo
trains in the same process.
"""
import contextlib
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Sequence, Tuple, Union

import numpy as np

from mobilefacenet_k210 import config as config_lib
from mobilefacenet_k210.config import BuildConfig
from mobilefacenet_k210.data.cache import cache_save
from mobilefacenet_k210.data.scan import scan_input
from mobilefacenet_k210.data.stages import BuildError, IdentityTask, make_aligner, process_identity
from mobilefacenet_k210.data.writer import open_work, run_summary, write_outputs
from mobilefacenet_k210.preprocessing import INPUT_SIZE

# This process's worker state: set by _pool_init in a pool process (which it outlives by nothing),
# or by in_process_worker for the duration of a one-worker run.
_WORKER: Dict[str, Any] = {}


def _worker_setup(cfg_dict: Dict[str, Any], work: str, needs_detector: bool) -> None:
    """Fill :data:`_WORKER`: the config, the cache folder and the one MTCNN detector, warmed (its first
    call initializes TensorFlow's kernels: done before timing starts). Never raises: the error is kept
    and raised by the first task instead."""
    try:
        cfg = config_lib.from_dict(BuildConfig, cfg_dict)
        aligner = make_aligner(cfg) if needs_detector else None
        if aligner is not None:
            aligner.detect([np.zeros((INPUT_SIZE, INPUT_SIZE, 3), np.uint8)])
        _WORKER.update(cfg=cfg, work=Path(work), aligner=aligner, error=None)
    except Exception as exc:
        _WORKER["error"] = f"worker start failed: {type(exc).__name__}: {exc}"


def _pool_init(cfg_dict: Dict[str, Any], work: str, threads: int, needs_detector: bool, barrier: Any) -> None:
    """Runs once per pool process: quiet TF, limit its threads to this process's share of the cores,
    then :func:`_worker_setup`. Never raises (a raising initializer makes the pool respawn workers
    forever). Waits on ``barrier`` so that timing starts when every worker is ready."""
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import cv2

        from mobilefacenet_k210.data.align import configure_threads

        cv2.setNumThreads(threads)
        if needs_detector and cfg_dict.get("detector") == "mtcnn":  # only MTCNN runs on TensorFlow
            configure_threads(threads)
    except Exception as exc:
        _WORKER["error"] = f"worker start failed: {type(exc).__name__}: {exc}"
    if not _WORKER.get("error"):
        _worker_setup(cfg_dict, work, needs_detector)
    barrier.wait()


@contextlib.contextmanager
def in_process_worker(cfg_dict: Dict[str, Any], work: str, needs_detector: bool) -> Iterator[None]:
    """The worker state in this process while the block runs, then none. No thread limits: the one
    worker has every core, and a limit set here would stay with TensorFlow for the process's life."""
    _worker_setup(cfg_dict, work, needs_detector)
    try:
        yield
    finally:
        _WORKER.clear()


def _worker_run(task: IdentityTask) -> Dict[str, Any]:
    """One identity's work with this process's worker state, saved in the cache; its summary."""
    if _WORKER.get("error"):
        raise BuildError(_WORKER["error"])
    cpu = time.process_time()
    out = process_identity(task, _WORKER["cfg"], _WORKER["aligner"])
    summary = cache_save(_WORKER["work"], task, out)
    summary["cpu_seconds"] = time.process_time() - cpu  # this run's cost, not cached
    return summary


POOL_MIN_PHOTOS = 500
"""With ``workers=0`` (auto), fewer photos than this are aligned in this process: starting the worker
processes (each imports TensorFlow and builds its detector) costs about as much as aligning a few
hundred photos on one core, so a pool only pays for more."""


def auto_workers(photos: int) -> int:
    """Worker processes for ``workers=0``: one per core, or 1 (this process) for fewer than
    :data:`POOL_MIN_PHOTOS` photos."""
    return 1 if photos < POOL_MIN_PHOTOS else (os.cpu_count() or 1)


def build_local(raw_dir: Union[str, Path], out_dir: Path, cfg: BuildConfig, progress: bool = True,
                teacher: Any = None) -> Dict[str, Any]:
    """The local runner: per-identity work in processes, cached, then :func:`writer.write_outputs`
    (which adds ``teacher``'s embeddings, if given, in this process)."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    scanned = scan_input(raw_dir, cfg)
    tasks = scanned.tasks
    work, summaries, todo = open_work(out_dir, cfg, tasks)
    resumed = len(summaries)
    photos_todo = sum(len(t.photos) for t in todo)
    workers = cfg.workers if cfg.workers > 0 else auto_workers(photos_todo)
    workers = max(1, min(workers, len(todo) or 1))
    needs_detector = any(not p.aligned for t in todo for p in t.photos)
    # largest identities first: the pool's last tasks are short, so workers finish together
    todo.sort(key=lambda t: (-len(t.photos), t.name))
    cfg_dict = config_lib.to_dict(cfg)
    t_start = time.perf_counter()
    t_align = t_aligned = t_start
    if todo:
        bar = tqdm(total=photos_todo, desc="align", unit="img", disable=not progress, smoothing=0.1)
        if workers == 1:
            with in_process_worker(cfg_dict, str(work), needs_detector):
                t_align = time.perf_counter()
                for task in todo:
                    summaries[task.name] = _worker_run(task)
                    bar.update(len(task.photos))
                t_aligned = time.perf_counter()
        else:
            t_align, t_aligned = _run_pool(todo, workers, cfg_dict, str(work), needs_detector, summaries, bar)
        bar.close()
    cpu_seconds = sum(summaries[t.name].get("cpu_seconds", 0.0) for t in todo)
    ordered = [summaries[t.name] for t in tasks]
    meta = write_outputs(out_dir, work, cfg, ordered, scanned, str(Path(raw_dir).resolve()), teacher, progress)
    seconds = time.perf_counter() - t0
    align_seconds = t_aligned - t_align
    return {
        **run_summary("local", meta, ordered, out_dir, seconds, photos=sum(len(t.photos) for t in tasks),
                      photos_processed=photos_todo, resumed=resumed),
        "workers": workers,
        "startup_seconds": round(t_align - t_start, 3),
        "align_seconds": round(align_seconds, 3),
        "images_per_s": round(photos_todo / align_seconds, 2) if photos_todo and align_seconds > 0 else 0.0,
        "cpu_ms_per_image": round(1000 * cpu_seconds / photos_todo, 2) if photos_todo else 0.0,
    }


def _run_pool(todo: Sequence[IdentityTask], workers: int, cfg_dict: Dict[str, Any], work: str,
              needs_detector: bool, summaries: Dict[str, Dict[str, Any]], bar: Any) -> Tuple[float, float]:
    """Run ``todo`` in ``workers`` spawned processes, each limited to its share of the cores, filling
    ``summaries``; returns when every worker was ready and when the last identity was done."""
    import multiprocessing as mp
    import threading
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = mp.get_context("spawn")  # fork after TensorFlow is loaded is unsafe
    barrier = ctx.Barrier(workers + 1, timeout=900)
    sizes = {t.name: len(t.photos) for t in todo}
    # a dead worker (out of memory, killed) raises BrokenProcessPool instead of hanging the run
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_pool_init,
                               initargs=(cfg_dict, work, threads, needs_detector, barrier))
    try:
        futures = [pool.submit(_worker_run, t) for t in todo]
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            raise BuildError(f"the {workers} worker processes did not start within 900 s; "
                             f"try --workers 1 to see the error") from None
        t_align = time.perf_counter()
        try:
            for future in as_completed(futures):
                summary = future.result()
                summaries[summary["name"]] = summary
                bar.update(sizes[summary["name"]])
        except BrokenProcessPool:
            raise BuildError("a worker process died (out of memory or killed); the finished identities "
                             "are cached: rerun the same command to continue, with fewer --workers if "
                             "memory is short") from None
        return t_align, time.perf_counter()
    finally:
        # no waiting: the workers tear TensorFlow down (seconds) while the shards are written
        pool.shutdown(wait=False, cancel_futures=True)
