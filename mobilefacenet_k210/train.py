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
import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import tensorflow as tf

from mobilefacenet_k210.config import ConfigError, PhaseConfig, TrainConfig
from mobilefacenet_k210.data import pipeline, tfrecord
from mobilefacenet_k210.evaluate.callback import VERIFICATION_METRIC
from mobilefacenet_k210.model import heads
from mobilefacenet_k210.model.io import load_embedding_model, save_embedding_model
from mobilefacenet_k210.model.mobilefacenet import MobileFaceNet
from mobilefacenet_k210.training import run_folder
from mobilefacenet_k210.training.callbacks import (EmbeddingCheckpoints, EpochLog, EveryNVerification,
                                                   ExactBackupAndRestore, LossPlot, resume_point)
from mobilefacenet_k210.training.context import Monitor, RunContext
from mobilefacenet_k210.training.distribute import input_shard, is_chief, make_strategy, precision_policy
from mobilefacenet_k210.training.imprint import class_embedding_sums, first_epoch_batches
from mobilefacenet_k210.training.plot import plot_history
from mobilefacenet_k210.training.run_folder import ResumeError
from mobilefacenet_k210.training.schedule import make_optimizer, make_schedule

__all__ = ["ConfigError", "ResumeError", "train", "run_phase", "shard_errors"]


# --- the data's errors ----------------------------------------------------------------------------
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


# --- one phase: its models, its datasets, its callbacks -------------------------------------------
@dataclasses.dataclass
class PhasePlan:
    """Where phase ``index`` starts and how long it runs: resumed from its backup, or from the start."""

    index: int
    phase: PhaseConfig
    title: str
    steps: int
    backup_dir: Path
    start_epoch: int
    start_step: int
    seed_base: int

    @property
    def resumed(self) -> bool:
        """Whether the phase continues from a backup (its head and optimizer come from there)."""
        return bool(self.start_epoch or self.start_step)

    @property
    def seed(self) -> int:
        """The phase's seed: its initial head and its input stream depend on it, not on a resume."""
        return self.seed_base * 1009 + self.index


def plan_phase(config: TrainConfig, index: int, data: pipeline.DataInfo, run_dir: Path) -> PhasePlan:
    """Steps per epoch of phase ``index`` and the (epoch, step) its backup resumes at, if any."""
    phase = config.phases[index]
    steps = pipeline.steps_per_epoch(data, phase.batch, config.steps_per_epoch)
    if steps < 1:
        raise ConfigError(f"phases.{index}: {data.train_records} train records in {data.data_dir} make no batch "
                          f"of {phase.batch}")
    backup_dir = run_dir / "backup" / f"phase{index}"
    start_epoch, start_step = resume_point(backup_dir, steps)
    return PhasePlan(index, phase, f"phase {index + 1}/{len(config.phases)} {phase.head}", steps, backup_dir,
                     start_epoch, start_step, config.seed)


@dataclasses.dataclass
class PhaseModels:
    """The models of a phase: the backbone being trained, the training model around it (backbone and
    head), the head, and a float32 copy of the backbone that is what gets saved."""

    embedding: tf.keras.Model
    training: tf.keras.Model
    head: tf.keras.layers.Layer
    export_copy: tf.keras.Model


def float32_backbone(config: TrainConfig) -> tf.keras.Model:
    """A float32 MobileFaceNet of ``config.model``, whatever the global dtype policy."""
    with precision_policy("float32"):
        return MobileFaceNet(config.model)


def build_models(config: TrainConfig, plan: PhasePlan, data: pipeline.DataInfo, run: RunContext,
                 strategy: tf.distribute.Strategy) -> PhaseModels:
    """Backbone (from the previous phase if the phase says so), head and compiled training model."""
    tf.keras.utils.set_random_seed(plan.seed)  # same initial head whether resumed or not
    with strategy.scope():
        embedding = MobileFaceNet(config.model)
        if plan.index > 0 and plan.phase.init == "previous":
            previous = load_embedding_model(run.run_dir / "phases" / f"phase{plan.index - 1}")
            embedding.set_weights(previous.get_weights())
        model, head = heads.build_training_model(embedding, plan.phase, data.num_classes)
        model.compile(optimizer=make_optimizer(plan.phase, plan.steps), loss=heads.make_loss(plan.phase),
                      metrics=heads.make_metrics(plan.phase))
    models = PhaseModels(embedding, model, head, float32_backbone(config))
    if plan.phase.head_init == "imprint" and not plan.resumed:  # a resumed head comes from the backup
        models.export_copy.set_weights(embedding.get_weights())
        with shard_errors(data):
            sums = class_embedding_sums(models.export_copy, first_epoch_batches(config, plan.index, data, plan.steps),
                                        data.num_classes, plan.steps, run.progress and run.chief)
        heads.imprint(head, sums)
        run.log.info("%s: class centres imprinted from the mean embedding of each of %d classes", plan.title,
                     len(sums))
    return models


def build_datasets(config: TrainConfig, plan: PhasePlan, data: pipeline.DataInfo,
                   strategy: tf.distribute.Strategy) -> Tuple[tf.data.Dataset, Optional[tf.data.Dataset]]:
    """(train, val or None): this worker's share of the phase's batches, from the resume point on."""
    workers, worker_index = input_shard(strategy)
    phase = plan.phase
    pk = (phase.identities_per_batch, phase.images_per_identity) if phase.head == "triplet" else None
    train_ds = pipeline.train_dataset(data, phase.batch, config.model.input_size, config.pipeline, seed=plan.seed,
                                      epochs=phase.epochs, steps_per_epoch=plan.steps, start_epoch=plan.start_epoch,
                                      start_step=plan.start_step, pk=pk, num_input_pipelines=workers,
                                      input_index=worker_index)
    val_ds = pipeline.val_dataset(data, config.pipeline.val_batch_size, config.model.input_size) \
        if config.pipeline.validation else None
    return train_ds, val_ds


def monitor_for(config: TrainConfig, phase: PhaseConfig, has_val: bool) -> Monitor:
    """What picks the best model: verification if configured, else the head's own (val) accuracy or loss."""
    if config.verification:
        return Monitor(VERIFICATION_METRIC, "max")
    if phase.head == "triplet":
        return Monitor("val_loss" if has_val else "loss", "min")
    return Monitor("val_accuracy" if has_val else "accuracy", "max")


def build_callbacks(config: TrainConfig, plan: PhasePlan, models: PhaseModels, monitor: Monitor,
                    run: RunContext) -> List[tf.keras.callbacks.Callback]:
    """Verification first (it adds the monitored metric), then logs and saves, the backup last."""
    callbacks: List[tf.keras.callbacks.Callback] = []
    if config.verification:
        callbacks.append(EveryNVerification(models.embedding, config.verification, config.verification_batch_size,
                                            config.verification_flip, config.verification_every, plan.phase.epochs))
    callbacks += [
        EpochLog(run, plan.title, plan.phase.epochs, plan.phase.batch, make_schedule(plan.phase, plan.steps),
                 plan.steps, plan.start_step),
        EmbeddingCheckpoints(models.embedding, models.export_copy, run, plan.index, monitor),
    ]
    if run.chief:
        callbacks += [
            tf.keras.callbacks.CSVLogger(str(run.run_dir / "logs" / f"phase{plan.index}.csv"), append=True),
            tf.keras.callbacks.TensorBoard(str(run.run_dir / "tensorboard" / f"phase{plan.index}"), write_graph=False,
                                           profile_batch=0),
            LossPlot(run.run_dir),
        ]
    callbacks.append(ExactBackupAndRestore(plan.backup_dir, config.backup_every_steps, plan.steps))
    return callbacks


def run_phase(config: TrainConfig, index: int, data: pipeline.DataInfo, run: RunContext,
              strategy: tf.distribute.Strategy) -> Dict[str, Any]:
    """One phase: build the models, resume from the backup if any, ``model.fit``, save the backbone."""
    plan = plan_phase(config, index, data, run.run_dir)
    if plan.resumed:
        run.log.info("%s: resuming at epoch %d, step %d/%d", plan.title, plan.start_epoch + 1, plan.start_step,
                     plan.steps)
    else:
        run.log.info("%s: %d epochs x %d steps of %d images, %s lr %g", plan.title, plan.phase.epochs, plan.steps,
                     plan.phase.batch, plan.phase.optimizer, plan.phase.lr)
    models = build_models(config, plan, data, run, strategy)
    train_ds, val_ds = build_datasets(config, plan, data, strategy)
    (run.run_dir / "logs").mkdir(exist_ok=True)
    if run.chief:
        run_folder.drop_logged_epochs(run.run_dir, index, plan.start_epoch)
    callbacks = build_callbacks(config, plan, models, monitor_for(config, plan.phase, val_ds is not None), run)
    start = time.perf_counter()
    with shard_errors(data):
        models.training.fit(train_ds, epochs=plan.phase.epochs, steps_per_epoch=plan.steps, validation_data=val_ds,
                            callbacks=callbacks, verbose=0)
    models.export_copy.set_weights(models.embedding.get_weights())
    if run.chief:
        save_embedding_model(models.export_copy, run.run_dir / "phases" / f"phase{index}" / "model.keras")
    return {"head": plan.phase.head, "epochs": plan.phase.epochs, "steps_per_epoch": plan.steps,
            "optimizer_iterations": int(models.training.optimizer.iterations.numpy()),
            "seconds": time.perf_counter() - start}


# --- the run --------------------------------------------------------------------------------------
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
    log = run_folder.open_log(run_dir)
    try:
        data = pipeline.DataInfo(data_dir)
        pipeline.check_shards(data.train_files + data.val_files, data.meta)
        state = run_folder.load_state(run_dir, config, data, allow_config_change, log)
        if config.deterministic_ops:
            tf.config.experimental.enable_op_determinism()
        strategy = make_strategy(config.strategy)
        run = RunContext(run_dir, state, log, chief=is_chief(strategy), progress=progress)
        if run.chief:
            for leftover in run_folder.remove_leftovers(run_dir):
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
                summary = run_phase(config, index, data, run, strategy)
                state["phases"] = state["phases"][:index] + [summary]
                state["completed_phases"] = index + 1
                run.save_state()
                shutil.rmtree(backup_dir, ignore_errors=True)
        if not (run_dir / "embedding" / "model.keras").is_file() and (run_dir / "last" / "model.keras").is_file():
            save_embedding_model(load_embedding_model(run_dir / "last" / "model.keras"), run_dir)
        plot_history(run_dir)
        best = state.get("best") or {}
        log.info("done: %d phase(s); best %s %s; embedding model %s", state["completed_phases"],
                 best.get("monitor", "-"), f"{best['value']:.4f}" if best else "-", run_dir / "embedding" / "model.keras")
        return state
    finally:
        run_folder.close_log(log)
