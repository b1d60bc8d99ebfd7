"""`make demo`: the whole mission on the ORL faces, from raw photos to a verified kmodel.

Each step calls the package's own stage functions (the same ones the CLI calls) and records its
result and a fingerprint of its inputs under ``OUT/steps/<step>.json`` when it finishes, so a second
run skips finished steps made from the same inputs, reruns those whose config changed (and the steps
after them), and an interrupted one resumes (the builder and training also resume inside their
step). Everything lands in ``OUT`` (default ``runs/demo``), ending with ``report.md``.
"""
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from mobilefacenet_k210 import atomic, folder_lock
from mobilefacenet_k210.config import DemoConfig, resolve
from mobilefacenet_k210.demo.steps import (align_tree, board_files, eval_set_name, identify_test, inspect_shards,
                                           lay_out_faces, model_paths, open_set_test, write_pairs)
from mobilefacenet_k210.errors import FileFormatError

HELD_OUT_WHAT = {
    "export": "export: float TFLite, kmodel (nncase) with the parity report",
    "identify": "enroll the test identities, identify their unseen photos (kmodel in the simulator)",
    "openset": "open-set 1:N identification of the test identities: half enrolled, half strangers, swapped",
    "board": "package the kmodel (.kfpkg) and the CanMV board files with the open-set threshold",
}
"""What the steps `make demo` and `make pretrained` share do (:class:`HeldOutRunConfig`'s part)."""
HELD_OUT_STEP_CONFIG = {
    "export": ("calibrate_method", "calibration_samples", "int8_tflite"),
    "identify": ("enroll_photos", "gallery_mode"),
    "openset": ("enroll_photos", "test", "gallery_mode"),
}
"""The :class:`HeldOutRunConfig` fields those shared steps' outputs depend on."""
# (step, what it does, relative cost: its share of the demo's time, used only to spread the time
# measured on this machine over the steps still to run)
STEPS = [
    ("faces", "fetch the ORL faces and lay out train/select/test photo folders", 1),
    ("shards", "MTCNN-align the training photos, apply the per-identity policy, write shards", 3),
    ("aligned", "MTCNN-align the held-out photos (checkpoint selection and test identities)", 2),
    ("pairs", "write verification pairs (.bin) of held-out identities", 1),
    ("train", "train: softmax, then ArcFace from the softmax weights", 65),
    ("export", HELD_OUT_WHAT["export"], 13),
    ("evaluate", "10-fold verification of the Keras model and the kmodel on the test identities", 7),
    ("identify", HELD_OUT_WHAT["identify"], 3),
    ("openset", HELD_OUT_WHAT["openset"], 1),
    ("board", HELD_OUT_WHAT["board"], 1),
    ("inspect", "contact sheet of the training shards", 1),
]
STEP_CONFIG = {
    "faces": ("train", "select", "test", "reduced_photos"),
    "shards": ("build_config",),
    "train": ("train_config",),
    **HELD_OUT_STEP_CONFIG,
}
"""The DemoConfig fields each step's output depends on (``workers`` changes speed only). A field naming
a config file stands for the file's content too."""
CONFIG_FILES = ("build_config", "train_config", "distill_config")
STEP_OUTPUTS = {
    "faces": ("raw",), "shards": ("shards",), "aligned": ("aligned",), "pairs": ("select.bin", "test.bin"),
    "train": ("train",), "export": ("export",), "evaluate": ("evaluate",), "identify": ("identify",),
    "openset": ("openset",), "board": ("board",), "inspect": ("inspect",),
}
"""What each step writes under OUT: removed before a step reruns for a changed input."""


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _file_digest(path: Union[str, Path]) -> Optional[str]:
    path = Path(path)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _remove(path: Path) -> None:
    """Delete a file or a whole folder; nothing if it is absent."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def estimate_left(seconds: Dict[str, float], pending: Iterable[str],
                  steps: Sequence[Tuple[str, str, float]] = STEPS) -> Optional[float]:
    """Seconds the ``pending`` steps should take, scaled from the ``seconds`` measured for other steps on
    this machine by the ``steps``' relative costs; None before any step is measured."""
    cost = {name: weight for name, _, weight in steps}
    measured = {name: s for name, s in seconds.items() if name in cost}
    if not measured:
        return None
    rate = sum(measured.values()) / sum(cost[name] for name in measured)
    return rate * sum(cost[name] for name in pending)


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (nncase's compile, worker pools) so far:
    set against a step's wall seconds, it says how much other work shared the cores."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def remove_leftovers(out: Path) -> List[Path]:
    """Delete the hidden temporaries (``.*.tmp``, ``.*.png``, ``.*.old``) a killed run left under ``out``."""
    removed = []
    if not out.is_dir():
        return removed
    for path in sorted(out.rglob(".*"), key=lambda p: len(p.parts), reverse=True):
        if path.name.endswith((".tmp", ".png", ".old")) and path.exists():
            _remove(path)
            removed.append(path)
    return removed


class Demo:
    """Runs the steps in order, reusing a finished step only if it was made from the same inputs.

    A step's fingerprint covers its DemoConfig fields (and the content of the config files they name)
    and the record of the step before it, so a changed input reruns its step and every step after it.
    The step table is the class's (``steps``, ``step_config``, ``config_files``, ``step_outputs``): a
    subclass runs other steps the same way (``demo_pretrained``), or chained ``after`` another runner's
    last step (:meth:`replay`; the bench's distillation stage).
    """

    steps: Sequence[Tuple[str, str, float]] = STEPS
    step_config: Dict[str, Tuple[str, ...]] = STEP_CONFIG
    config_files: Tuple[str, ...] = CONFIG_FILES
    step_outputs: Dict[str, Tuple[str, ...]] = STEP_OUTPUTS

    def __init__(self, out: Union[str, Path], config: DemoConfig, after: str = ""):
        self.out = Path(out)
        self.config = config
        self.results: Dict[str, Any] = {}
        self.seconds: Dict[str, float] = {}
        self.usage: Dict[str, Dict[str, float]] = {}  # per step: CPU seconds and the load around it
        self.started = time.perf_counter()
        self.previous = after
        for path in remove_leftovers(self.out):
            print(f"removed {path}, left by an interrupted run", flush=True)

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def fingerprint(self, name: str) -> str:
        """What step ``name`` is made from: its config fields, their files' content, the step before it."""
        fields = {f: getattr(self.config, f) for f in self.step_config.get(name, ())}
        files = {f: _file_digest(resolve(fields[f])) for f in self.config_files if f in fields and fields[f]}
        return _digest({"step": name, "config": fields, "files": files, "previous": self.previous})

    def _read_record(self, record: Path, name: str) -> Dict[str, Any]:
        try:
            saved = atomic.read_json(record, "no such step record")
        except FileFormatError as exc:
            raise FileFormatError(f"{exc}; delete it to rerun step {name}") from None
        if not isinstance(saved, dict) or not {"result", "seconds"} <= set(saved):
            raise FileFormatError(f"{record}: not a demo step record (an object with \"result\" and \"seconds\"); "
                                  f"delete it to rerun step {name}")
        return saved

    def _clear(self, name: str, why: str) -> None:
        print(f"{name}: {why}; its outputs are made again", flush=True)
        for part in self.step_outputs.get(name, ()):
            _remove(self.path(part))

    def _accept(self, name: str, record: Dict[str, Any]) -> None:
        self.results[name], self.seconds[name] = record["result"], record["seconds"]
        self.usage[name] = record.get("usage", {})
        self.previous = _digest({"fingerprint": record["fingerprint"], "result": record["result"]})

    def _reusable(self, name: str) -> Optional[Dict[str, Any]]:
        """The step's record if it was made from the current inputs, else None."""
        record = self.path("steps", f"{name}.json")
        if not record.is_file():
            return None
        saved = self._read_record(record, name)
        return saved if saved.get("fingerprint") == self.fingerprint(name) else None

    def replay(self) -> List[str]:
        """Load, in order, the records of the steps made from the current inputs, chaining them as
        :meth:`run` does; returns the steps from the first one missing or made from other inputs on."""
        names = [s[0] for s in self.steps]
        for i, name in enumerate(names):
            saved = self._reusable(name)
            if saved is None:
                return names[i:]
            self._accept(name, saved)
        return []

    def run(self, name: str, fn: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
        record, marker = self.path("steps", f"{name}.json"), self.path("steps", f"{name}.started.json")
        names = [s[0] for s in self.steps]
        index, total = names.index(name), len(names)
        fingerprint = self.fingerprint(name)
        if record.is_file():
            saved = self._reusable(name)
            if saved is not None:
                self._accept(name, saved)
                print(f"[{index + 1}/{total}] {name}: done before ({saved['seconds']:.0f} s), skipped", flush=True)
                return self.results[name]
            self._clear(name, "made from other inputs (config, config file or an earlier step changed)")
            record.unlink()
        elif marker.is_file() and self._marker(marker) != fingerprint:
            self._clear(name, "interrupted while running with other inputs")
        print(f"\n[{index + 1}/{total}] {name}: {self.steps[index][1]} ({self.progress(index)})", flush=True)
        atomic.write_json(marker, {"fingerprint": fingerprint})
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        result = fn()
        seconds = time.perf_counter() - t0
        usage = {"cpu_seconds": cpu_seconds() - cpu0, "load_average": os.getloadavg()[0]}
        saved = {"result": result, "seconds": seconds, "usage": usage, "fingerprint": fingerprint}
        atomic.write_json(record, saved)
        marker.unlink(missing_ok=True)
        self._accept(name, saved)
        print(f"[{index + 1}/{total}] {name}: finished in {seconds:.0f} s", flush=True)
        return result

    @staticmethod
    def _marker(marker: Path) -> Optional[str]:
        try:
            return json.loads(marker.read_text(encoding="utf-8")).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            return None

    def progress(self, index: int) -> str:
        """Elapsed time of this run and the time left, scaled from the steps measured so far."""
        elapsed = time.perf_counter() - self.started
        left = estimate_left(self.seconds, [s[0] for s in self.steps[index:]], self.steps)
        if left is None:
            return f"{elapsed / 60:.1f} min elapsed; time left estimated once a step has run on this machine"
        return (f"{elapsed / 60:.1f} min elapsed, about {left / 60:.1f} min left, scaled from the "
                f"{len(self.seconds)} step(s) measured so far")


def run_demo(out: Union[str, Path] = "runs/demo", config: Optional[DemoConfig] = None) -> Dict[str, Any]:
    """Run (or resume) the whole demo into ``out`` and return the figures written to report.md.

    ``out`` is locked for the whole run (a second demo into it is refused, :mod:`folder_lock`); the
    steps lock their own sub-folders too, as the same commands run alone would."""
    with folder_lock.hold(out):
        return _run_demo(out, config or DemoConfig())


def _run_demo(out: Union[str, Path], config: DemoConfig) -> Dict[str, Any]:
    """:func:`run_demo` under ``out``'s lock."""
    from mobilefacenet_k210 import config as config_lib

    demo = Demo(out, config)
    out = demo.out
    t0 = time.perf_counter()
    demo.run("faces", lambda: lay_out_faces(out, {g: getattr(config, g) for g in ("train", "select", "test")},
                                            config.reduced_photos))

    def shards() -> Dict[str, Any]:
        from mobilefacenet_k210.data import builder

        cfg = builder.load_build_config(config.build_config, [f"workers={config.workers}"])
        summary = builder.build(out / "raw" / "train", out / "shards", cfg)
        return {k: summary[k] for k in ("photos", "faces", "rejected", "identities", "num_classes", "records",
                                        "seconds", "images_per_s")}

    demo.run("shards", shards)
    demo.run("aligned", lambda: {g: align_tree(out / "raw" / g, out / "aligned" / g, config.workers)
                                 for g in ("select", "test")})
    demo.run("pairs", lambda: {g: write_pairs(out / "aligned" / g, out / f"{g}.bin") for g in ("select", "test")})

    def train() -> Dict[str, Any]:
        from mobilefacenet_k210.training import run as training_run

        overrides = [f"verification.select={out / 'select.bin'}"]
        cfg = config_lib.load(config_lib.TrainConfig, config.train_config, overrides)
        source = f"{config_lib.resolve(config.train_config).resolve()}, with {overrides[0]}"
        return training_run.train(cfg, out / "shards", out / "train", source=source)

    demo.run("train", train)

    def export() -> Dict[str, Any]:
        from mobilefacenet_k210.export.chain import export_model

        return export_model(out / "train", out / "shards", out / "export", config.export_config(),
                            holdout=out / "aligned" / "test").to_dict()

    demo.run("export", export)

    def evaluate() -> Dict[str, Any]:
        from mobilefacenet_k210.config import EvalConfig
        from mobilefacenet_k210.evaluate import evaluate as evaluate_fn

        models = [str(out / "train"), str(out / "export" / "model.kmodel")]
        cfg = EvalConfig(models=models, bins=[str(out / "test.bin")], flip=True, compare=models,
                         json=str(out / "evaluate" / "results.json"), out=str(out / "evaluate"))
        return evaluate_fn(cfg)

    demo.run("evaluate", evaluate)
    demo.run("identify", lambda: identify_test(out, config))
    demo.run("openset", lambda: open_set_test(out, config))
    demo.run("board", lambda: board_files(out, len(config.test)))
    demo.run("inspect", lambda: inspect_shards(out))
    figures = summarize(demo)
    figures["demo_seconds_this_run"] = time.perf_counter() - t0
    write_report(demo, figures)
    return figures


def summarize(demo: Demo) -> Dict[str, Any]:
    """The headline figures of the demo, read from the steps' recorded results."""
    r = demo.results
    models = model_paths(demo.out)
    accuracy = {k: r["evaluate"]["results"][m][eval_set_name(demo.out, m).rsplit("/", 1)[1]]
                for k, m in models.items()}
    from mobilefacenet_k210.export.result import ExportResult

    export = ExportResult.from_dict(r["export"], str(demo.path("steps", "export.json")))
    figures = {
        "orl_acc_keras": accuracy["keras"]["accuracy"],
        "orl_acc_keras_std": accuracy["keras"]["accuracy_std"],
        "orl_acc_kmodel": accuracy["kmodel"]["accuracy"],
        "orl_acc_kmodel_std": accuracy["kmodel"]["accuracy_std"],
        **export.figures(),
        "identify_keras": r["identify"]["keras"]["accuracy"],
        "identify_kmodel": r["identify"]["kmodel"]["accuracy"],
        "seconds": demo.seconds,
    }
    figures["orl_acc_drop"] = figures["orl_acc_keras"] - figures["orl_acc_kmodel"]
    return figures


def write_report(demo: Demo, figures: Dict[str, Any]) -> Path:
    """``report.md``: what ran, how long, the numbers against the targets, and the pictures."""
    from mobilefacenet_k210.demo.report import render

    path = demo.path("report.md")
    text = render(demo.out, demo.config, demo.results, demo.seconds, figures, demo.steps, demo.usage)
    atomic.write_text(path, text)
    print(f"\nreport: {path}")
    return path
