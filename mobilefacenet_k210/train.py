"""Training: the phases of a :class:`~config.TrainConfig`, one ``model.fit`` each, resumable exactly.

A run folder holds::

    config.json           the run's fingerprint: its config and its data (counts and shard sha256s);
                          a resume with another one is refused
    state.json            phases completed, best score so far (written atomically)
    backup/phase<i>/      BackupAndRestore state of the phase in progress: weights, optimizer slots
                          and iterations (hence the learning-rate position), epoch and step
    phases/phase<i>/      the backbone at the end of phase i, where phase i+1 starts from
    embedding/model.keras the best embedding model (by verification accuracy, see below)
    last/model.keras      the embedding model after the latest epoch
    logs/phase<i>.csv, tensorboard/, train.log, loss.png

Kill the process at any moment and run the same command again: the phase in progress resumes at
its epoch and step, on the same batches (the input stream is a function of seed, epoch and step).
The rerun drops the log rows of the epochs it redoes and the temporary files the kill left.
"""
import contextlib
import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import tensorflow as tf

from mobilefacenet_k210 import atomic, preprocessing
from mobilefacenet_k210.config import STRATEGIES, ConfigError, PhaseConfig, TrainConfig, to_dict
from mobilefacenet_k210.data import pipeline, tfrecord
from mobilefacenet_k210.model import heads
from mobilefacenet_k210.model.io import load_embedding_model, save_embedding_model
from mobilefacenet_k210.model.mobilefacenet import MobileFaceNet
from mobilefacenet_k210.errors import Mfk210Error

CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
LOG_FILE = "train.log"
PLOT_FILE = "loss.png"
VERIFICATION = "verification_accuracy"
_NOT_COMPARED = ("strategy",)  # may change between a run and its resume (other machines)


class ResumeError(Mfk210Error, RuntimeError):
    """A run folder that cannot be used, or cannot be resumed with the given config and data."""


# --- config checks and run state ------------------------------------------------------------------
def _flatten(data: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(data, dict):
        out: Dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(data, list) and data and isinstance(data[0], dict):
        out = {f"{prefix}len": len(data)}
        for i, v in enumerate(data):
            out.update(_flatten(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: data}


def _run_fingerprint(config: TrainConfig, data: pipeline.DataInfo) -> Dict[str, Any]:
    """What a run depends on: the config (less what may change on resume) and the data, content included.

    ``data.shards_sha256`` hashes the shard list of ``metadata.json`` with each shard's sha256, so
    shards rebuilt with other images but the same counts are another run's data.
    """
    cfg = {k: v for k, v in to_dict(config).items() if k not in _NOT_COMPARED}
    listed = sorted((str(s.get("file")), str(s.get("split")), str(s.get("sha256"))) for s in data.meta["shards"])
    content = hashlib.sha256(json.dumps(listed).encode("utf-8")).hexdigest()
    return {"config": cfg, "data": {"num_classes": data.num_classes, "train_records": data.train_records,
                                    "shards_sha256": content}}


def _read_run_json(path: Path) -> Dict[str, Any]:
    """A JSON object of the run folder; a damaged one raises :class:`ResumeError` naming it."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResumeError(f"{path}: damaged, not valid JSON ({exc}); train into a new --out folder, or delete "
                          f"{path.parent} to start this run again") from None
    if not isinstance(value, dict):
        raise ResumeError(f"{path}: damaged, not a JSON object; train into a new --out folder, or delete "
                          f"{path.parent} to start this run again")
    return value


def _load_state(run_dir: Path, config: TrainConfig, data: pipeline.DataInfo, allow_config_change: bool,
                log: logging.Logger) -> Dict[str, Any]:
    """Start a run folder, or check that the config and data match the ones it was started with."""
    identity = _run_fingerprint(config, data)
    saved_path = run_dir / CONFIG_FILE
    if saved_path.is_file():
        saved = _read_run_json(saved_path)
        old, new = _flatten(saved), _flatten(json.loads(json.dumps(identity)))
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if diff:
            lines = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:8])
            if not allow_config_change:
                raise ResumeError(f"{saved_path}: this run was started with another config or data ({lines}"
                                  f"{', ...' if len(diff) > 8 else ''}); rerun with the same config, use a new "
                                  "--out folder, or pass --allow-config-change to resume anyway")
            log.warning("resuming with a changed config (--allow-config-change): %s", lines)
            atomic.write_json(saved_path, identity)
    else:
        atomic.write_json(saved_path, identity)
    state_path = run_dir / STATE_FILE
    if state_path.is_file():
        state = _read_run_json(state_path)
        if not isinstance(state.get("completed_phases"), int) or not isinstance(state.get("phases"), list):
            raise ResumeError(f"{state_path}: damaged, no completed_phases/phases; train into a new --out "
                              f"folder, or delete {run_dir} to start this run again")
        return state
    return {"completed_phases": 0, "phases": [], "best": None}


def _save_state(run_dir: Path, state: Dict[str, Any]) -> None:
    atomic.write_json(run_dir / STATE_FILE, state)


# --- distribution, precision, optimizer -----------------------------------------------------------
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


def _input_shard(strategy: tf.distribute.Strategy) -> Tuple[int, int]:
    """(number of input shards, this worker's input-shard index): how the workers split the shards."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return 1, 0
    workers = resolver.cluster_spec().as_dict().get("worker", [])
    chief = resolver.cluster_spec().as_dict().get("chief", [])
    index = (resolver.task_id or 0) + (len(chief) if resolver.task_type == "worker" else 0)
    return max(1, len(workers) + len(chief)), index


def _is_chief(strategy: tf.distribute.Strategy) -> bool:
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


class WarmupPiecewise(tf.keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``lr`` over ``warmup_steps``, then ``lr * decay**(boundaries passed)``.

    A function of the optimizer's iteration count only, so restoring the optimizer restores it.
    """

    def __init__(self, lr: float, boundaries: List[int], decay: float = 0.1, warmup_steps: int = 0):
        self.lr, self.boundaries, self.decay, self.warmup_steps = float(lr), [int(b) for b in boundaries], \
            float(decay), int(warmup_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        passed = tf.reduce_sum(tf.cast(step >= tf.constant(self.boundaries or [np.inf], tf.float32), tf.float32))
        lr = self.lr * tf.pow(self.decay, passed)
        if self.warmup_steps > 0:
            lr = tf.where(step < self.warmup_steps, self.lr * (step + 1.0) / self.warmup_steps, lr)
        return lr

    def get_config(self) -> Dict[str, Any]:
        return {"lr": self.lr, "boundaries": self.boundaries, "decay": self.decay, "warmup_steps": self.warmup_steps}


def make_schedule(phase: PhaseConfig, steps_per_epoch: int) -> WarmupPiecewise:
    """The phase's learning-rate schedule in optimizer steps (``lr_steps`` and warm-up are in epochs)."""
    return WarmupPiecewise(phase.lr, [round(e * steps_per_epoch) for e in sorted(phase.lr_steps)], phase.lr_decay,
                           round(phase.warmup_epochs * steps_per_epoch))


def make_optimizer(phase: PhaseConfig, steps_per_epoch: int) -> tf.keras.optimizers.Optimizer:
    """SGD with momentum or Adam, decoupled weight decay (not on BatchNorm), the phase's schedule."""
    schedule = make_schedule(phase, steps_per_epoch)
    wd = phase.weight_decay or None
    if phase.optimizer == "sgd":
        opt = tf.keras.optimizers.SGD(schedule, momentum=phase.momentum, weight_decay=wd)
    else:
        opt = tf.keras.optimizers.Adam(schedule, weight_decay=wd)
    if wd:
        opt.exclude_from_weight_decay(var_names=["_bn/"])
    return opt


# --- callbacks ------------------------------------------------------------------------------------
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
        from mobilefacenet_k210.evaluate.callback import VerificationCallback

        self.inner = VerificationCallback(embedding_model, bins, batch_size=batch_size, flip=flip, verbose=0)
        self.every, self.epochs = max(1, every), epochs

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0 or epoch + 1 == self.epochs:
            self.inner.on_epoch_end(epoch, logs)
        elif logs is not None:
            logs.update({k: float("nan") for k in [VERIFICATION] + [f"{VERIFICATION}/{n}" for n in self.inner.sets]})


class EmbeddingCheckpoints(tf.keras.callbacks.Callback):
    """Save the embedding model: ``last/`` every epoch, ``embedding/`` when ``monitor`` improves.

    The best value lives in ``state.json`` so that a resumed run keeps comparing with it. Saves go
    through a float32 copy of the backbone (``export_copy``), so a mixed-precision or distributed
    run still saves a plain model that ``mfk210 export`` reads.
    """

    def __init__(self, embedding_model: tf.keras.Model, export_copy: tf.keras.Model, run_dir: Path,
                 state: Dict[str, Any], phase_index: int, monitor: str, mode: str, chief: bool,
                 log: logging.Logger):
        super().__init__()
        self.embedding_model, self.export_copy, self.run_dir = embedding_model, export_copy, run_dir
        self.state, self.phase_index, self.monitor, self.mode = state, phase_index, monitor, mode
        self.chief, self.log = chief, log

    def _better(self, value: float) -> bool:
        best = self.state.get("best")
        if not best or best.get("monitor") != self.monitor:
            return True
        if self.monitor != VERIFICATION and best.get("phase") != self.phase_index:
            return True  # fallback scores of different heads are not comparable: best of the last phase
        # a tie goes to the later epoch: it has trained longer, and small selection sets saturate
        return value >= best["value"] if self.mode == "max" else value <= best["value"]

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.export_copy.set_weights(self.embedding_model.get_weights())
        if not self.chief:
            return
        save_embedding_model(self.export_copy, self.run_dir / "last" / "model.keras")
        value = logs.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        if self._better(float(value)):
            save_embedding_model(self.export_copy, self.run_dir)
            self.state["best"] = {"monitor": self.monitor, "mode": self.mode, "value": float(value),
                                  "phase": self.phase_index, "epoch": epoch + 1}
            _save_state(self.run_dir, self.state)
            self.log.info("  new best %s %.4f: saved %s", self.monitor, float(value),
                          self.run_dir / "embedding" / "model.keras")


class EpochLog(tf.keras.callbacks.Callback):
    """Adds ``lr`` and ``images_per_s`` (training steps only) to the logs and writes one line per epoch to the console and train.log."""

    def __init__(self, log: logging.Logger, title: str, epochs: int, batch_size: int, schedule: WarmupPiecewise,
                 steps_per_epoch: int, start_step: int, progress: bool):
        super().__init__()
        self.log, self.title, self.epochs, self.batch_size = log, title, epochs, batch_size
        self.schedule, self.steps, self.start_step, self.progress = schedule, steps_per_epoch, start_step, progress
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


def read_history(run_dir: Union[str, Path]) -> List[Tuple[int, List[Dict[str, float]]]]:
    """(phase index, rows) of every ``logs/phase<i>.csv``; one row per epoch, the latest kept if repeated."""
    import csv

    out = []
    for path in sorted(Path(run_dir, "logs").glob("phase*.csv"), key=lambda p: int(p.stem[5:])):
        rows: Dict[int, Dict[str, float]] = {}
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                try:
                    rows[int(row["epoch"])] = {k: float(v) for k, v in row.items() if v not in ("", "NA")}
                except (KeyError, ValueError):
                    continue
        out.append((int(path.stem[5:]), [rows[e] for e in sorted(rows)]))
    return out


def plot_history(run_dir: Union[str, Path]) -> Optional[Path]:
    """Write ``RUN_DIR/loss.png``: one curve per metric across phases, phases marked by vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = read_history(run_dir)
    if not any(rows for _, rows in history):
        return None
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    offset = 0
    for phase, rows in history:
        x = np.arange(offset + 1, offset + len(rows) + 1)
        ax_loss.plot(x, [r.get("loss", np.nan) for r in rows], label=f"phase {phase} loss")
        if any("val_loss" in r for r in rows):
            ax_loss.plot(x, [r.get("val_loss", np.nan) for r in rows], "--", label=f"phase {phase} val loss")
        for key in ("accuracy", "val_accuracy", VERIFICATION):
            if any(key in r for r in rows):
                ax_acc.plot(x, [r.get(key, np.nan) for r in rows], "o-" if key == VERIFICATION else "-",
                            markersize=3, label=f"phase {phase} {key}")
        for ax in (ax_loss, ax_acc):
            ax.axvline(offset + 0.5, color="grey", lw=0.5)
        offset += len(rows)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.01))
    for ax in (ax_loss, ax_acc):
        if ax.get_legend_handles_labels()[0]:  # a triplet-only run has no accuracy curve
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return atomic.save_figure(fig, Path(run_dir) / PLOT_FILE, dpi=100)


# --- the run --------------------------------------------------------------------------------------
def _logger(run_dir: Path) -> logging.Logger:
    log = logging.getLogger(f"mobilefacenet_k210.train.{run_dir.resolve()}")
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    file_handler = logging.FileHandler(run_dir / LOG_FILE, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(file_handler)
    log.addHandler(console)
    return log


def _monitor(config: TrainConfig, phase: PhaseConfig, has_val: bool) -> Tuple[str, str]:
    if config.verification:
        return VERIFICATION, "max"
    if phase.head in ("triplet", "distill"):
        return ("val_loss" if has_val else "loss"), "min"
    return ("val_accuracy" if has_val else "accuracy"), "max"


def _export_copy(config: TrainConfig) -> tf.keras.Model:
    with precision_policy("float32"):
        return MobileFaceNet(config.model)


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


def find_undecodable_record(files: List[Path]) -> Optional[Tuple[Path, int]]:
    """(shard, record index) of the first record whose image does not decode, or None if all do."""
    for f in files:
        ds = tf.data.TFRecordDataset(str(f)).map(lambda r: tf.shape(tf.io.decode_jpeg(
            tfrecord.parse_example(r)[tfrecord.IMAGE], channels=3)))
        it, i = iter(ds), 0
        while True:
            try:
                next(it)
            except StopIteration:
                break
            except tf.errors.InvalidArgumentError:
                return f, i
            i += 1
    return None


@contextlib.contextmanager
def shard_errors(data: pipeline.DataInfo) -> Iterator[None]:
    """Turn a bad shard met while reading (truncated file, undecodable image) into a ShardError naming it."""
    try:
        yield
    except tf.errors.DataLossError as exc:
        raise tfrecord.ShardError(f"{data.data_dir}: a shard is corrupt ({exc.message}); rebuild or "
                                  "check the shards listed in metadata.json") from None
    except tf.errors.InvalidArgumentError:
        bad = find_undecodable_record(data.train_files + data.val_files)
        if bad is None:
            raise  # not the data's fault
        raise tfrecord.ShardError(f"{bad[0]}: record {bad[1]} holds an image that does not decode (a corrupt JPEG "
                                  f"written into the shard); rebuild {data.data_dir} with `mfk210 build-tfrecords` "
                                  "from intact photos") from None


def drop_logged_epochs(run_dir: Path, index: int, start_epoch: int) -> None:
    """Forget what ``logs/phase<index>.csv`` and TensorBoard hold of epochs from ``start_epoch`` on.

    Those epochs are about to run again (a resumed phase restarts within or after the last backup),
    so their rows would otherwise appear twice.
    """
    path = run_dir / "logs" / f"phase{index}.csv"
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        kept = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) < start_epoch]
        if len(kept) < len(rows):
            with atomic.atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerows(kept)
    from tensorflow.core.util import event_pb2

    for folder in sorted(p for p in (run_dir / "tensorboard" / f"phase{index}").glob("*") if p.is_dir()):
        files = sorted(folder.glob("events.out.tfevents.*"))
        records, dropped = [], 0
        for f in files:
            with contextlib.suppress(tf.errors.DataLossError):  # a kill can leave a torn last event
                for raw in tf.data.TFRecordDataset(str(f)).as_numpy_iterator():
                    event = event_pb2.Event.FromString(raw)
                    if event.HasField("summary") and event.step >= start_epoch:
                        dropped += 1
                    else:
                        records.append(raw)
        if dropped:
            with atomic.atomic_path(files[0]) as tmp, tf.io.TFRecordWriter(str(tmp)) as writer:
                for raw in records:
                    writer.write(raw)
            for f in files[1:]:
                f.unlink()


_LEFTOVER = re.compile(r"^\..+\.[0-9a-f]{8}(\.tmp|\.keras|\.h5|\.png)$")  # atomic.atomic_path's temp names


def remove_leftovers(run_dir: Path) -> List[Path]:
    """Delete the temporary files that a killed run left from its atomic writes; return them."""
    found = [p for p in run_dir.rglob(".*") if p.is_file() and _LEFTOVER.match(p.name)]
    for p in found:
        p.unlink()
    return found


def run_phase(config: TrainConfig, index: int, data: pipeline.DataInfo, run_dir: Path, state: Dict[str, Any],
              strategy: tf.distribute.Strategy, log: logging.Logger, progress: bool = True) -> Dict[str, Any]:
    """One phase: build the models, resume from the backup if any, ``model.fit``, save the backbone."""
    phase = config.phases[index]
    batch = phase.batch
    steps = pipeline.steps_per_epoch(data, batch, config.steps_per_epoch)
    if steps < 1:
        raise ConfigError(f"phases.{index}: {data.train_records} train records in {data.data_dir} make no batch "
                          f"of {batch}")
    backup_dir = run_dir / "backup" / f"phase{index}"
    start_epoch, start_step = resume_point(backup_dir, steps)
    title = f"phase {index + 1}/{len(config.phases)} {phase.head}"
    if start_epoch or start_step:
        log.info("%s: resuming at epoch %d, step %d/%d", title, start_epoch + 1, start_step, steps)
    else:
        log.info("%s: %d epochs x %d steps of %d images, %s lr %g", title, phase.epochs, steps, batch,
                 phase.optimizer, phase.lr)
    tf.keras.utils.set_random_seed(config.seed * 1009 + index)  # same initial head whether resumed or not
    with strategy.scope():
        embedding = MobileFaceNet(config.model)
        if index > 0 and phase.init == "previous":
            previous = load_embedding_model(run_dir / "phases" / f"phase{index - 1}")
            embedding.set_weights(previous.get_weights())
        teacher = data.teacher() if phase.uses_teacher else None
        model, head = heads.build_training_model(embedding, phase, data.num_classes, teacher[0] if teacher else 0)
        optimizer = make_optimizer(phase, steps)
        model.compile(optimizer=optimizer, loss=heads.make_loss(phase), metrics=heads.make_metrics(phase))
    export_copy = _export_copy(config)
    if phase.head_init == "imprint" and not (start_epoch or start_step):  # a resumed head comes from the backup
        export_copy.set_weights(embedding.get_weights())
        with shard_errors(data):
            sums = class_embedding_sums(export_copy, first_epoch_batches(config, index, data, steps), data.num_classes,
                                        steps, progress and _is_chief(strategy))
        heads.imprint(head, sums)
        log.info("%s: class centres imprinted from the mean embedding of each of %d classes", title, len(sums))
    workers, worker_index = _input_shard(strategy)
    pk = (phase.identities_per_batch, phase.images_per_identity) if phase.head == "triplet" else None
    train_ds = pipeline.train_dataset(data, batch, config.model.input_size, config.pipeline,
                                      seed=config.seed * 1009 + index, epochs=phase.epochs, steps_per_epoch=steps,
                                      start_epoch=start_epoch, start_step=start_step, pk=pk,
                                      num_input_pipelines=workers, input_index=worker_index, teacher=teacher)
    val_ds = pipeline.val_dataset(data, config.pipeline.val_batch_size, config.model.input_size, teacher) \
        if config.pipeline.validation else None
    monitor, mode = _monitor(config, phase, val_ds is not None)
    chief = _is_chief(strategy)
    (run_dir / "logs").mkdir(exist_ok=True)
    if chief:
        drop_logged_epochs(run_dir, index, start_epoch)
    callbacks: List[tf.keras.callbacks.Callback] = []
    if config.verification:
        callbacks.append(EveryNVerification(embedding, config.verification, config.verification_batch_size,
                                            config.verification_flip, config.verification_every, phase.epochs))
    callbacks += [
        EpochLog(log, title, phase.epochs, batch, make_schedule(phase, steps), steps, start_step, progress and chief),
        EmbeddingCheckpoints(embedding, export_copy, run_dir, state, index, monitor, mode, chief, log),
    ]
    if chief:
        callbacks += [
            tf.keras.callbacks.CSVLogger(str(run_dir / "logs" / f"phase{index}.csv"), append=True),
            tf.keras.callbacks.TensorBoard(str(run_dir / "tensorboard" / f"phase{index}"), write_graph=False,
                                           profile_batch=0),
            LossPlot(run_dir),
        ]
    callbacks.append(ExactBackupAndRestore(backup_dir, config.backup_every_steps, steps))
    start = time.perf_counter()
    with shard_errors(data):
        model.fit(train_ds, epochs=phase.epochs, steps_per_epoch=steps, validation_data=val_ds,
                  callbacks=callbacks, verbose=0)
    export_copy.set_weights(embedding.get_weights())
    if chief:
        save_embedding_model(export_copy, run_dir / "phases" / f"phase{index}" / "model.keras")
    return {"head": phase.head, "epochs": phase.epochs, "steps_per_epoch": steps,
            "optimizer_iterations": int(optimizer.iterations.numpy()), "seconds": time.perf_counter() - start}


def train(config: TrainConfig, data_dir: Union[str, Path], out_dir: Union[str, Path],
          allow_config_change: bool = False, progress: bool = True) -> Dict[str, Any]:
    """Run (or resume) every phase of ``config`` on the shards in ``data_dir``; outputs in ``out_dir``.

    Returns the run state: phases completed with their epochs and optimizer iterations, and the best
    checkpoint's score. The best embedding model is at ``out_dir/embedding/model.keras``.
    """
    config.validate()
    run_dir = Path(out_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ResumeError(f"{run_dir}: --out is a file, not a run folder; give a new folder, or the run folder "
                          "of the run to resume")
    run_dir.mkdir(parents=True, exist_ok=True)
    log = _logger(run_dir)
    try:
        data = pipeline.DataInfo(data_dir)
        pipeline.check_shards(data.train_files + data.val_files, data.meta)
        state = _load_state(run_dir, config, data, allow_config_change, log)
        if config.deterministic_ops:
            tf.config.experimental.enable_op_determinism()
        strategy = make_strategy(config.strategy)
        if _is_chief(strategy):
            for leftover in remove_leftovers(run_dir):
                log.info("removed %s, left by an interrupted run", leftover)
        log.info("training %s: %d classes, %d train / %d val records, %s strategy (%d replicas)%s",
                 data.data_dir, data.num_classes, data.train_records, data.val_records, config.strategy,
                 strategy.num_replicas_in_sync, ", mixed float16" if config.mixed_precision else "")
        with precision_policy("mixed_float16" if config.mixed_precision else "float32"):
            for index in range(len(config.phases)):
                backup_dir = run_dir / "backup" / f"phase{index}"
                if index < state["completed_phases"]:
                    shutil.rmtree(backup_dir, ignore_errors=True)
                    continue
                summary = run_phase(config, index, data, run_dir, state, strategy, log, progress)
                state["phases"] = state["phases"][:index] + [summary]
                state["completed_phases"] = index + 1
                _save_state(run_dir, state)
                shutil.rmtree(backup_dir, ignore_errors=True)
        if not (run_dir / "embedding" / "model.keras").is_file() and (run_dir / "last" / "model.keras").is_file():
            save_embedding_model(load_embedding_model(run_dir / "last" / "model.keras"), run_dir)
        plot_history(run_dir)
        best = state.get("best") or {}
        log.info("done: %d phase(s); best %s %s; embedding model %s", state["completed_phases"],
                 best.get("monitor", "-"), f"{best['value']:.4f}" if best else "-", run_dir / "embedding" / "model.keras")
        return state
    finally:
        for h in list(log.handlers):
            log.removeHandler(h)
            h.close()


# --- throughput -----------------------------------------------------------------------------------
def measure_train_throughput(config: TrainConfig, phase_index: int = 0, num_classes: int = 1000, steps: int = 20,
                             warmup: int = 3, batch_size: Optional[int] = None) -> Dict[str, float]:
    """Images per second the model consumes in training (forward, backward, update), input excluded.

    One random batch is cached and repeated, so the figure is the model's and can be set against
    :func:`pipeline.measure_throughput` (the input should deliver several times this).
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
    with precision_policy("mixed_float16" if config.mixed_precision else "float32"):
        embedding = MobileFaceNet(config.model)
        model, _ = heads.build_training_model(embedding, phase, num_classes)
        model.compile(optimizer=make_optimizer(phase, 1000), loss=heads.make_loss(phase))
        model.fit(ds, steps_per_epoch=warmup, epochs=1, verbose=0)
        start = time.perf_counter()
        model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
        seconds = time.perf_counter() - start
    return {"images_per_s": steps * batch / seconds, "batch_size": batch, "steps": steps, "seconds": seconds,
            "head": phase.head}
