"""The whole export: Keras model -> model.tflite, model_int8.tflite, model.kmodel (+ .json) and the report.

Stages, each timed and printed: check (K210 rules), faces (calibration + held-out), tflite,
int8 tflite, kmodel (nncase in a child process, IR dump read for KPU/CPU placement), parity
(Keras vs float TFLite vs int8 TFLite vs kmodel in the simulator on held-out faces), report.
Everything is written into a folder beside OUT that replaces OUT only once complete
(``staging``): a failed export leaves the previous one whole.
"""
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Optional, Union

import numpy as np

from mobilefacenet_k210 import folder_lock, k210, preprocessing
from mobilefacenet_k210.config import ExportConfig, to_dict
from mobilefacenet_k210.export import calibration, kmodel, placement, report, tflite
from mobilefacenet_k210.export.result import ExportResult
from mobilefacenet_k210.export.staging import ExportError, check_out_dir, staged_folder
from mobilefacenet_k210.runtime.backends import KerasBackend, KmodelBackend, TFLiteBackend
from mobilefacenet_k210.runtime.kmodel import require_nncase

TFLITE_FILE = "model.tflite"
TFLITE_INT8_FILE = "model_int8.tflite"
KMODEL_FILE = "model.kmodel"
IR_DUMP_DIR = "nncase_dump"
OUTPUT_NAMES = (TFLITE_FILE, TFLITE_INT8_FILE, KMODEL_FILE, *(preprocessing.record_path(name).name for name in
                (TFLITE_FILE, TFLITE_INT8_FILE, KMODEL_FILE)), report.REPORT_JSON, report.REPORT_MD, report.COSINE_PNG,
                IR_DUMP_DIR)
"""Everything an export writes into OUT: a folder holding only these is an earlier export to replace."""


class Stages:
    """Prints each stage as it starts and ends, and keeps the seconds it took."""

    def __init__(self, total: int, stream=None):
        self.total, self.count, self.seconds, self._stream = total, 0, {}, stream

    @property
    def stream(self):
        """``stream``, else the ``sys.stdout`` of the moment (not of import time: a caller may have replaced it)."""
        return self._stream or sys.stdout

    @contextmanager
    def __call__(self, name: str, what: str) -> Iterator[None]:
        self.count += 1
        print(f"[{self.count}/{self.total}] {name}: {what} ...", file=self.stream, flush=True)
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)
        print(f"[{self.count}/{self.total}] {name}: done in {self.seconds[name]:.1f} s", file=self.stream, flush=True)


def _check_input_size(model, model_path: Union[str, Path]) -> None:
    _, h, w, c = model.input_shape
    if (h, w, c) != (preprocessing.INPUT_SIZE, preprocessing.INPUT_SIZE, 3):
        raise ExportError(f"{model_path}: model input is {h}x{w}x{c}, but aligned faces (calibration, camera, "
                         f"board) are {preprocessing.INPUT_SIZE}x{preprocessing.INPUT_SIZE}x3")


def export_model(model_path: Union[str, Path], calib: Union[str, Path], out_dir: Union[str, Path],
                 config: Optional[ExportConfig] = None, holdout: Optional[Union[str, Path]] = None) -> ExportResult:
    """Export a saved Keras embedding model for the K210 and measure it; return what it measured (also written).

    ``model_path``: run folder, ``embedding/`` folder or .keras/.h5 file. ``calib``: folder of aligned
    112x112 faces or shard folder. ``holdout``: optional folder/shards of other faces for parity.
    Writes model.tflite, model_int8.tflite (unless disabled), model.kmodel, model.kmodel.json,
    report.json, report.md and cosine_histogram.png as one set (and the TFLites' ``.json`` records of
    a model that computes on turned crops: :mod:`.tflite`): ``out_dir`` is replaced whole at the
    end (it must be new, empty or an earlier export). nncase being installed and ``out_dir`` being
    usable (and not being written by another run, :mod:`folder_lock`) are checked before anything is loaded.
    """
    config = config or ExportConfig()
    config.validate()
    out_dir = Path(out_dir)
    versions = require_nncase()
    with folder_lock.hold(out_dir):  # beside OUT: it covers the staging folder and the swap
        check_out_dir(out_dir, OUTPUT_NAMES)
        return _export(model_path, calib, out_dir, config, holdout, versions)


def _export(model_path: Union[str, Path], calib: Union[str, Path], out_dir: Path, config: ExportConfig,
            holdout: Optional[Union[str, Path]], versions: Dict[str, str]) -> ExportResult:
    """:func:`export_model` under ``out_dir``'s lock: load and check, then build the set and swap it in."""
    from mobilefacenet_k210.model.io import load_embedding_model

    stage = Stages(6 + int(config.int8_tflite))

    with stage("check", f"loading {model_path} and checking K210 rules"):
        model = load_embedding_model(model_path, config.trust_model_code)
        _check_input_size(model, model_path)
        warnings = [str(w) for w in k210.assert_k210_legal(model)]
        for w in warnings:
            print(f"  {w}")
    with stage("faces", f"calibration faces from {calib}"):
        calib_images, held_images, held_ids = calibration.calibration_and_holdout(
            calib, holdout, config.calibration_samples, config.holdout_samples, config.seed)
        print(f"  {len(calib_images)} calibration faces, {len(held_images)} held-out faces")
        if config.quantize and len(calib_images) < 100:
            print(f"  note: {len(calib_images)} calibration faces; nncase's ranges are more reliable with >= 100")
    with staged_folder(out_dir) as staging:
        result = _build(model, model_path, config, calib_images, held_images, held_ids, warnings, versions,
                        staging, stage)
    print(f"wrote {out_dir / report.REPORT_MD}")
    return result


def _build(model, model_path: Union[str, Path], config: ExportConfig, calib_images: np.ndarray,
           held_images: np.ndarray, held_ids: list, warnings: list, versions: Dict[str, str], out_dir: Path,
           stage: Stages) -> ExportResult:
    """The writing stages (tflite, int8 tflite, kmodel, parity, report) into the staging folder ``out_dir``."""
    from mobilefacenet_k210.model.mobilefacenet import split_orientation
    from mobilefacenet_k210.model.summary import count_params, model_macs

    orientation = split_orientation(model)[1]
    with stage("tflite", "float32 TFLite, batch 1, NHWC" + ("" if orientation == preprocessing.UPRIGHT else
                                                           f", fed {orientation} crops")):
        tflite_path = tflite.convert_float(model, out_dir / TFLITE_FILE)
    int8_path = None
    if config.int8_tflite:
        with stage("tflite_int8", "full-integer TFLite (representative dataset = calibration faces)"):
            int8_path = tflite.convert_int8(model, calib_images, out_dir / TFLITE_INT8_FILE)
    what = (f"nncase {versions['nncase_version']}, PTQ {config.calibrate_method} on {len(calib_images)} faces"
            if config.quantize else f"nncase {versions['nncase_version']}, float (no quantization)")
    with stage("kmodel", what):
        dump = out_dir / IR_DUMP_DIR
        dump.mkdir()
        info = kmodel.compile_kmodel(
            tflite_path, out_dir / KMODEL_FILE, calib_images if config.quantize else None,
            config.calibrate_method, config.w_quant_type, config.use_mse_quant_w, dump, config.compile_timeout_s)
        placed = placement.read_placement(dump)
        if not config.keep_ir_dump:
            shutil.rmtree(dump)
        macs = placement.mac_share(placed, model_macs(model))
        print(f"  {info['kmodel_bytes']:,} bytes, kmodel v{info['kmodel_version']}, "
              f"{100 * macs['kpu_mac_share']:.2f}% of multiply-adds on the KPU, nncase memory total "
              f"{info['memory'].get('total', 0):,} bytes")
    with stage("parity", f"embedding {len(held_images)} held-out faces with every backend"):
        reference = KerasBackend(model).embed(held_images, batch_size=32, progress=False)
        backends = {"tflite": TFLiteBackend(tflite_path)}
        if int8_path is not None:
            backends["int8"] = TFLiteBackend(int8_path)
        backends["kmodel"] = KmodelBackend(out_dir / KMODEL_FILE)
        cosines = {name: report.cosine(reference, backend.embed(held_images, progress=name == "kmodel"))
                   for name, backend in backends.items()}
        for name, values in cosines.items():
            print(f"  cosine vs Keras, {report.BACKEND_LABELS[name]}: mean {values.mean():.4f}, min {values.min():.4f}")
    with stage("report", "collecting figures and plotting the cosine histogram"):
        report.plot_cosines(cosines, out_dir / report.COSINE_PNG)
        files = {p.name: p.stat().st_size for p in (tflite_path, int8_path, out_dir / KMODEL_FILE) if p is not None}
        result = ExportResult(
            model_name=model.name, model_path=str(model_path), params=count_params(model),
            **{k: info[k] for k in ("nncase_version", "nncase_runtime", "kmodel_version", "kmodel_bytes",
                                    "quantized", "calibration_samples", "memory", "input", "calibrate_method",
                                    "w_quant_type", "compile_seconds", "options_skipped")},
            memory_total_bytes=info["memory"].get("total"), memory_data_bytes=info["memory"].get("data"),
            **{k: placed[k] for k in ("kpu_modules", "kpu_ops", "cpu_ops", "ambiguous_layers")},
            **macs,
            holdout_samples=len(held_images), holdout_ids=held_ids,
            files=files, tflite_bytes=files[TFLITE_FILE], tflite_int8_bytes=files.get(TFLITE_INT8_FILE),
            k210_warnings=warnings, config=to_dict(config), input_orientation=orientation,
            **{f"cosine_{name}_{stat}": float(fn(values)) for name, values in cosines.items()
               for stat, fn in (("mean", np.mean), ("min", np.min))},
            stage_seconds={})
    result.stage_seconds = dict(stage.seconds)
    report.write_report(result, out_dir)
    return result
