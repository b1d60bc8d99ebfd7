"""The dataset builder: folders of raw photos -> aligned, balanced, sharded TFRecords.

This module is the entry point only: the build config (:func:`load_build_config`) and :func:`build`,
which plans OUT_DIR, hands the work to the runner the config names (:data:`RUNNERS`, the one place
a runner is chosen) and swaps the finished folder in. The layers below it, each imported downward:

* ``local_runner`` (processes, resume) and ``beam_runner`` (an Apache Beam pipeline): the runners;
* ``writer``: OUT_DIR's plan and swap and every output file, the one writer both runners end in;
* ``cache``: the atomic per-identity cache that makes a killed build resumable, shared by both;
* ``scan`` (folders, ``.lst``, InsightFace RecordIO sets through ``insightface_set``) and ``stages``
  (align a photo, an identity's records): the pure steps, shared by both.
"""
import dataclasses
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

from mobilefacenet_k210 import config as config_lib
from mobilefacenet_k210 import folder_lock
from mobilefacenet_k210.config import BuildConfig
from mobilefacenet_k210.data import beam_runner, insightface_set, local_runner
from mobilefacenet_k210.data import policy as policy_lib
from mobilefacenet_k210.data.detectors import describe_detector
from mobilefacenet_k210.data.stages import BuildError
from mobilefacenet_k210.data.writer import finish_output, plan_output, same_input

__all__ = ["BuildError", "RUNNERS", "build", "load_build_config"]

# ``BuildConfig.runner`` -> the function that runs a build into a prepared folder and returns its summary.
RUNNERS: Dict[str, Callable[..., Dict[str, Any]]] = {
    "local": local_runner.build_local,
    "beam": beam_runner.build_beam,
}


def load_build_config(path: Optional[Union[str, Path]] = None, overrides: Optional[List[str]] = None,
                      **flags: Any) -> BuildConfig:
    """Defaults, then the config file, then the CLI's own flags (``None`` = not given), then ``--set``;
    validated. ``policy`` may be given as a preset name (``seed``/``none``) in the file or as a flag.
    """
    return config_lib.load(BuildConfig, path, overrides, flags=flags, presets={"policy": policy_lib.preset})


def build(raw_dir: Union[str, Path], out_dir: Union[str, Path], config: Optional[BuildConfig] = None,
          progress: bool = True, overwrite: bool = False, teacher: Any = None) -> Dict[str, Any]:
    """Build shards from ``raw_dir`` (identity folders, a ``.lst``, or an InsightFace RecordIO set: a
    ``.rec`` or the folder holding ``train.rec``) into ``out_dir``; returns a summary.

    Summary keys: ``photos``, ``faces``, ``rejected``, ``identities`` (input/kept/dropped),
    ``num_classes``, ``records`` (per split), ``shards``, ``seconds`` (wall, all of it),
    ``align_seconds`` (the per-identity phase after the workers are up), ``images_per_s``
    (photos processed in this run / align_seconds), ``cpu_ms_per_image`` (worker CPU time per photo
    in that phase: with ``align_seconds`` it tells a busy machine from a slow build),
    ``resumed_identities``, ``workers``, ``runner`` (the timing keys differ a little per runner);
    for a RecordIO set also ``source``: its layout, notes and the ``.bin`` verification sets beside it.

    ``overwrite``: replace a dataset that OUT_DIR holds from another input (see :func:`writer.plan_output`).
    A second writer of ``out_dir`` meanwhile is refused (:mod:`folder_lock`).
    ``teacher``: a loaded teacher (``teacher.loader.load_teacher``; this layer never imports it) whose
    embeddings of each crop and its mirror are stored in the records, its ``info()`` in ``metadata.json``.
    """
    cfg = config or BuildConfig()
    cfg.validate()
    if insightface_set.locate(raw_dir) is not None:  # InsightFace's sets are aligned 112x112 crops
        if cfg.unlabeled:
            raise BuildError(f"{raw_dir}: an InsightFace RecordIO set has identities; --unlabeled takes a flat "
                             f"folder of photos")
        cfg = dataclasses.replace(cfg, aligned=True)
    out_dir = Path(out_dir)
    # this process holds OUT_DIR's lock for either runner (Beam's workers write only its cache), from
    # the plan through the swap of an --overwrite staging folder
    with folder_lock.hold(out_dir):
        if not cfg.aligned:
            describe_detector(cfg)  # fetches the detector's model once, before any worker needs it
        target = plan_output(out_dir, [raw_dir], overwrite, same_input(raw_dir))
        summary = RUNNERS[cfg.runner](raw_dir, target, cfg, progress, teacher=teacher)
        finish_output(target, out_dir)
    return {**summary, "out_dir": str(out_dir)}
