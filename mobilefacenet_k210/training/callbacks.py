"""What runs during ``model.fit``: exact backups, verification every n epochs, the best and last
embedding models, one log line per epoch, and the loss plot."""
import math
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import tensorflow as tf

from mobilefacenet_k210.evaluate.callback import VERIFICATION_METRIC, VerificationCallback
from mobilefacenet_k210.model.io import copy_embedding_model, save_embedding_model
from mobilefacenet_k210.training.context import Monitor, RunContext
from mobilefacenet_k210.training.plot import plot_history
from mobilefacenet_k210.training.schedule import WarmupPiecewise


class ExactBackupAndRestore(tf.keras.callbacks.BackupAndRestore):
    """BackupAndRestore every ``save_freq`` steps and at the end of each epoch, after the other callbacks.

    The save that would fall on an epoch's last step is moved to ``on_epoch_end`` (this callback is
    the last of the list), so a restored run never skips the epoch-end verification and checkpoints.
    The backup is kept when fit returns; :func:`train` removes it once the phase is recorded as done.
    """

    def __init__(self, backup_dir: Union[str, Path], save_freq: int, steps_per_epoch: int):
        super().__init__(str(backup_dir), save_freq=max(1, int(save_freq)), delete_checkpoint=False)
        self.steps_per_epoch = steps_per_epoch

    def on_train_batch_end(self, batch, logs=None):
        if batch >= self.steps_per_epoch - 1:
            return
        super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._batches_count = 0
        self._backup(epoch=epoch)


def resume_point(backup_dir: Union[str, Path], steps_per_epoch: int) -> Tuple[int, int]:
    """(epoch, step) at which ``model.fit`` will continue from the backup, as Keras computes it."""
    latest = tf.train.latest_checkpoint(str(Path(backup_dir) / "chief"))
    if not latest:
        return 0, 0
    reader = tf.train.load_checkpoint(latest)
    epoch = int(reader.get_tensor("ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"))
    batch = int(reader.get_tensor("ckpt_saved_batch/.ATTRIBUTES/VARIABLE_VALUE"))
    if epoch < 0 or batch < 0:
        return 0, 0
    return (epoch + 1, 0) if batch >= steps_per_epoch - 1 else (epoch, batch + 1)


class EveryNVerification(tf.keras.callbacks.Callback):
    """Run the evaluation helper's VerificationCallback every ``every`` epochs (and on the last).

    Skipped epochs report NaN, so the CSV columns stay the same from one epoch to the next.
    """

    def __init__(self, embedding_model: tf.keras.Model, bins: Dict[str, str], batch_size: int, flip: bool,
                 every: int, epochs: int):
        super().__init__()
        self.inner = VerificationCallback(embedding_model, bins, batch_size=batch_size, flip=flip, verbose=0)
        self.every, self.epochs = max(1, every), epochs

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0 or epoch + 1 == self.epochs:
            self.inner.on_epoch_end(epoch, logs)
        elif logs is not None:
            logs.update({k: float("nan") for k in [VERIFICATION_METRIC] + [f"{VERIFICATION_METRIC}/{n}" for n in self.inner.sets]})


class EmbeddingCheckpoints(tf.keras.callbacks.Callback):
    """Save the embedding model: ``last/`` on every scored epoch (one with a finite ``monitor`` value:
    every epoch, unless verification runs only every n epochs) and on the phase's last epoch,
    ``embedding/`` when ``monitor`` improves.

    Saving costs about as much as a few training steps of a small model, so the epochs no score
    can pick are not saved: what ``last/`` would hold there, the exact-resume backup holds too.
    The best value lives in ``state.json`` so that a resumed run keeps comparing with it. Saves go
    through a float32 copy of the backbone (``export_copy``), so a mixed-precision or distributed
    run still saves a plain model that ``mfk210 export`` reads.
    """

    def __init__(self, embedding_model: tf.keras.Model, export_copy: tf.keras.Model, run: RunContext,
                 phase_index: int, monitor: Monitor):
        super().__init__()
        self.embedding_model, self.export_copy, self.run = embedding_model, export_copy, run
        self.phase_index, self.monitor = phase_index, monitor

    def _better(self, value: float) -> bool:
        best = self.run.state.get("best")
        if not best or best.get("monitor") != self.monitor.name:
            return True
        if self.monitor.name != VERIFICATION_METRIC and best.get("phase") != self.phase_index:
            return True  # fallback scores of different heads are not comparable: best of the last phase
        # a tie goes to the later epoch: it has trained longer, and small selection sets saturate
        return value >= best["value"] if self.monitor.mode == "max" else value <= best["value"]

    def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, Any]] = None) -> None:
        value = (logs or {}).get(self.monitor.name)
        scored = value is not None and math.isfinite(float(value))
        if not scored and epoch + 1 != (getattr(self, "params", None) or {}).get("epochs"):
            return
        # every worker reads the weights: in a cluster, reading BatchNorm's statistics is a collective
        self.export_copy.set_weights(self.embedding_model.get_weights())
        last = save_embedding_model(self.export_copy, self.run.out / "last" / "model.keras")
        if not scored:
            return
        if self._better(float(value)):
            copy_embedding_model(last, self.run.out)
            self.run.state["best"] = {"monitor": self.monitor.name, "mode": self.monitor.mode, "value": float(value),
                                      "phase": self.phase_index, "epoch": epoch + 1}
            self.run.save_state()
            self.run.log.info("  new best %s %.4f: saved %s", self.monitor.name, float(value),
                              self.run.out / "embedding" / "model.keras")


class EpochLog(tf.keras.callbacks.Callback):
    """Add ``lr`` and ``images_per_s`` (training steps only) to the logs; one line per epoch in the run's log.

    A progress bar over the epoch's steps when the run shows progress (the chief only); a resumed
    epoch's bar starts at ``start_step``.
    """

    def __init__(self, run: RunContext, title: str, epochs: int, batch_size: int, schedule: WarmupPiecewise,
                 steps_per_epoch: int, start_step: int):
        super().__init__()
        self.log, self.title, self.epochs, self.batch_size = run.log, title, epochs, batch_size
        self.schedule, self.steps, self.start_step = schedule, steps_per_epoch, start_step
        self.progress = run.progress and run.chief
        self.bar = None

    def on_epoch_begin(self, epoch, logs=None):
        self.t0, self.done = time.perf_counter(), 0
        self.t_steps = self.t0
        if self.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=self.steps, initial=self.start_step, desc=f"{self.title} epoch {epoch + 1}",
                            leave=False, unit="step")
        self.start_step = 0

    def on_train_batch_end(self, batch, logs=None):
        self.done += 1
        self.t_steps = time.perf_counter()
        if self.bar is not None:
            self.bar.update(1)

    def on_epoch_end(self, epoch, logs=None):
        if self.bar is not None:
            self.bar.close()
        seconds = time.perf_counter() - self.t0
        if logs is not None:
            logs["lr"] = float(self.schedule(self.model.optimizer.iterations))
            logs["images_per_s"] = self.done * self.batch_size / max(self.t_steps - self.t0, 1e-9)
        shown = " ".join(f"{k} {v:.4g}" for k, v in sorted((logs or {}).items())
                         if k not in ("images_per_s",) and "/" not in k)
        self.log.info("%s epoch %d/%d: %s | %.1f s, %.0f img/s", self.title, epoch + 1, self.epochs, shown,
                      seconds, (logs or {}).get("images_per_s", 0.0))


class LossPlot(tf.keras.callbacks.Callback):
    """Redraw ``loss.png`` (loss, accuracy, verification accuracy over all phases) as training goes.

    At most every ``every_s`` seconds (drawing costs about a second) and at the end of the phase.
    """

    def __init__(self, run_dir: Path, every_s: float = 60.0):
        super().__init__()
        self.run_dir, self.every_s, self.last = run_dir, every_s, time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if time.perf_counter() - self.last >= self.every_s:
            plot_history(self.run_dir)
            self.last = time.perf_counter()

    def on_train_end(self, logs=None):
        plot_history(self.run_dir)
