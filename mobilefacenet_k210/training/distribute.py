"""tf.distribute and dtype policy: which devices and workers train, and in which precision.

Multi-worker runs follow TensorFlow's multi-worker Keras guide: every worker runs the same
command with the standard ``TF_CONFIG``; the strategy must exist before TensorFlow runs any op
(collective ops are configured at program start), so :func:`mobilefacenet_k210.training.run.train`
creates it first. The chief writes the run folder; the other workers write into a temporary
folder of their own (:func:`worker_write_dir`), so a run folder shared by all workers is safe.
"""
import contextlib
import functools
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator, Tuple

import tensorflow as tf

from mobilefacenet_k210.config import STRATEGIES, ConfigError

MIXED_ON_GPU = "mixed_float16"  # tensor cores; float16 gradients need loss scaling
MIXED_ON_CPU = "mixed_bfloat16"  # the CPU's half type (same exponent range as float32: no loss scaling)


def make_strategy(name: str) -> tf.distribute.Strategy:
    """``default`` (one device), ``mirrored`` (every local GPU, else every logical CPU), ``multiworker``."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or \
                  [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multiworker":
        _check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ConfigError(f"strategy {name!r}: choose one of {STRATEGIES}")


def _check_tf_config() -> None:
    """Refuse a missing or unreadable ``TF_CONFIG`` before TensorFlow waits for a cluster that is not there."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise ConfigError("strategy multiworker: set TF_CONFIG (cluster and task) on every worker, see "
                          "docs/scale.md")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"strategy multiworker: TF_CONFIG is not valid JSON ({exc})") from None
    if not isinstance(value, dict) or not isinstance(value.get("cluster"), dict) or \
            not isinstance(value.get("task"), dict):
        raise ConfigError("strategy multiworker: TF_CONFIG needs a \"cluster\" and a \"task\" object, see "
                          "docs/scale.md")


def input_shard(strategy: tf.distribute.Strategy) -> Tuple[int, int]:
    """(number of input shards, this worker's input-shard index): how the workers split the shards."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return 1, 0
    workers = resolver.cluster_spec().as_dict().get("worker", [])
    chief = resolver.cluster_spec().as_dict().get("chief", [])
    index = (resolver.task_id or 0) + (len(chief) if resolver.task_type == "worker" else 0)
    return max(1, len(workers) + len(chief)), index


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run folder (always, but on the non-chief workers of a cluster)."""
    return bool(strategy.extended.should_checkpoint)


def worker_write_dir(run_dir: Path, strategy: tf.distribute.Strategy) -> Path:
    """Where this process writes: the run folder for the chief, a new temporary folder for another worker.

    A non-chief worker computes what the chief computes (same weights, same logs) and must write
    somewhere; TensorFlow's guide has it write into a temporary folder that it deletes at the end.
    """
    if is_chief(strategy):
        return run_dir
    _, index = input_shard(strategy)
    return Path(tempfile.mkdtemp(prefix=f"mfk210-worker{index}-"))


@functools.lru_cache(maxsize=None)
def cpu_runs_bfloat16() -> bool:
    """Whether this CPU's kernels run a bfloat16 convolution: oneDNN has them only with AVX512_BF16 or
    AMX, and on other CPUs (AVX2 only) the first bfloat16 convolution aborts the run."""
    try:
        tf.nn.conv2d(tf.ones([1, 4, 4, 1], tf.bfloat16), tf.ones([1, 1, 1, 1], tf.bfloat16), 1, "VALID")
    except tf.errors.OpError:
        return False
    return True


def mixed_policy() -> str:
    """The mixed-precision policy for this machine: ``mixed_float16`` on a GPU, ``mixed_bfloat16`` on CPUs
    that run it (:func:`cpu_runs_bfloat16`), ``mixed_float16`` (loss-scaled, slow) on the other CPUs."""
    if tf.config.list_logical_devices("GPU") or not cpu_runs_bfloat16():
        return MIXED_ON_GPU
    return MIXED_ON_CPU


@contextlib.contextmanager
def precision_policy(name: str) -> Iterator[None]:
    """Set the Keras global dtype policy for a block, then put the previous one back."""
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)


def with_loss_scaling(optimizer: tf.keras.optimizers.Optimizer) -> tf.keras.optimizers.Optimizer:
    """``optimizer`` wrapped in a dynamic LossScaleOptimizer under ``mixed_float16`` (float16 gradients
    underflow without it); as is under float32 or ``mixed_bfloat16``."""
    if tf.keras.mixed_precision.global_policy().name == MIXED_ON_GPU:
        return tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer
