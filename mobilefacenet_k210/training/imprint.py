"""Class centres of a margin head imprinted from the mean embedding of each class (``head_init: imprint``)."""
from typing import Any, Iterable

import numpy as np
import tensorflow as tf

from mobilefacenet_k210.config import TrainConfig
from mobilefacenet_k210.data import pipeline


def class_embedding_sums(probe: tf.keras.Model, batches: Iterable[Any], num_classes: int, steps: int,
                         progress: bool = True) -> np.ndarray:
    """(num_classes, dim) sum of the L2-normalized embeddings of each class over ``batches``.

    The embeddings are computed in training mode (BatchNorm on batch statistics), as the phase to be
    imprinted computes them: BatchNorm's moving statistics lag behind a short previous phase, so
    inference-mode embeddings point elsewhere. ``probe`` is a throwaway copy of the backbone, since a
    training-mode call moves its moving statistics. The sum points where the class mean does, which
    is all :func:`heads.imprint` needs.
    """
    from tqdm import tqdm

    sums = np.zeros((num_classes, int(probe.output_shape[-1])), np.float64)
    for (images, labels), _ in tqdm(batches, desc="imprint", unit="batch", total=steps, disable=not progress,
                                    leave=False):
        vectors = tf.math.l2_normalize(tf.cast(probe(images, training=True), tf.float32), axis=1).numpy()
        np.add.at(sums, labels.numpy(), vectors)
    return sums


def first_epoch_batches(config: TrainConfig, index: int, data: pipeline.DataInfo, steps: int) -> tf.data.Dataset:
    """The batches of phase ``index``'s first epoch, all workers' (what its imprinted centres are the means of)."""
    return pipeline.train_dataset(data, config.phases[index].batch, config.model.input_size,
                                  config.pipeline, seed=config.seed * 1009 + index, epochs=1, steps_per_epoch=steps)
