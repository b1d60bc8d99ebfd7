"""tf.distribute and dtype policy: which devices and workers train, and in which precision."""
import contextlib
import os
from typing import Iterator, Tuple

import tensorflow as tf

from mobilefacenet_k210.config import STRATEGIES, ConfigError


def make_strategy(name: str) -> tf.distribute.Strategy:
    """``default`` (one device), ``mirrored`` (every local GPU, else every logical CPU), ``multiworker``."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or \
                  [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("strategy multiworker: set TF_CONFIG (cluster and task) on every worker")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ConfigError(f"strategy {name!r}: choose one of {STRATEGIES}")


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


@contextlib.contextmanager
def precision_policy(name: str) -> Iterator[None]:
    """Set the Keras global dtype policy for a block, then put the previous one back."""
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)
