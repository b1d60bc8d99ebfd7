"""Training runs on tiny shards: phases carry the backbone, the best checkpoint follows verification,
SIGKILL + rerun ends where an uninterrupted run ends, a changed config is refused, MirroredStrategy
runs over two logical CPUs."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from mobilefacenet_k210 import train
from mobilefacenet_k210.config import TrainConfig, load
from mobilefacenet_k210.model.io import load_embedding_model

TINY = {
    "model": {"input_size": 64, "width_multiplier": 0.25, "embedding_size": 32},
    "pipeline": {"shuffle_buffer": 64, "cycle_length": 4, "validation": False},
    "phases": [
        {"head": "softmax", "epochs": 1, "batch_size": 8, "lr": 0.05},
        {"head": "arcface", "epochs": 3, "batch_size": 8, "lr": 0.05, "scale": 16.0, "margin": 0.2,
         "lr_steps": [2]},
    ],
    "backup_every_steps": 1,
    "deterministic_ops": True,
}
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def _write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _cli(config: Path, data: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mobilefacenet_k210", "train", "--config", str(config), "--data", str(data),
           "--out", str(out), "--no-progress", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


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


def test_softmax_then_arcface_carries_the_backbone_and_keeps_the_best_by_verification(tiny_shards, tmp_path):
    data = tiny_shards(num_classes=4, per_class=4, num_shards=2)
    bins = _pairs_bin(tmp_path / "pairs.bin")
    config = load(TrainConfig, None, [
        "model.width_multiplier=0.25", "model.embedding_size=32", "pipeline.shuffle_buffer=32",
        "pipeline.validation=false",
        "phases.0.epochs=2", "phases.0.batch_size=8",
        # an ArcFace phase that cannot move the weights: what it ends with is what it started from
        "phases.1.epochs=1", "phases.1.batch_size=8", "phases.1.lr=1e-12", "phases.1.weight_decay=0",
        "phases.1.lr_steps=[]", f"verification.tiny={bins}", "verification_batch_size=8"])
    run = tmp_path / "run"
    state = train.train(config, data, run, progress=False)

    assert state["completed_phases"] == 2
    assert [p["optimizer_iterations"] for p in state["phases"]] == [4, 2]
    after_softmax = load_embedding_model(run / "phases" / "phase0")
    after_arcface = load_embedding_model(run / "phases" / "phase1")
    for a, b in zip(after_softmax.trainable_weights, after_arcface.trainable_weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.name)

    assert state["best"]["monitor"] == "verification_accuracy"
    best = load_embedding_model(run)
    assert best.output_shape == (None, 32) and "head" not in [layer.name for layer in best.layers]
    header = (run / "logs" / "phase0.csv").read_text().splitlines()[0].split(",")
    assert {"loss", "accuracy", "lr", "verification_accuracy"} <= set(header)
    assert (run / "loss.png").stat().st_size > 0 and (run / "last" / "model.keras").is_file()
    log = (run / "train.log").read_text()
    assert "phase 2/2 arcface epoch 1/1" in log and "verification_accuracy" in log
    assert any((run / "tensorboard" / "phase1").rglob("events.out.tfevents*"))


def test_imprinted_arcface_phase_starts_from_the_classes_the_softmax_phase_learned(tiny_shards, tmp_path):
    data = tiny_shards(num_classes=4, per_class=4, num_shards=1, size=64)
    common = ["model.input_size=64", "model.width_multiplier=0.25", "model.embedding_size=32",
              "pipeline.validation=false", "phases.0.epochs=6", "phases.0.batch_size=8", "phases.0.lr=0.05",
              # an ArcFace phase that does not move the weights: its accuracy is the starting head's
              "phases.1.epochs=1", "phases.1.batch_size=8", "phases.1.lr=1e-12", "phases.1.weight_decay=0",
              "phases.1.lr_steps=[]", "phases.1.scale=16", "phases.1.margin=0.0", "deterministic_ops=true"]
    first = {}
    for init in ("random", "imprint"):
        config = load(TrainConfig, None, common + [f"phases.1.head_init={init}"])
        train.train(config, data, tmp_path / init, progress=False)
        with open(tmp_path / init / "logs" / "phase1.csv") as f:
            first[init] = {k: float(v) for k, v in list(csv.DictReader(f))[-1].items() if k in ("accuracy", "loss")}
    assert "imprinted" in (tmp_path / "imprint" / "train.log").read_text()
    print(first)
    assert first["imprint"]["loss"] < 0.5 * first["random"]["loss"], first
    assert first["imprint"]["accuracy"] > first["random"]["accuracy"], first
    with pytest.raises(train.ConfigError, match="margin heads"):
        load(TrainConfig, None, ["phases.0.head_init=imprint"])


def test_sigkill_and_rerun_ends_like_an_uninterrupted_run(tiny_shards, tmp_path):
    data = tiny_shards(num_classes=8, per_class=6, num_shards=4, size=64)
    config = _write_config(tmp_path / "tiny.yaml", TINY)
    reference = _cli(config, data, tmp_path / "reference")
    victim_dir = tmp_path / "victim"
    victim = _cli(config, data, victim_dir)
    csv = victim_dir / "logs" / "phase1.csv"
    deadline = time.time() + 240
    # kill during the ArcFace phase, after its first epoch: phase 1 done, phase 2 mid-way
    while time.time() < deadline and not (csv.is_file() and len(csv.read_text().splitlines()) >= 2):
        assert victim.poll() is None, victim.communicate()[0][-3000:]
        time.sleep(0.05)
    assert victim.poll() is None, "the run ended before it could be killed"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    killed_state = json.loads((victim_dir / "state.json").read_text())
    assert killed_state["completed_phases"] == 1

    out = _finish(_cli(config, data, victim_dir))
    _finish(reference)
    assert "resuming at epoch" in out
    resumed = json.loads((victim_dir / "state.json").read_text())
    expected = json.loads((tmp_path / "reference" / "state.json").read_text())
    assert resumed["completed_phases"] == expected["completed_phases"] == 2
    for got, want in zip(resumed["phases"], expected["phases"]):
        assert (got["epochs"], got["optimizer_iterations"]) == (want["epochs"], want["optimizer_iterations"])
    assert expected["phases"][1]["optimizer_iterations"] == 3 * 6
    log = (victim_dir / "train.log").read_text()
    assert log.count("phase 1/2 softmax epoch 1/1") == 1, "the finished softmax phase ran again"
    # same batches, restored weights, optimizer slots and learning-rate position: same weights
    a = load_embedding_model(victim_dir / "phases" / "phase1").get_weights()
    b = load_embedding_model(tmp_path / "reference" / "phases" / "phase1").get_weights()
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    assert not (victim_dir / "backup" / "phase1").exists()

    changed = load(TrainConfig, config, ["phases.1.epochs=5"])
    with pytest.raises(train.ResumeError, match=r"phases\.1\.epochs.*--allow-config-change"):
        train.train(changed, data, victim_dir, progress=False)


MIRRORED = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from mobilefacenet_k210 import train
from mobilefacenet_k210.config import TrainConfig, load
config = load(TrainConfig, sys.argv[1], ["strategy=mirrored", "phases=[{head: arcface, epochs: 1, batch_size: 8}]"])
train.train(config, sys.argv[2], sys.argv[3], progress=False)
"""


def test_mirrored_strategy_over_two_logical_cpus_runs_an_epoch(tiny_shards, tmp_path):
    data = tiny_shards(num_classes=4, per_class=4, num_shards=2, size=64)
    config = _write_config(tmp_path / "tiny.yaml", {**TINY, "deterministic_ops": False, "backup_every_steps": 100})
    proc = subprocess.run([sys.executable, "-c", MIRRORED, str(config), str(data), str(tmp_path / "run")],
                          capture_output=True, text=True, env=ENV, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
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
