"""Multi-worker training for real: two worker processes on 127.0.0.1 (MultiWorkerMirroredStrategy,
standard TF_CONFIG, free ports chosen here) on tiny shards. Killing a worker and rerunning both resumes
them at the same epoch and step, both finish with identical weights, only the chief writes the shared
run folder (one run checks all three), and each worker reads its own part of every epoch.

The commands are the ones docs/scale.md shows: the same `mfk210 train ... --strategy multiworker` on
every worker, each with its TF_CONFIG."""
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

from mobilefacenet_k210.model.io import load_embedding_model

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
# Generous bounds that only turn a hung run into a failure naming what was awaited (a slow machine
# waits for the observable state itself: a file, a log row, the processes' exit).
HUNG_S = 1800
CONFIG = {
    "model": {"input_size": 64, "width_multiplier": 0.25, "embedding_size": 32},
    "pipeline": {"shuffle_buffer": 32, "cycle_length": 2, "validation": False},
    "phases": [{"head": "softmax", "epochs": 3, "batch_size": 8, "lr": 0.05}],
    "backup_every_steps": 100,  # at epoch ends only: a multi-worker backup is a slow collective save
}
STEPS = 4  # 32 train records / global batch 8


def _free_ports(count: int) -> List[int]:
    """Ports free on 127.0.0.1 now, held open together so that they differ."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start_workers(config: Path, data: Path, run: Path, logs: Path) -> List[subprocess.Popen]:
    """The same `mfk210 train --strategy multiworker` on two workers, each with its TF_CONFIG."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    procs = []
    logs.mkdir(parents=True, exist_ok=True)
    for index in range(2):
        env = {**ENV, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        cmd = [sys.executable, "-m", "mobilefacenet_k210", "train", "--config", str(config), "--data", str(data),
               "--out", str(run), "--strategy", "multiworker", "--no-progress"]
        with open(logs / f"worker{index}.txt", "w") as out:
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=env))
    return procs


def _output(logs: Path, index: int) -> str:
    return (logs / f"worker{index}.txt").read_text(errors="replace")


def _kill(procs: List[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def _finish(procs: List[subprocess.Popen], logs: Path, what: str) -> List[str]:
    """Wait for both workers to exit 0; on a failure or a hang, stop both and show their output."""
    deadline = time.monotonic() + HUNG_S
    while any(p.poll() is None for p in procs):
        failed = [i for i, p in enumerate(procs) if p.poll() not in (None, 0)]
        if failed or time.monotonic() > deadline:
            _kill(procs)
            why = f"worker {failed[0]} failed" if failed else f"waited {HUNG_S} s"
            pytest.fail(f"{why} for {what}:\n" + "\n".join(
                f"--- worker {i}:\n{_output(logs, i)[-3000:]}" for i in range(len(procs))))
        time.sleep(0.1)
    outs = [_output(logs, i) for i in range(len(procs))]
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"worker {i} exited {p.returncode} for {what}:\n{outs[i][-3000:]}"
    return outs


def _digests(out: str) -> Dict[str, str]:
    """The backbone weight digest each phase logged at its end, by phase title."""
    return dict(re.findall(r"(phase \d+/\d+ \w+): done, backbone weights sha256 ([0-9a-f]+)", out))


def _write_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def test_killed_and_rerun_workers_resume_at_the_same_step_end_identical_and_only_the_chief_writes(tiny_shards,
                                                                                                  tmp_path):
    """One kill and rerun checks it all: both rerun workers resume at the backup's epoch and step, finish
    with identical weights (the saved model's), and the shared run folder holds the chief's files only."""
    from mobilefacenet_k210.training.run import weights_digest
    from mobilefacenet_k210.training.callbacks import resume_point

    data = tiny_shards(num_classes=4, per_class=8, num_shards=4, size=64)
    config, run = _write_config(tmp_path), tmp_path / "run"
    procs = _start_workers(config, data, run, tmp_path / "first")
    # kill worker 1 once the first epoch's backup is written: 2 epochs still to go
    deadline = time.monotonic() + HUNG_S
    while resume_point(run / "backup" / "phase0", STEPS) == (0, 0):
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            _kill(procs)
            pytest.fail("the workers exited or hung before the first epoch's backup:\n"
                        + _output(tmp_path / "first", 0)[-3000:] + _output(tmp_path / "first", 1)[-3000:])
        time.sleep(0.05)
    os.kill(procs[1].pid, signal.SIGKILL)
    procs[1].wait()
    _kill(procs)  # the chief waits on a collective with a dead peer: stop it as the operator would
    # a SIGKILL leaves the killed worker's temporary folder (its path is in its first lines)
    killed_folders = re.findall(r"this worker writes into (\S+), deleted", _output(tmp_path / "first", 1))
    assert killed_folders and not any(Path(f).is_relative_to(run) for f in killed_folders), killed_folders
    for folder in killed_folders:
        shutil.rmtree(folder, ignore_errors=True)
    epoch, step = resume_point(run / "backup" / "phase0", STEPS)
    killed = json.loads((run / "state.json").read_text())  # written with the first epoch's best model
    assert (epoch, step) != (0, 0) and killed["completed_phases"] == 0, "the phase ended before the kill"

    outs = _finish(_start_workers(config, data, run, tmp_path / "second"), tmp_path / "second",
                   "the two rerun workers to finish")
    points = [re.findall(r"resuming at epoch (\d+), step (\d+)/(\d+)", out) for out in outs]
    assert points[0] == points[1] == [(str(epoch + 1), str(step), str(STEPS))], points
    digests = [_digests(out) for out in outs]
    assert digests[0] and digests[0] == digests[1], digests
    assert weights_digest(load_embedding_model(run / "phases" / "phase0")) == digests[0]["phase 1/1 softmax"]
    state = json.loads((run / "state.json").read_text())
    assert state["completed_phases"] == 1 and state["phases"][0]["optimizer_iterations"] == 3 * STEPS
    assert "(2 replicas)" in outs[0] and "(2 replicas)" in outs[1]

    # the shared run folder holds the chief's files only, each once; the other worker's folder is gone
    assert sorted(p.name for p in run.iterdir() if p.name != "backup") == sorted(
        ["config.json", "state.json", "train.log", "loss.png", "embedding", "last", "phases", "logs", "tensorboard"])
    assert not list((run / "backup").iterdir())  # the finished phase's backup removed, no worker's copy left
    with open(run / "logs" / "phase0.csv") as f:
        assert [row.split(",")[0] for row in f.read().splitlines()[1:]] == ["0", "1", "2"]
    chief_log = (run / "train.log").read_text()
    assert chief_log.count("phase 1/1 softmax epoch 3/3") == 1 and "worker 1 of 2" not in chief_log
    other = re.search(r"worker 1 of 2: the chief writes .*; this worker writes into (\S+), deleted", outs[1])
    assert other, outs[1][-3000:]
    assert not Path(other.group(1)).exists() and not Path(other.group(1)).is_relative_to(run)
    assert load_embedding_model(run).output_shape == (None, 32)


@pytest.mark.parametrize("num_shards", [4, 1])  # whole shards per worker, or records of one shard
def test_each_worker_reads_its_own_part_of_every_epoch(tiny_shards, num_shards):
    import tensorflow as tf

    from mobilefacenet_k210.training import run as training_run
    from mobilefacenet_k210.config import TrainConfig, load
    from mobilefacenet_k210.data import pipeline

    data = pipeline.DataInfo(tiny_shards(num_classes=4, per_class=8, num_shards=num_shards, size=64))
    config = load(TrainConfig, None, [f"{k}={json.dumps(v)}" for k, v in (
        ("model.input_size", 64), ("model.width_multiplier", 0.25), ("pipeline.validation", False),
        ("pipeline.flip", False), ("phases", [{"head": "softmax", "epochs": 2, "batch_size": 8}]))])
    plan = training_run.plan_phase(config, 0, data, Path("no_run_folder"))
    seen = []
    for worker in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker, num_replicas_in_sync=2)
        batches = list(training_run.worker_train_dataset(config, plan, data, context).as_numpy_iterator())
        assert len(batches) == 2 * STEPS and {b[0][0].shape[0] for b in batches} == {4}  # 2 epochs, batch 8 / 2
        seen.append([{hashlib.sha256(image.tobytes()).hexdigest() for b in batches[e * STEPS:(e + 1) * STEPS]
                      for image in b[0][0]} for e in range(2)])
    for epoch in range(2):
        assert seen[0][epoch] and seen[1][epoch] and not seen[0][epoch] & seen[1][epoch], f"epoch {epoch}"


@pytest.mark.parametrize("tf_config, why", [(None, "set TF_CONFIG"), ("{broken", "not valid JSON"),
                                            ('{"cluster": {}}', "needs a \"cluster\" and a \"task\"")])
def test_a_missing_or_broken_tf_config_is_one_line_before_any_training(tiny_shards, tmp_path, monkeypatch, capsys,
                                                                        tf_config, why):
    from mobilefacenet_k210 import cli

    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    data = tiny_shards(num_classes=4, per_class=8, num_shards=4, size=64)
    argv = ["train", "--config", str(_write_config(tmp_path)), "--data", str(data), "--out", str(tmp_path / "run"),
            "--strategy", "multiworker", "--no-progress"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mfk210 train: error: ") and "TF_CONFIG" in err[0] and why in err[0], err
    assert not (tmp_path / "run" / "state.json").exists()
