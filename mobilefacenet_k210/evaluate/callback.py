"""Verification accuracy as a training metric, so that checkpointing keeps the best embedding model.

A thin Keras callback over the same code as ``mfk210 evaluate`` (``bins.load_bin``,
``backends.KerasBackend``, ``metrics.verify``; each distinct photo of a set embedded once): at each
epoch end it writes ``logs["verification_accuracy"]`` (mean over the sets) and ``logs["verification_accuracy/<name>"]``.
Place it before ``ModelCheckpoint(monitor="verification_accuracy", mode="max")`` in the callback list.
"""
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import tensorflow as tf

from mobilefacenet_k210.runtime.backends import KerasBackend
from mobilefacenet_k210.evaluate.bins import distinct_images, load_bin
from mobilefacenet_k210.evaluate.metrics import verify

VERIFICATION_METRIC = "verification_accuracy"


class VerificationCallback(tf.keras.callbacks.Callback):
    """Evaluate ``embedding_model`` on InsightFace ``.bin`` sets at every epoch end.

    ``bins`` maps a set name to a ``.bin`` path; the sets are decoded once, here, so that a bad
    file fails before training starts. The embedding model shares its layers with the model being
    fit, so it always sees the current weights; under a tf.distribute strategy its ``predict``
    distributes by itself.
    """

    def __init__(self, embedding_model: tf.keras.Model, bins: Dict[str, Union[str, Path]], batch_size: int = 64,
                 flip: bool = True, nfolds: int = 10, verbose: int = 1):
        super().__init__()
        if not bins:
            raise ValueError("VerificationCallback needs at least one .bin set")
        self.embedding_model = embedding_model
        self.batch_size = batch_size
        self.flip = flip
        self.nfolds = nfolds
        self.verbose = verbose
        self.sets = {}
        for name, path in bins.items():
            images, issame = load_bin(path, progress=False)
            self.sets[name] = (*distinct_images(images), issame)
        self.history: Dict[str, list] = {name: [] for name in self.sets}

    def evaluate(self) -> Dict[str, float]:
        """Accuracy per set and their mean (key ``verification_accuracy``) for the current weights."""
        backend = KerasBackend(self.embedding_model)
        results = {}
        for name, (photos, index, issame) in self.sets.items():
            emb = backend.embed(photos, batch_size=self.batch_size, flip=self.flip, progress=False)[index]
            results[f"{VERIFICATION_METRIC}/{name}"] = verify(emb, issame, nfolds=self.nfolds)["accuracy"]
        results[VERIFICATION_METRIC] = float(np.mean(list(results.values())))
        return results

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        results = self.evaluate()
        for name in self.sets:
            self.history[name].append(results[f"{VERIFICATION_METRIC}/{name}"])
        if logs is not None:
            logs.update(results)
        if self.verbose:
            sets = ", ".join(f"{n} {results[f'{VERIFICATION_METRIC}/{n}']:.4f}" for n in self.sets)
            tf.print(f"epoch {epoch + 1}: {VERIFICATION_METRIC} {results[VERIFICATION_METRIC]:.4f} ({sets})")
