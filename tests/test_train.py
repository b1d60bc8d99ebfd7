"""Training runs on tiny shards: phases carry the backbone, the best checkpoint follows verification,
imprinted centres match the embeddings the margin phase computes, a second training into a live run is
refused and writes nothing, SIGKILL + rerun at once (the dead run's folder lock taken over) ends where an
uninterrupted run ends (logs not doubled, temp files removed), a changed config or other data is
refused, user mistakes are one-line errors, triplet phases run, `train --mixed-precision` runs (the
machine's policy: mixed_bfloat16 on CPUs with bfloat16 kernels, else mixed_float16) and its float32
embedding model exports to a kmodel, MirroredStrategy runs over two logical CPUs."""
import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml

from conftest import recorded_pid, snapshot
from mobilefacenet_k210 import cli, folder_lock
from mobilefacenet_k210.config import TrainConfig, load
from mobilefacenet_k210.evaluate.callback import VERIFICATION_METRIC
from mobilefacenet_k210.model.io import load_embedding_model
from mobilefacenet_k210.training import run as training_run, run_folder
from mobilefacenet_k210.training.callbacks import EmbeddingCheckpoints
from mobilefacenet_k210.training.context import Monitor, RunContext
from mobilefacenet_k210.training.imprint import class_embedding_sums, first_epoch_batches

TINY = {
    "model": {"input_size": 64, "width_multiplier": 0.25, "embedding_size": 32},
    "pipeline": {"shuffle_buffer": 64, "cycle_length": 4, "validation": False},
    "phases": [
        {"head": "softmax", "epochs": 1, "batch_size": 8, "lr": 0.05},
        {"head": "arcface", "epochs": 3, "batch_size": 8, "lr": 0.05, "scale": 16.0, "margin": 0.2,
         "lr_steps": [2]},
    ],
    # twice per 6-step epoch: a kill before an epoch-end backup still resumes mid-epoch (a backup at
    # every step made each run save 24 checkpoints for no further property)
    "backup_every_steps": 3,
    "deterministic_ops": True,
}
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
SMALL = ["model.input_size=64", "model.width_multiplier=0.25", "model.embedding_size=32", "pipeline.validation=false"]
# Generous bounds that only turn a hung run into a failure saying what was awaited: a slow machine
# waits for the observable state itself (a CSV row, the process's exit), never for a time.
HUNG_S = 1800


def _write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _cli(config: Path, data: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mobilefacenet_k210", "train", "--config", str(config), "--data", str(data),
           "--out", str(out), "--no-progress", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)


def _finish(proc: subprocess.Popen, what: str = "the training run to exit") -> str:
    try:
        out, _ = proc.communicate(timeout=HUNG_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"waited {HUNG_S} s for {what}: {proc.communicate()[0][-3000:]}")
    assert proc.returncode == 0, out[-3000:]
    return out


def _wait_for(condition: Callable[[], bool], proc: subprocess.Popen, what: str) -> None:
    """Poll until ``condition()`` holds while ``proc`` runs; fail naming ``what`` if it exits or hangs."""
    deadline = time.monotonic() + HUNG_S
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run exited before {what}: {proc.communicate()[0][-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"waited {HUNG_S} s for {what}")
        time.sleep(0.01)


def _csv_epochs(path: Path) -> list:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f) if row.get("epoch", "").isdigit()]


def _tensorboard_steps(folder: Path, tag: str) -> list:
    import tensorflow as tf

    steps = []
    for f in sorted(folder.rglob("events.out.tfevents.*")):
        try:
            for event in tf.compat.v1.train.summary_iterator(str(f)):
                steps += [event.step for v in event.summary.value if v.tag == tag]
        except tf.errors.DataLossError:  # the killed writer's torn last event: what TensorBoard skips too
            continue
    return sorted(steps)


def _pairs_bin(path: Path, pairs: int = 20, seed: int = 0) -> Path:
    from mobilefacenet_k210.evaluate.bins import write_bin

    rng = np.random.default_rng(seed)
    bases = rng.integers(0, 256, size=(pairs * 2, 112, 112, 3))
    images, issame = [], []
    for i in range(pairs):
        same = i % 2 == 0
        a = bases[2 * i]
        b = a if same else bases[2 * i + 1]
        images += [a, np.clip(b + rng.normal(0, 10, b.shape), 0, 255)]
        issame.append(same)
    return write_bin(path, np.stack(images).astype(np.uint8), issame)


def _one_line_error(capsys, *names: str) -> str:
    """The error line ending stderr (after the run's own log lines), naming each of ``names``; no traceback."""
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("mfk210 ")]
    assert len(errors) == 1 and lines[-1].startswith("mfk210 train: error: "), lines[-20:]
    assert not any(line.startswith("Traceback") for line in lines), lines[-20:]
    for name in names:
        assert name in errors[0], errors[0]
    return errors[0]


def test_softmax_then_imprinted_arcface_carries_the_backbone_and_keeps_the_best_by_verification(tiny_shards,
                                                                                               tmp_path):
    """One two-phase run: the ArcFace phase starts from the softmax phase's backbone and from centres
    imprinted where its first epoch puts each class; the best epoch by verification is the model kept."""
    import tensorflow as tf

    from mobilefacenet_k210.data import pipeline
    from mobilefacenet_k210.evaluate.callback import VerificationCallback
    from mobilefacenet_k210.model import heads

    data = tiny_shards(num_classes=4, per_class=4, num_shards=2)
    bins = _pairs_bin(tmp_path / "pairs.bin")
    config = load(TrainConfig, None, [
        "model.width_multiplier=0.25", "model.embedding_size=32", "pipeline.shuffle_buffer=32",
        "pipeline.validation=false",
        "phases.0.epochs=3", "phases.0.batch_size=8", "phases.0.lr=0.05",
        # an ArcFace phase that cannot move the weights: what it ends with is what it started from, and its
        # loss is the starting head's
        "phases.1.epochs=1", "phases.1.batch_size=8", "phases.1.lr=1e-12", "phases.1.weight_decay=0",
        "phases.1.lr_steps=[]", "phases.1.scale=16", "phases.1.margin=0.0", "phases.1.head_init=imprint",
        f"verification.tiny={bins}", "verification_batch_size=8", "deterministic_ops=true"])
    run = tmp_path / "run"
    state = training_run.train(config, data, run, progress=False)

    assert state["completed_phases"] == 2
    assert [p["optimizer_iterations"] for p in state["phases"]] == [6, 2]
    after_softmax = load_embedding_model(run / "phases" / "phase0")
    after_arcface = load_embedding_model(run / "phases" / "phase1")
    for a, b in zip(after_softmax.trainable_weights, after_arcface.trainable_weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.name)

    # the saved model is the epoch with the best verification, the later one on a tie
    scores = []
    for phase in (0, 1):
        with open(run / "logs" / f"phase{phase}.csv") as f:
            scores += [(float(r["verification_accuracy"]), phase, int(r["epoch"]) + 1) for r in csv.DictReader(f)]
    best_value = max(s[0] for s in scores)
    _, best_phase, best_epoch = [s for s in scores if s[0] == best_value][-1]
    assert state["best"]["monitor"] == "verification_accuracy"
    assert (state["best"]["value"], state["best"]["phase"], state["best"]["epoch"]) == \
        (best_value, best_phase, best_epoch), scores
    best = load_embedding_model(run)
    assert VerificationCallback(best, {"tiny": str(bins)}, batch_size=8, verbose=0).evaluate()[
        "verification_accuracy"] == best_value
    assert best.output_shape == (None, 32) and "head" not in [layer.name for layer in best.layers]
    header = (run / "logs" / "phase0.csv").read_text().splitlines()[0].split(",")
    assert {"loss", "accuracy", "lr", "verification_accuracy"} <= set(header)
    assert (run / "loss.png").stat().st_size > 0 and (run / "last" / "model.keras").is_file()
    log = (run / "train.log").read_text()
    assert "phase 2/2 arcface epoch 1/1" in log and "verification_accuracy" in log and "imprinted" in log
    assert any((run / "tensorboard" / "phase1").rglob("events.out.tfevents*"))

    # the ArcFace phase's first epoch, computed as its steps compute it: training mode, batch statistics
    info = pipeline.DataInfo(data)
    steps = pipeline.steps_per_epoch(info, 8)
    batches = list(first_epoch_batches(config, 1, info, steps))
    _, imprinted = heads.build_training_model(after_softmax, config.phases[1], 4)
    _, random_head = heads.build_training_model(after_softmax, config.phases[1], 4)
    heads.imprint(imprinted, class_embedding_sums(after_softmax, batches, 4, steps, progress=False))
    own, correct, losses = {"imprint": [], "random": []}, [], []
    for (images, labels), _ in batches:
        embeddings = after_softmax(images, training=True)
        rows = np.arange(len(labels))
        for name, head in (("imprint", imprinted), ("random", random_head)):
            own[name] += list(head.cosine(embeddings).numpy()[rows, labels.numpy()])
        logits = imprinted([embeddings, labels])
        correct += list(np.argmax(logits, axis=1) == labels.numpy())
        losses.append(float(tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)))
    summary = {k: float(np.mean(v)) for k, v in own.items()}
    assert summary["imprint"] > summary["random"] + 0.3, summary
    assert np.mean(correct) >= 0.5, (np.mean(correct), summary)
    # the phase itself started from these centres: its epoch loss is theirs (its lr cannot move them)
    with open(run / "logs" / "phase1.csv") as f:
        logged = float(list(csv.DictReader(f))[-1]["loss"])
    np.testing.assert_allclose(logged, np.mean(losses), rtol=1e-3)
    with pytest.raises(training_run.ConfigError, match="margin heads"):
        load(TrainConfig, None, ["phases.0.head_init=imprint"])


def _small_model():
    """The checkpoint callback saves whatever backbone it is given: a small one is as good here."""
    import tensorflow as tf

    inputs = tf.keras.Input((8,))
    return tf.keras.Model(inputs, tf.keras.layers.Dense(4)(tf.keras.layers.Dense(6, activation="relu")(inputs)))


def test_best_checkpoint_keeps_the_best_epoch_and_the_later_one_on_a_tie(tmp_path):
    model, export_copy = _small_model(), _small_model()
    state: dict = {"best": None}
    run = RunContext(tmp_path, state, logging.getLogger("test_best_checkpoint"))
    saver = EmbeddingCheckpoints(model, export_copy, run, 0, Monitor(VERIFICATION_METRIC, "max"))
    weights_at = {}
    for epoch, score in enumerate([0.5, 0.75, 0.75, 0.5]):
        model.set_weights([w + 0.01 * (epoch + 1) for w in model.get_weights()])
        weights_at[epoch] = model.get_weights()
        saver.on_epoch_end(epoch, {VERIFICATION_METRIC: score})
    assert (state["best"]["epoch"], state["best"]["value"]) == (3, 0.75)  # the tie went to the later epoch
    for name, epoch in (("embedding", 2), ("last", 3)):
        saved = load_embedding_model(tmp_path / name / "model.keras").get_weights()
        for got, want in zip(saved, weights_at[epoch]):
            np.testing.assert_array_equal(got, want, err_msg=name)


def test_last_is_saved_on_scored_epochs_and_on_the_phases_last_epoch(tmp_path):
    """Epochs that verification skips (NaN score) are not saved to last/, except the phase's last one."""
    model, export_copy = _small_model(), _small_model()
    run = RunContext(tmp_path, {"best": None}, logging.getLogger("test_last_is_saved"))
    saver = EmbeddingCheckpoints(model, export_copy, run, 0, Monitor(VERIFICATION_METRIC, "max"))
    saver.set_params({"epochs": 3})
    weights_at = {}
    for epoch, score in enumerate([0.5, float("nan"), float("nan")]):
        model.set_weights([w + 0.01 * (epoch + 1) for w in model.get_weights()])
        weights_at[epoch] = model.get_weights()
        saver.on_epoch_end(epoch, {VERIFICATION_METRIC: score})
        last = load_embedding_model(tmp_path / "last" / "model.keras").get_weights()
        np.testing.assert_array_equal(last[0], weights_at[0 if epoch == 1 else epoch][0], err_msg=f"epoch {epoch}")


def test_a_second_training_is_refused_and_sigkill_and_rerun_ends_like_an_uninterrupted_run(tiny_shards, tmp_path,
                                                                                           capsys):
    """One run, two interruptions. A second training into the live run is refused (exit 2, one line naming the
    folder and the first one's pid) and writes nothing. The first, killed later and rerun, ends where an
    uninterrupted reference run ends: so it also ends as if the second had never tried."""
    data = tiny_shards(num_classes=8, per_class=6, num_shards=4, size=64)
    config = _write_config(tmp_path / "tiny.yaml", TINY)
    reference = _cli(config, data, tmp_path / "reference")
    victim_dir = tmp_path / "victim"
    victim = _cli(config, data, victim_dir)
    _wait_for(lambda: recorded_pid(victim_dir) == victim.pid, victim, "the run's holder record")
    os.kill(victim.pid, signal.SIGSTOP)  # paused while it holds the lock: live for as long as the second takes
    try:
        before = snapshot(victim_dir)
        capsys.readouterr()
        assert cli.main(["train", "--config", str(config), "--data", str(data), "--out", str(victim_dir),
                         "--no-progress"]) == 2
        _one_line_error(capsys, str(victim_dir), f"pid {victim.pid}", f"stop pid {victim.pid}")
        assert snapshot(victim_dir) == before  # the second wrote nothing
    finally:
        os.kill(victim.pid, signal.SIGCONT)
    phase1_csv = victim_dir / "logs" / "phase1.csv"
    # kill during the ArcFace phase, as soon as its first epoch's row is written: the softmax phase
    # done, the ArcFace phase mid-way (before or after that epoch's end-of-epoch backup)
    _wait_for(lambda: len(_csv_epochs(phase1_csv)) >= 1, victim, "the first ArcFace epoch's CSV row")
    lock = folder_lock.lock_path(victim_dir)
    assert json.loads(lock.read_text())["pid"] == victim.pid  # it holds the run folder's lock
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert json.loads(lock.read_text())["pid"] == victim.pid  # its record outlives it; the lock does not
    killed_state = json.loads((victim_dir / "state.json").read_text())
    assert killed_state["completed_phases"] == 1
    # what a kill during an atomic write leaves: hidden temporary files beside their targets
    leftovers = [victim_dir / "last" / ".model.keras.0123abcd.keras", victim_dir / ".loss.png.89abcdef.png",
                 victim_dir / ".state.json.a1b2c3d4.tmp"]
    for path in leftovers:
        path.write_bytes(b"half written")
    (victim_dir / "notes.tmp").write_text("the user's own file")

    out = _finish(_cli(config, data, victim_dir), "the resumed run to exit")  # at once: the lock is taken over
    _finish(reference, "the uninterrupted reference run to exit")
    assert "resuming at epoch" in out and not lock.exists()
    assert not [p for p in leftovers if p.exists()] and (victim_dir / "notes.tmp").is_file()
    resumed = json.loads((victim_dir / "state.json").read_text())
    expected = json.loads((tmp_path / "reference" / "state.json").read_text())
    assert resumed["completed_phases"] == expected["completed_phases"] == 2
    for got, want in zip(resumed["phases"], expected["phases"]):
        assert (got["epochs"], got["optimizer_iterations"]) == (want["epochs"], want["optimizer_iterations"])
    assert expected["phases"][1]["optimizer_iterations"] == 3 * 6
    log = (victim_dir / "train.log").read_text()
    assert log.count("phase 1/2 softmax epoch 1/1") == 1, "the finished softmax phase ran again"
    # one row per epoch, in the CSV and in TensorBoard, whichever epoch the kill made run again
    assert _csv_epochs(phase1_csv) == [0, 1, 2]
    assert _tensorboard_steps(victim_dir / "tensorboard" / "phase1", "epoch_loss") == [0, 1, 2]
    # same batches, restored weights, optimizer slots and learning-rate position: same weights
    a = load_embedding_model(victim_dir / "phases" / "phase1").get_weights()
    b = load_embedding_model(tmp_path / "reference" / "phases" / "phase1").get_weights()
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    assert not (victim_dir / "backup" / "phase1").exists()

    changed = load(TrainConfig, config, ["phases.1.epochs=5"])
    with pytest.raises(training_run.ResumeError, match=r"phases\.1\.epochs.*--allow-config-change"):
        training_run.train(changed, data, victim_dir, progress=False)
    # shards rebuilt from other photos, with the very same counts, are another run's data
    other = tiny_shards(num_classes=8, per_class=6, num_shards=4, size=64, seed=1)
    capsys.readouterr()
    argv = ["train", "--config", str(config), "--data", str(other), "--out", str(victim_dir), "--no-progress"]
    assert cli.main(argv) == 2
    _one_line_error(capsys, str(victim_dir / "config.json"), "data.shards_sha256", "--out")


def test_drop_logged_epochs_keeps_the_rows_of_the_epochs_before_the_resume(tmp_path):
    (tmp_path / "logs").mkdir()
    path = tmp_path / "logs" / "phase0.csv"
    path.write_text("epoch,loss\n0,3.0\n1,2.0\n2,1.5\n1,2.1\n")
    run_folder.drop_logged_epochs(tmp_path, 0, 1)
    assert path.read_text().splitlines() == ["epoch,loss", "0,3.0"]
    run_folder.drop_logged_epochs(tmp_path, 0, 0)
    assert path.read_text().splitlines() == ["epoch,loss"]


def _corrupt_one_shard(data: Path) -> Path:
    """Rewrite train shard 0 with records whose JPEG bytes are garbage (valid TFRecord CRCs, sha256 listed)."""
    import tensorflow as tf

    from mobilefacenet_k210 import atomic
    from mobilefacenet_k210.data import tfrecord

    meta = json.loads((data / tfrecord.METADATA_FILE).read_text())
    entry = next(s for s in meta["shards"] if s["split"] == "train")
    shard = data / entry["file"]
    records = []
    for raw in tf.data.TFRecordDataset(str(shard)).as_numpy_iterator():
        ex = tfrecord.parse_example(raw)
        records.append(tfrecord.encode_example(b"\xff\xd8\xff\xe0 not a jpeg" * 8, int(ex[tfrecord.LABEL]),
                                               "id", "id/x.jpg", "original"))
    entry.update(tfrecord.write_shard(shard, records))
    atomic.write_json(data / tfrecord.METADATA_FILE, meta)
    return shard


def test_user_errors_in_train_are_one_line_naming_the_file(tiny_shards, tmp_path, capsys):
    data = tiny_shards(num_classes=4, per_class=4, num_shards=2, size=64)
    base = ["train", "--data", str(data), "--no-progress"] + [f"--set={s}" for s in SMALL + [
        "phases=[{head: softmax, epochs: 1, batch_size: 8}]"]]

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert cli.main(base + ["--out", str(a_file)]) == 2
    _one_line_error(capsys, str(a_file), "not a run folder")

    for name in ("config.json", "state.json"):
        run = tmp_path / f"damaged_{name}"
        run.mkdir()
        (run / name).write_text('{"completed_phases": 1, "pha')
        assert cli.main(base + ["--out", str(run)]) == 2
        _one_line_error(capsys, str(run / name), "not valid JSON", "--out")

    shard = _corrupt_one_shard(data)
    run = tmp_path / "corrupt_jpeg"
    assert cli.main(base + ["--out", str(run)]) == 2
    _one_line_error(capsys, str(shard), "record 0", "does not decode", "build-tfrecords")


def test_triplet_phase_trains_end_to_end(tiny_shards, tmp_path):
    data = tiny_shards(num_classes=4, per_class=4, num_shards=2, size=64)
    config = load(TrainConfig, None, SMALL + [
        "phases=[{head: triplet, epochs: 1, identities_per_batch: 2, images_per_identity: 2, lr: 0.01}]",
        "steps_per_epoch=3"])
    state = training_run.train(config, data, tmp_path / "run", progress=False)
    assert state["phases"][0]["optimizer_iterations"] == 3 and state["best"]["monitor"] == "loss"
    with open(tmp_path / "run" / "logs" / "phase0.csv") as f:
        assert np.isfinite(float(next(csv.DictReader(f))["loss"]))
    assert load_embedding_model(tmp_path / "run").output_shape == (None, 32)


def test_mixed_precision_cli_trains_saves_float32_and_exports_a_kmodel(tiny_shards, tmp_path, capsys):
    from conftest import synthetic_faces, write_faces

    from mobilefacenet_k210.config import ExportConfig
    from mobilefacenet_k210.export import export_model
    from mobilefacenet_k210.training.distribute import mixed_policy

    data = tiny_shards(num_classes=4, per_class=4, num_shards=2, size=112)
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), "--out", str(run), "--no-progress", "--mixed-precision"] + [
        f"--set={s}" for s in ["model.width_multiplier=0.25", "model.embedding_size=32", "pipeline.validation=false",
                               "phases=[{head: arcface, epochs: 1, batch_size: 8, scale: 16}]"]]
    assert cli.main(argv) == 0, capsys.readouterr().err[-3000:]
    state = json.loads((run / "state.json").read_text())
    assert state["phases"][0]["optimizer_iterations"] == 2
    log = (run / "train.log").read_text()
    assert f"mixed precision {mixed_policy()}" in log
    assert "config: the defaults, with mixed_precision=True --set=" not in log  # flags and --set, each once
    assert "config: the defaults, with mixed_precision=True model.width_multiplier=0.25" in log
    with open(run / "logs" / "phase0.csv") as f:
        assert np.isfinite(float(next(csv.DictReader(f))["loss"]))
    for path in (run, run / "phases" / "phase0"):
        model = load_embedding_model(path)
        assert {w.dtype.name for w in model.weights} == {"float32"}, path
        assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}, path
        assert model(np.zeros((1, 112, 112, 3), np.float32)).dtype.name == "float32"
    calibration = write_faces(tmp_path / "calib", synthetic_faces(6, 1))
    result = export_model(run / "embedding" / "model.keras", calibration, tmp_path / "export",
                          ExportConfig(calibrate_method="no_clip", calibration_samples=4, holdout_samples=2,
                                       int8_tflite=False))  # the kmodel is what this run is for
    assert (tmp_path / "export" / "model.kmodel").stat().st_size == result.kmodel_bytes > 0


@pytest.mark.parametrize("policy, scaled", [("mixed_float16", True), ("mixed_bfloat16", False), ("float32", False)])
def test_mixed_precision_computes_the_backbone_in_half_and_the_head_and_loss_scale_as_needed(policy, scaled):
    import tensorflow as tf

    from mobilefacenet_k210.model import heads
    from mobilefacenet_k210.model.mobilefacenet import MobileFaceNet
    from mobilefacenet_k210.training.distribute import precision_policy, with_loss_scaling
    from mobilefacenet_k210.training.schedule import make_optimizer

    from mobilefacenet_k210.training.distribute import cpu_runs_bfloat16

    if policy == "mixed_bfloat16" and not cpu_runs_bfloat16():
        pytest.skip("this CPU has no bfloat16 kernels (no AVX512_BF16/AMX): mixed_policy() picks mixed_float16")
    config = load(TrainConfig, None, SMALL + ["phases=[{head: arcface, epochs: 1, batch_size: 8}]"])
    with precision_policy(policy):
        embedding = MobileFaceNet(config.model)
        model, head = heads.build_training_model(embedding, config.phases[0], 4)
        model.compile(optimizer=with_loss_scaling(make_optimizer(config.phases[0], 10)),
                      loss=heads.make_loss(config.phases[0]))
    half = policy.split("_")[-1]
    assert embedding.output.dtype.name == half and head.compute_dtype == "float32"
    logits = model([np.zeros((2, 64, 64, 3), np.float32), np.zeros((2,), np.int32)])
    assert logits.dtype.name == "float32"
    assert isinstance(model.optimizer, tf.keras.mixed_precision.LossScaleOptimizer) is scaled


MIRRORED = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from mobilefacenet_k210.training import run as training_run
from mobilefacenet_k210.config import TrainConfig, load
config = load(TrainConfig, sys.argv[1], ["strategy=mirrored", "phases=[{head: arcface, epochs: 1, batch_size: 8}]"])
training_run.train(config, sys.argv[2], sys.argv[3], progress=False)
"""


def test_mirrored_strategy_over_two_logical_cpus_runs_an_epoch(tiny_shards, tmp_path):
    data = tiny_shards(num_classes=4, per_class=4, num_shards=2, size=64)
    config = _write_config(tmp_path / "tiny.yaml", {**TINY, "deterministic_ops": False, "backup_every_steps": 100})
    proc = subprocess.Popen([sys.executable, "-c", MIRRORED, str(config), str(data), str(tmp_path / "run")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    _finish(proc, "the MirroredStrategy run to exit")
    assert "(2 replicas)" in (tmp_path / "run" / "train.log").read_text()
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["phases"][0]["optimizer_iterations"] == 2
    assert load_embedding_model(tmp_path / "run").output_shape == (None, 32)


@pytest.mark.parametrize("name", ["demo_cpu.yaml", "seed_full.yaml"])
def test_ready_configs_load_validate_and_take_overrides(name):
    path = Path(__file__).resolve().parent.parent / "configs" / name
    config = load(TrainConfig, path, ["phases.1.epochs=3", "seed=7"])
    config.validate()
    assert [p.head for p in config.phases] == ["softmax", "arcface"]
    assert config.phases[1].epochs == 3 and config.seed == 7
    with pytest.raises(ValueError, match="head"):
        load(TrainConfig, path, ["phases.0.head=sphereface"])


def test_mixed_policy_is_float16_where_the_cpu_cannot_run_bfloat16(monkeypatch):
    """A CPU without bfloat16 kernels (AVX2 only) gets loss-scaled mixed_float16, one that has them
    mixed_bfloat16; the probe's answer is this machine's."""
    from mobilefacenet_k210.training import distribute

    assert isinstance(distribute.cpu_runs_bfloat16(), bool)
    monkeypatch.setattr(distribute, "cpu_runs_bfloat16", lambda: False)
    assert distribute.mixed_policy() == "mixed_float16"
    monkeypatch.setattr(distribute, "cpu_runs_bfloat16", lambda: True)
    assert distribute.mixed_policy() == "mixed_bfloat16"
