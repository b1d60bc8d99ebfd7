"""One writer per output folder (folder_lock), with real processes and no mocks.

A build (both runners), a merge, an export, an enroll and every other writing
command are refused while a helper process holds their output's lock (the helper takes it with the
package's own ``folder_lock.hold`` and waits on a pipe, so "a live writer" is an observable state, not
a race). A killed holder's lock is taken over at once; a lock recorded by another machine is refused
with how to clear it, and ``--break-lock`` clears it. A shard set being written is refused to readers
as incomplete. (A second training into a live run, refused while the first ends as if alone, and SIGKILL
+ rerun of a training: one run in tests/test_train.py.)
"""
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from conftest import recorded_pid, snapshot
from mobilefacenet_k210 import cli, folder_lock
from mobilefacenet_k210.data import tfrecord

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
# Only turns a hung process into a failure naming what was awaited; every wait is for an observable state.
HUNG_S = 1800
HOLDER = """
import contextlib, sys
from mobilefacenet_k210 import folder_lock
with contextlib.ExitStack() as stack:
    for target in sys.argv[1:]:
        stack.enter_context(folder_lock.hold(target))
    print("held", flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def held_elsewhere(*targets: Path) -> Iterator[subprocess.Popen]:
    """Another process holding the locks of ``targets`` until the block ends (it waits on its stdin)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, *map(str, targets)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    try:
        line = proc.stdout.readline()  # blocks until the helper holds every lock
        assert line.strip() == "held", line + proc.stdout.read()
        yield proc
    finally:
        if proc.poll() is None:
            proc.stdin.close()
        proc.wait(timeout=HUNG_S)


def error_line(capsys, command: str, *needles: str) -> str:
    """The one error line the CLI printed for ``command``, holding each of ``needles``."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mfk210 ")]
    assert len(lines) == 1 and lines[0].startswith(f"mfk210 {command}: error: "), lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def write_crops(root: Path, people: int = 2, per_person: int = 2) -> Path:
    """Aligned 112x112 PNG crops, one folder per person (the input of --aligned builds and of enroll)."""
    import cv2

    rng = np.random.default_rng(0)
    for p in range(people):
        (root / f"p{p}").mkdir(parents=True)
        for i in range(per_person):
            cv2.imwrite(str(root / f"p{p}" / f"{i}.png"), rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))
    return root


# --- the lock itself ------------------------------------------------------------------------------
def test_a_second_writer_is_refused_by_name_and_a_released_or_killed_lock_is_taken_over(tmp_path):
    out = tmp_path / "out"
    lock = folder_lock.lock_path(out)
    assert lock == tmp_path / ".out.lock"  # beside the folder: a swap of the folder keeps it
    with held_elsewhere(out) as helper:
        record = json.loads(lock.read_text())
        assert record["pid"] == helper.pid and record["host"] and record["started"] and record["command"]
        assert f"pid {helper.pid}" in folder_lock.live_writer(out)
        with pytest.raises(folder_lock.FolderLockError) as refused:
            with folder_lock.hold(out):
                pytest.fail("a second writer got the lock")
        message = str(refused.value)
        assert message.startswith(f"{out}: ") and f"pid {helper.pid}" in message and f"stop pid {helper.pid}" in message
        assert not out.exists()
    assert not lock.exists() and folder_lock.live_writer(out) is None  # a clean release deletes it

    with folder_lock.hold(out) as path:
        with folder_lock.hold(out):  # the same folder again in this process: re-entrant, no deadlock
            assert recorded_pid(out) == os.getpid()
        assert path.exists() and recorded_pid(out) == os.getpid()
        assert folder_lock.live_writer(out) is None  # this process is not "another writer"
    assert not lock.exists()

    # SIGKILL: the kernel releases the lock; the dead holder's record stays and is taken over at once
    helper = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=ENV)
    assert helper.stdout.readline().strip() == "held"
    os.kill(helper.pid, signal.SIGKILL)
    helper.wait(timeout=HUNG_S)
    assert recorded_pid(out) == helper.pid
    assert folder_lock.live_writer(out) is None
    with folder_lock.hold(out):
        assert recorded_pid(out) == os.getpid()


FOREIGN = {"pid": 4242, "host": "elsewhere.example", "boot_id": "another-boot",
           "command": "mfk210 merge a b out", "started": "2026-01-01T00:00:00+00:00"}


def test_a_lock_recorded_by_another_machine_is_refused_with_how_to_clear_it(tiny_shards, tmp_path, capsys):
    (a, b), out = (tiny_shards(num_classes=2, per_class=2, num_shards=1) for _ in range(2)), tmp_path / "out"
    for shards in (a, b):
        (shards / tfrecord.LABELS_FILE).write_text("id000\nid001\n")
    lock = folder_lock.lock_path(out)
    lock.write_text(json.dumps(FOREIGN))  # its flock is free here: a shared file system, or that host died
    argv = ["merge", str(a), str(b), str(out)]
    assert cli.main(argv) == 2
    error_line(capsys, "merge", str(out), "pid 4242 on host elsewhere.example", "--break-lock", str(lock))
    assert not out.exists() and json.loads(lock.read_text()) == FOREIGN  # never silently taken over
    assert cli.main(argv + ["--break-lock"]) == 0
    assert "--break-lock: taking over" in capsys.readouterr().err
    assert tfrecord.load_metadata(out)["num_classes"] == 4 and not lock.exists()

    # a live lock (flock held) whose record names another machine: refused the same way; broken on demand
    with held_elsewhere(out):
        lock.write_text(json.dumps(FOREIGN))
        with pytest.raises(folder_lock.FolderLockError, match="--break-lock or delete"):
            with folder_lock.hold(out):
                pass
        with folder_lock.hold(out, break_lock=True):
            assert recorded_pid(out) == os.getpid()


def test_a_shard_set_being_written_is_refused_to_readers_as_incomplete(tiny_shards, capsys):
    shards = tiny_shards(num_classes=2, per_class=2, num_shards=1)
    with held_elsewhere(shards) as writer:
        assert cli.main(["inspect", str(shards)]) == 2
        error_line(capsys, "inspect", str(shards), "incomplete", f"pid {writer.pid}")
        with pytest.raises(tfrecord.ShardError, match="incomplete"):
            tfrecord.load_metadata(shards)
    assert tfrecord.load_metadata(shards)["num_classes"] == 2


# --- each writing command's refusal ---------------------------------------------------------------
@pytest.mark.parametrize("runner", ["local", "beam"])
def test_build_into_a_folder_being_written_is_refused(tmp_path, capsys, runner):
    raw, out = write_crops(tmp_path / "raw"), tmp_path / "shards"
    argv = ["build-tfrecords", str(raw), str(out), "--aligned", "--policy", "none", "--workers", "1", "--quiet",
            "--runner", runner]
    with held_elsewhere(out) as writer:
        assert cli.main(argv) == 2
        error_line(capsys, "build-tfrecords", str(out), f"pid {writer.pid}")
        assert not out.exists()
    if runner == "local":  # released: the same command builds
        assert cli.main(argv) == 0
        assert tfrecord.load_metadata(out)["num_classes"] == 2
        assert not folder_lock.lock_path(out).exists()


def test_export_into_a_folder_being_written_is_refused_before_anything_is_loaded(tmp_path, capsys):
    out, missing = tmp_path / "export", tmp_path / "no_model.keras"
    out.mkdir()
    (out / "report.json").write_text("an earlier export's report")
    argv = ["export", "--model", str(missing), "--calib", str(tmp_path), "--out", str(out)]
    with held_elsewhere(out) as writer:
        assert cli.main(argv) == 2
        error_line(capsys, "export", str(out), f"pid {writer.pid}")
        assert snapshot(out) == {"report.json": b"an earlier export's report"}
        assert sorted(p.name for p in tmp_path.iterdir()) == [".export.lock", "export"]  # no staging folder
    assert cli.main(argv) == 2  # released: the export goes on, to the model it cannot load
    assert "lock" not in error_line(capsys, "export", str(missing))


def test_enroll_into_a_gallery_being_written_is_refused(tmp_path, capsys):
    from conftest import tiny_k210_model

    from mobilefacenet_k210.model.io import save_embedding_model

    model = save_embedding_model(tiny_k210_model(), tmp_path / "model")
    people, gallery = write_crops(tmp_path / "people", 2, 1), tmp_path / "gallery.json"
    gallery.write_text("the previous gallery")
    argv = ["enroll", str(people), "--model", str(model), "--out", str(gallery), "--aligned"]
    with held_elsewhere(gallery) as writer:
        assert folder_lock.lock_path(gallery) == tmp_path / ".gallery.json.lock"
        assert cli.main(argv) == 2
        error_line(capsys, "enroll", str(gallery), f"pid {writer.pid}")
        assert gallery.read_text() == "the previous gallery"
    assert cli.main(argv) == 0
    assert json.loads(gallery.read_text())["format"] == "mfk210-gallery"


def test_every_other_writing_command_takes_its_outputs_lock_first(tiny_shards, tmp_path, capsys):
    """add-teacher, board-files, demo and bench (its three forms): refused naming the output and the holder
    before reading anything (the other arguments name nothing that exists)."""
    shards = tiny_shards(num_classes=2, per_class=2, num_shards=1)
    nothing = str(tmp_path / "nothing")
    commands = {
        "add-teacher": (tmp_path / "with_teacher", ["add-teacher", str(shards), "--teacher", nothing, "--out"]),
        "board-files": (tmp_path / "sd", ["board-files", "--kmodel", nothing, "--eval", nothing, "--out"]),
        "demo": (tmp_path / "demo", ["demo", "--out"]),
        "bench": (tmp_path / "bench", ["bench", "--no-tests", "--demo-out", nothing, "--out"]),
    }
    with held_elsewhere(*(target for target, _ in commands.values())) as writer:
        for name, (target, argv) in commands.items():
            for extra in ([], ["--gpu"], ["--scale"]) if name == "bench" else ([],):
                assert cli.main(argv + [str(target)] + extra) == 2, (name, extra)
                error_line(capsys, name, str(target), f"pid {writer.pid}")
                assert not target.exists(), name
    assert not list(tmp_path.glob(".*.lock"))
