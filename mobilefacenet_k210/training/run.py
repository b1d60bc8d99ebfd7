"""Training: the phases of a :class:`~config.TrainConfig`, one ``model.fit`` each, resumable exactly.

A run folder holds::

    config.json           the run's fingerprint: its config and its data (counts and shard sha256s);
                          a resume with another one is refused
    state.json            phases completed, best score so far (written atomically)
    backup/phase<i>/      BackupAndRestore state of the phase in progress: weights, optimizer slots
                          and iterations (hence the learning-rate position), epoch and step
    phases/phase<i>/      the backbone at the end of phase i, where phase i+1 starts from
    embedding/model.keras the best embedding model (by verification accuracy, see below)
    last/model.keras      the embedding model after the latest scored epoch (see EmbeddingCheckpoints)
    logs/phase<i>.csv, tensorboard/, train.log, loss.png

Kill the process at any moment and run the same command again: the phase in progress resumes at
its epoch and step, on the same batches (the input stream is a function of seed, epoch and step).
The rerun drops the log rows of the epochs it redoes and the temporary files the kill left.

With ``--strategy multiworker`` every worker runs this same function: the chief writes the run
folder, the others a temporary folder of their own (see :mod:`training.distribute`); each reads
its own part of the input; after a failure all of them are restarted and resume together.
"""
import contextlib
import dataclasses
import hashlib
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import tensorflow as tf

from mobilefacenet_k210 import folder_lock
from mobilefacenet_k210.config import EMBEDDING_LOSS_HEADS, ConfigError, PhaseConfig, TrainConfig
from mobilefacenet_k210.data import pipeline, tfrecord
from mobilefacenet_k210.evaluate.callback import VERIFICATION_METRIC
from mobilefacenet_k210.model import heads
from mobilefacenet_k210.model.io import load_embedding_model, save_embedding_model
from mobilefacenet_k210.model.mobilefacenet import MobileFaceNet
from mobilefacenet_k210.training import run_folder
from mobilefacenet_k210.training.callbacks import (EmbeddingCheckpoints, EpochLog, EveryNVerification,
                                                   ExactBackupAndRestore, LossPlot, resume_point)
from mobilefacenet_k210.training.context import Monitor, RunContext
from mobilefacenet_k210.training.distribute import (input_shard, is_chief, make_strategy, mixed_policy,
                                                    precision_policy, with_loss_scaling, worker_write_dir)
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
            # this process's own copy if it ran the previous phase, else the chief's (a resumed run)
            own = run.out / "phases" / f"phase{plan.index - 1}"
            previous = own if (own / "model.keras").is_file() else run.run_dir / "phases" / f"phase{plan.index - 1}"
            embedding.set_weights(load_embedding_model(previous).get_weights())
        elif plan.index == 0 and config.init_model:
            start_from_model(embedding, config.init_model)
        teacher = _teacher(plan.phase, data)
        model, head = heads.build_training_model(embedding, plan.phase, data.num_classes, teacher[0] if teacher else 0)
        model.compile(optimizer=with_loss_scaling(make_optimizer(plan.phase, plan.steps)),
                      loss=heads.make_loss(plan.phase), metrics=heads.make_metrics(plan.phase))
        # slots made now, not by the first step: a step that creates variables is traced twice
        model.optimizer.build(model.trainable_variables)
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


def start_from_model(embedding: tf.keras.Model, path: str) -> None:
    """Set the backbone's weights to those of the embedding model at ``path`` (``init_model``)."""
    weights = load_embedding_model(path).get_weights()
    if [w.shape for w in weights] != [tuple(w.shape) for w in embedding.weights]:
        raise ConfigError(f"init_model {path}: its weights do not fit the configured model (another shape); give "
                          "the model section the init model was built with")
    embedding.set_weights(weights)


def _triplet_groups(phase: PhaseConfig, replicas: int) -> Optional[Tuple[int, int]]:
    """(P identities, K images) of one replica's triplet batch; None for the other heads."""
    if phase.head != "triplet":
        return None
    return phase.identities_per_batch // replicas, phase.images_per_identity


def _teacher(phase: PhaseConfig, data: pipeline.DataInfo) -> pipeline.TeacherSpec:
    """(dim, mirror) of the shards' teacher embeddings when the phase distils, else None."""
    return data.teacher() if phase.uses_teacher else None


def worker_train_dataset(config: TrainConfig, plan: PhasePlan, data: pipeline.DataInfo,
                         context: tf.distribute.InputContext) -> tf.data.Dataset:
    """One worker's input in a multi-worker run: its own shards, in batches of one replica's share.

    ``context`` says how many input pipelines (workers) there are, which one this is and how many
    replicas train in all. Each worker reads a disjoint part of every epoch (see
    :func:`pipeline.train_dataset`); each of its R replicas takes the next batch, so an epoch of the
    worker's stream is R x steps batches, and a resume skips R x the steps done.
    """
    phase = plan.phase
    replicas = context.num_replicas_in_sync
    local = max(1, replicas // context.num_input_pipelines)
    pk = _triplet_groups(phase, replicas)
    return pipeline.train_dataset(data, context.get_per_replica_batch_size(phase.batch), config.model.input_size,
                                  config.pipeline, seed=plan.seed, epochs=phase.epochs,
                                  steps_per_epoch=plan.steps * local, start_epoch=plan.start_epoch,
                                  start_step=plan.start_step * local, pk=pk,
                                  num_input_pipelines=context.num_input_pipelines,
                                  input_index=context.input_pipeline_id, teacher=_teacher(plan.phase, data))


def build_datasets(config: TrainConfig, plan: PhasePlan, data: pipeline.DataInfo,
                   strategy: tf.distribute.Strategy) -> Tuple[Any, Optional[tf.data.Dataset]]:
    """(train, val or None): this worker's share of the phase's batches, from the resume point on.

    On one machine the global batches are split over the local replicas by ``model.fit``. In a
    cluster every worker builds its own input with :func:`worker_train_dataset` (the pipeline splits
    the shards between workers itself, so nothing is sharded again by tf.distribute).
    """
    workers, _ = input_shard(strategy)
    phase = plan.phase
    replicas = strategy.num_replicas_in_sync
    if workers > 1:
        per_replica = phase.identities_per_batch if phase.head == "triplet" else phase.batch
        if per_replica % replicas:
            what = "identities_per_batch" if phase.head == "triplet" else "batch_size"
            raise ConfigError(f"phases.{plan.index}.{what}: {per_replica} does not split evenly over the "
                              f"{replicas} replicas of the cluster; use a multiple of {replicas}")
        train_ds = strategy.distribute_datasets_from_function(
            lambda context: worker_train_dataset(config, plan, data, context))
    else:
        train_ds = pipeline.train_dataset(data, phase.batch, config.model.input_size, config.pipeline, seed=plan.seed,
                                          epochs=phase.epochs, steps_per_epoch=plan.steps,
                                          start_epoch=plan.start_epoch, start_step=plan.start_step,
                                          pk=_triplet_groups(phase, 1), teacher=_teacher(phase, data))
    val_ds = pipeline.val_dataset(data, config.pipeline.val_batch_size, config.model.input_size,
                                  _teacher(phase, data)) \
        if config.pipeline.validation else None
    return train_ds, val_ds


def monitor_for(config: TrainConfig, phase: PhaseConfig, has_val: bool) -> Monitor:
    """What picks the best model: verification if configured, else the head's own (val) accuracy or loss."""
    if config.verification:
        return Monitor(VERIFICATION_METRIC, "max")
    if phase.head in EMBEDDING_LOSS_HEADS:
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
        tf.keras.callbacks.CSVLogger(str(run.out / "logs" / f"phase{plan.index}.csv"), append=True),
        tf.keras.callbacks.TensorBoard(str(run.out / "tensorboard" / f"phase{plan.index}"), write_graph=False,
                                       profile_batch=0),
        LossPlot(run.out),
        # every worker backs up; TensorFlow has the non-chief ones write beside it and delete their copy
        ExactBackupAndRestore(plan.backup_dir, config.backup_every_steps, plan.steps),
    ]
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
    (run.out / "logs").mkdir(exist_ok=True)
    run_folder.drop_logged_epochs(run.out, index, plan.start_epoch)
    callbacks = build_callbacks(config, plan, models, monitor_for(config, plan.phase, val_ds is not None), run)
    start = time.perf_counter()
    with shard_errors(data):
        models.training.fit(train_ds, epochs=plan.phase.epochs, steps_per_epoch=plan.steps, validation_data=val_ds,
                            callbacks=callbacks, verbose=0)
    models.export_copy.set_weights(models.embedding.get_weights())
    save_embedding_model(models.export_copy, run.out / "phases" / f"phase{index}" / "model.keras")
    run.log.info("%s: done, backbone weights sha256 %s", plan.title, weights_digest(models.export_copy))
    return {"head": plan.phase.head, "epochs": plan.phase.epochs, "steps_per_epoch": plan.steps,
            "optimizer_iterations": int(models.training.optimizer.iterations.numpy()),
            "seconds": time.perf_counter() - start}


def weights_digest(model: tf.keras.Model) -> str:
    """sha256 of a model's weights, in order: the workers of a cluster log it to show they agree."""
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(w.astype(w.dtype.newbyteorder("<")).tobytes())
    return digest.hexdigest()[:16]


# --- the run --------------------------------------------------------------------------------------
def train(config: TrainConfig, data_dir: Union[str, Path], out_dir: Union[str, Path],
          allow_config_change: bool = False, progress: bool = True, source: str = "") -> Dict[str, Any]:
    """Run (or resume) every phase of ``config`` on the shards in ``data_dir``; outputs in ``out_dir``.

    ``source`` says where the config came from (file and overrides); ``train.log`` records it. A second
    run into ``out_dir`` meanwhile is refused (:mod:`folder_lock`); a killed run's rerun takes it over.

    Returns the run state: phases completed with their epochs and optimizer iterations, and the best
    checkpoint's score. The best embedding model is at ``out_dir/embedding/model.keras``.
    """
    config.validate()
    run_dir = Path(out_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ResumeError(f"{run_dir}: --out is a file, not a run folder; give a new folder, or the run folder "
                          "of the run to resume")
    # first: a multi-worker strategy must exist before TensorFlow runs any op
    strategy = make_strategy(config.strategy)
    chief = is_chief(strategy)
    # the chief holds the run folder's lock; the other workers write only into temporary folders of their own
    with folder_lock.hold(run_dir) if chief else contextlib.nullcontext():
        run_dir.mkdir(parents=True, exist_ok=True)
        return _train(config, data_dir, run_dir, strategy, allow_config_change, progress, source)


def _train(config: TrainConfig, data_dir: Union[str, Path], run_dir: Path, strategy: tf.distribute.Strategy,
           allow_config_change: bool, progress: bool, source: str) -> Dict[str, Any]:
    """:func:`train` in the run folder ``run_dir`` (locked by the chief) with ``strategy``."""
    chief = is_chief(strategy)
    write_dir = worker_write_dir(run_dir, strategy)
    log = run_folder.open_log(write_dir)
    try:
        data = pipeline.DataInfo(data_dir)
        pipeline.check_shards(data.train_files + data.val_files, data.meta)
        state = run_folder.load_state(run_dir, config, data, allow_config_change, log, write=chief)
        if config.deterministic_ops:
            tf.config.experimental.enable_op_determinism()
        run = RunContext(run_dir, state, log, chief=chief, progress=progress, write_dir=write_dir)
        if chief:
            for leftover in run_folder.remove_leftovers(run_dir):
                log.info("removed %s, left by an interrupted run", leftover)
        policy = mixed_policy() if config.mixed_precision else "float32"
        if source:
            log.info("config: %s", source)
        log.info("training %s: %d classes, %d train / %d val records, %s strategy (%d replicas)%s",
                 data.data_dir, data.num_classes, data.train_records, data.val_records, config.strategy,
                 strategy.num_replicas_in_sync, f", mixed precision {policy}" if config.mixed_precision else "")
        if not chief:
            log.info("worker %d of %d: the chief writes %s; this worker writes into %s, deleted at the end",
                     input_shard(strategy)[1], input_shard(strategy)[0], run_dir, write_dir)
        with precision_policy(policy):
            for index in range(len(config.phases)):
                backup_dir = run_dir / "backup" / f"phase{index}"
                if index < state["completed_phases"]:
                    if chief:
                        shutil.rmtree(backup_dir, ignore_errors=True)
                    continue
                summary = run_phase(config, index, data, run, strategy)
                state["phases"] = state["phases"][:index] + [summary]
                state["completed_phases"] = index + 1
                run.save_state()
                if chief:
                    shutil.rmtree(backup_dir, ignore_errors=True)
        best_path, last_path = write_dir / "embedding" / "model.keras", write_dir / "last" / "model.keras"
        if not best_path.is_file() and last_path.is_file():
            save_embedding_model(load_embedding_model(last_path), write_dir)
        plot_history(write_dir)
        best = state.get("best") or {}
        log.info("done: %d phase(s); best %s %s; embedding model %s", state["completed_phases"],
                 best.get("monitor", "-"), f"{best['value']:.4f}" if best else "-", run_dir / "embedding" / "model.keras")
        return state
    finally:
        run_folder.close_log(log)
        if write_dir != run_dir:
            shutil.rmtree(write_dir, ignore_errors=True)
