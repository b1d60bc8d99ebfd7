"""The training throughput benchmark: images per second the model consumes, set against the input's
(:func:`mobilefacenet_k210.data.pipeline.measure_throughput`) by `make bench`, float32 against mixed
precision by `make bench-gpu`."""
import dataclasses
import time
from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from mobilefacenet_k210 import preprocessing
from mobilefacenet_k210.config import TrainConfig
from mobilefacenet_k210.model import heads
from mobilefacenet_k210.model.mobilefacenet import MobileFaceNet
from mobilefacenet_k210.training.distribute import mixed_policy, precision_policy, with_loss_scaling
from mobilefacenet_k210.training.schedule import make_optimizer


def measure_train_throughput(config: TrainConfig, phase_index: int = 0, num_classes: int = 1000, steps: int = 20,
                             warmup: int = 3, batch_size: Optional[int] = None) -> Dict[str, float]:
    """Images per second the model consumes in training (forward, backward, update), input excluded.

    One random batch is cached and repeated, so the figure is the model's and can be set against
    :func:`pipeline.measure_throughput` (the input should deliver several times this). With
    ``config.mixed_precision`` the policy is the machine's (:func:`distribute.mixed_policy`), and
    ``policy`` in the result says which.
    """
    phase = config.phases[phase_index]
    if batch_size:
        phase = dataclasses.replace(phase, batch_size=batch_size)
    batch = phase.batch
    size = config.model.input_size
    rng = np.random.default_rng(0)
    images = preprocessing.normalize(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    labels = (np.arange(batch) // max(1, phase.images_per_identity if phase.head == "triplet" else 1)) % num_classes
    ds = tf.data.Dataset.from_tensors(((images, labels.astype(np.int32)), labels.astype(np.int32))).repeat()
    with precision_policy(mixed_policy() if config.mixed_precision else "float32"):
        embedding = MobileFaceNet(config.model)
        model, _ = heads.build_training_model(embedding, phase, num_classes)
        model.compile(optimizer=with_loss_scaling(make_optimizer(phase, 1000)), loss=heads.make_loss(phase))
        model.fit(ds, steps_per_epoch=warmup, epochs=1, verbose=0)
        start = time.perf_counter()
        model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
        seconds = time.perf_counter() - start
    return {"images_per_s": steps * batch / seconds, "batch_size": batch, "steps": steps, "seconds": seconds,
            "head": phase.head,
            "policy": mixed_policy() if config.mixed_precision else "float32"}
