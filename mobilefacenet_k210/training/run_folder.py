"""The run folder's files: its fingerprint (``config.json``), its state (``state.json``), its log, and
the clean-up a resume needs (log rows of the epochs that run again, temporary files of a kill).

See :mod:`mobilefacenet_k210.training.run` for the layout of a run folder.
"""
import contextlib
import csv
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any, Dict, List

import tensorflow as tf

from mobilefacenet_k210 import atomic
from mobilefacenet_k210.config import TrainConfig, to_dict
from mobilefacenet_k210.data import pipeline
from mobilefacenet_k210.errors import Mfk210Error

CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
LOG_FILE = "train.log"
_NOT_COMPARED = ("strategy",)  # may change between a run and its resume (other machines)


class ResumeError(Mfk210Error, RuntimeError):
    """A run folder that cannot be used, or cannot be resumed with the given config and data."""


# --- config checks and run state ------------------------------------------------------------------
def _flatten(data: Any, prefix: str = "") -> Dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists of objects too), to name the fields that differ."""
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


def run_fingerprint(config: TrainConfig, data: pipeline.DataInfo) -> Dict[str, Any]:
    """What a run depends on: the config (less what may change on resume) and the data, content included.

    ``data.shards_sha256`` hashes the shard list of ``metadata.json`` with each shard's sha256, so
    shards rebuilt with other images but the same counts are another run's data.
    """
    cfg = {k: v for k, v in to_dict(config).items() if k not in _NOT_COMPARED}
    listed = sorted((str(s.get("file")), str(s.get("split")), str(s.get("sha256"))) for s in data.meta["shards"])
    content = hashlib.sha256(json.dumps(listed).encode("utf-8")).hexdigest()
    return {"config": cfg, "data": {"num_classes": data.num_classes, "train_records": data.train_records,
                                    "shards_sha256": content}}


def read_run_json(path: Path) -> Dict[str, Any]:
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


def load_state(run_dir: Path, config: TrainConfig, data: pipeline.DataInfo, allow_config_change: bool,
                log: logging.Logger, write: bool = True) -> Dict[str, Any]:
    """Start a run folder, or check that the config and data match the ones it was started with.

    ``write=False`` (a non-chief worker) checks and reads but leaves ``config.json`` to the chief.
    """
    identity = run_fingerprint(config, data)
    saved_path = run_dir / CONFIG_FILE
    if saved_path.is_file():
        saved = read_run_json(saved_path)
        old, new = _flatten(saved), _flatten(json.loads(json.dumps(identity)))
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if diff:
            lines = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:8])
            if not allow_config_change:
                raise ResumeError(f"{saved_path}: this run was started with another config or data ({lines}"
                                  f"{', ...' if len(diff) > 8 else ''}); rerun with the same config, use a new "
                                  "--out folder, or pass --allow-config-change to resume anyway")
            log.warning("resuming with a changed config (--allow-config-change): %s", lines)
            if write:
                atomic.write_json(saved_path, identity)
    elif write:
        atomic.write_json(saved_path, identity)
    state_path = run_dir / STATE_FILE
    if state_path.is_file():
        state = read_run_json(state_path)
        if not isinstance(state.get("completed_phases"), int) or not isinstance(state.get("phases"), list):
            raise ResumeError(f"{state_path}: damaged, no completed_phases/phases; train into a new --out "
                              f"folder, or delete {run_dir} to start this run again")
        return state
    return {"completed_phases": 0, "phases": [], "best": None}


def save_state(run_dir: Path, state: Dict[str, Any]) -> None:
    """Write ``state.json`` atomically: a kill leaves the old one or the new one, never half of one."""
    atomic.write_json(run_dir / STATE_FILE, state)


def open_log(run_dir: Path) -> logging.Logger:
    """The run's logger: ``train.log`` in ``run_dir`` (timestamped) and the console; :func:`close_log` ends it."""
    log = logging.getLogger(f"mobilefacenet_k210.training.run.{run_dir.resolve()}")
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

def close_log(log: logging.Logger) -> None:
    """Detach and close the handlers of :func:`open_log` (the file is released, a next run reopens it)."""
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()


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
