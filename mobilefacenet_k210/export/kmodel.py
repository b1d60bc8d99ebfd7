"""Float TFLite -> K210 kmodel with nncase 1.x, compiled in a child process, with its compile record.

The compiled input is raw camera pixels: uint8, NCHW [1, 3, 112, 112], with nncase's preprocess
mapping 0..255 onto ``preprocessing.input_range()`` (mean 0, std 1), so the KPU sees exactly what
the network was trained on. Calibration samples are given in that same dtype, layout and range
(uint8 NCHW pixels): anything else silently ruins the quantization. The compiler version is recorded
beside the kmodel (``model.kmodel.json``) because a kmodel runs only on the runtime of its version;
reading that record and running the kmodel in nncase's simulator is ``runtime/kmodel.py``.
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

from mobilefacenet_k210 import atomic, preprocessing
from mobilefacenet_k210.config import CALIBRATE_METHODS, check_choice
from mobilefacenet_k210.export.tflite import assert_float_tflite
from mobilefacenet_k210.runtime.kmodel import KmodelError, info_path, nncase_version, read_kmodel_version


def input_spec(input_size: int = preprocessing.INPUT_SIZE) -> Dict[str, Any]:
    """The compiled input: raw uint8 RGB pixels, NCHW, preprocessed by nncase into the model's range."""
    return {"dtype": "uint8", "layout": "NCHW", "shape": [1, 3, input_size, input_size],
            "range": list(preprocessing.input_range()), "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
            "swapRB": False, "preprocess": True}


def compile_options(input_size: int, dump_dir: Optional[Union[str, Path]], quantize: bool = True,
                    w_quant_type: str = "uint8", use_mse_quant_w: bool = False) -> Dict[str, Any]:
    """nncase CompileOptions for the K210 (options the installed version lacks are skipped and recorded)."""
    spec = input_spec(input_size)
    return {
        "target": "k210",
        "preprocess": True,
        "swapRB": False,
        "input_type": spec["dtype"],
        "input_shape": spec["shape"],
        "input_layout": spec["layout"],
        "input_range": spec["range"],
        "mean": spec["mean"],
        "std": spec["std"],
        "output_layout": "NHWC",
        "model_layout": "NHWC",  # nncase >= 1.8 only: the TFLite graph's own layout
        "quant_type": "uint8",
        "w_quant_type": w_quant_type if quantize else None,
        "use_mse_quant_w": use_mse_quant_w if quantize else None,
        "split_w_to_act": False,  # nncase >= 1.8 only
        "dump_ir": dump_dir is not None,
        "dump_asm": dump_dir is not None,
        "dump_dir": str(dump_dir) if dump_dir is not None else None,
    }


def calibration_tensor(images: np.ndarray, input_size: int = preprocessing.INPUT_SIZE) -> np.ndarray:
    """uint8 RGB NHWC faces -> the compiled input's exact form: uint8 NCHW, contiguous."""
    images = preprocessing.check_crops(images, input_size, where="calibration images")
    if len(images) == 0:
        raise ValueError("no calibration images")
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


def _memory_summary(text: str) -> Dict[str, int]:
    """Parse nncase's 'MEMORY USAGES' block (``.input 36.75 KB (37632 B)``...) into bytes per pool."""
    memory = {}
    in_block = False
    for line in text.splitlines():
        if line.strip() == "MEMORY USAGES":
            in_block = True
            continue
        if in_block:
            parts = line.split()
            if len(parts) >= 2 and parts[-1] == "B)" and parts[-2].startswith("("):
                memory[parts[0].lstrip(".").lower()] = int(parts[-2].lstrip("("))
            elif memory:
                break
    return memory


def run_compile_job(job: Dict[str, Any], workdir: Union[str, Path], timeout_s: Optional[float],
                    what: str) -> Tuple[Dict[str, Any], str, float]:
    """Run one compile job (see ``compile_worker``) in a child process -> (its result, its output, seconds).

    A crash (nncase segfaults on some inputs), a failure or a timeout becomes a :class:`KmodelError`
    naming ``what`` and quoting nncase's last output; the caller survives.
    """
    job_file = Path(workdir).resolve() / "job.json"  # absolute: the child runs in ``workdir``
    job_file.write_text(json.dumps(job))
    cmd = [sys.executable, "-m", "mobilefacenet_k210.export.compile_worker", str(job_file)]
    start = time.perf_counter()
    try:
        # cwd: without a dump_dir nncase still writes memory_usage.txt into the current folder.
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout_s,
                              cwd=workdir, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    except subprocess.TimeoutExpired:
        raise KmodelError(f"{what}: nncase did not finish compiling within {timeout_s:.0f} s") from None
    seconds = time.perf_counter() - start
    log = proc.stdout.decode("utf-8", "replace")
    if proc.returncode != 0:
        if proc.returncode < 0:
            try:
                why = f"crashed with {signal.Signals(-proc.returncode).name}"
            except ValueError:
                why = f"was killed by signal {-proc.returncode}"
        else:
            why = f"failed (exit status {proc.returncode})"
        raise KmodelError(f"{what}: nncase {why} while compiling to the K210; its last output:\n" + log[-3000:])
    return json.loads(Path(job["result"]).read_text()), log, seconds


def compile_kmodel(tflite_path: Union[str, Path], kmodel_path: Union[str, Path],
                   calibration: Optional[np.ndarray] = None, calibrate_method: str = "l2",
                   w_quant_type: str = "uint8", use_mse_quant_w: bool = True,
                   dump_dir: Optional[Union[str, Path]] = None, timeout_s: Optional[float] = None,
                   input_size: int = preprocessing.INPUT_SIZE,
                   work_dir: Optional[Union[str, Path]] = None) -> Dict[str, Any]:
    """Compile a float TFLite into a K210 kmodel in a child process; write ``<kmodel>.json``; return that info.

    ``calibration`` (uint8 RGB NHWC faces) turns on post-training quantization; ``None`` compiles a
    float kmodel (everything on the CPU: for parity checks only, it does not fit the board).
    ``dump_dir`` keeps nncase's IR dump there (needed to see which operators run on the KPU).
    ``use_mse_quant_w`` picks weight ranges by least squared error instead of min/max (measured
    better parity on MobileFaceNet). ``work_dir``: where the job folder (job file, calibration
    samples, nncase's stray files) goes, default beside the kmodel, never the system temp folder.
    The kmodel takes its crops in the orientation the TFLite's record names (upright faces are given
    here and turned for calibration), and its record says so too.
    """
    tflite_path, kmodel_path = Path(tflite_path), Path(kmodel_path)
    assert_float_tflite(tflite_path, input_size)
    orientation = preprocessing.recorded_orientation(tflite_path)
    check_choice(calibrate_method, CALIBRATE_METHODS, "calibrate_method")
    kmodel_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".nncase-job-", dir=work_dir or kmodel_path.parent) as job_dir:
        # every path absolute: the compile runs in the job folder, so a relative path would point elsewhere
        tmp = Path(job_dir).resolve()
        dump = Path(dump_dir).resolve() if dump_dir else None
        job = {"tflite": str(tflite_path.resolve()), "kmodel": str(kmodel_path.resolve()),
               "result": str(tmp / "result.json"), "calibrate_method": calibrate_method,
               "compile_options": compile_options(input_size, dump, calibration is not None,
                                                  w_quant_type, use_mse_quant_w)}
        if calibration is not None:
            job["calibration"] = str(tmp / "calibration.npy")
            np.save(job["calibration"], calibration_tensor(preprocessing.orient(np.asarray(calibration), orientation),
                                                           input_size))
        result, log, seconds = run_compile_job(job, tmp, timeout_s, str(tflite_path))
    info = {
        **nncase_version(),
        "kmodel_version": read_kmodel_version(kmodel_path),
        "kmodel_bytes": kmodel_path.stat().st_size,
        "target": "k210",
        "input": input_spec(input_size),
        preprocessing.ORIENTATION_KEY: orientation,
        "quantized": calibration is not None,
        "calibrate_method": calibrate_method if calibration is not None else None,
        "calibration_samples": int(len(calibration)) if calibration is not None else 0,
        "w_quant_type": w_quant_type if calibration is not None else None,
        "use_mse_quant_w": use_mse_quant_w if calibration is not None else None,
        "options_applied": result["compile_options"]["applied"],
        "options_skipped": result["compile_options"]["skipped"],
        "memory": _memory_summary(log),
        "compile_seconds": round(result["compile_seconds"], 2),
        "total_seconds": round(seconds, 2),
        "source": tflite_path.name,
    }
    write_info(kmodel_path, info)
    return info


def write_info(kmodel_path: Union[str, Path], info: Dict[str, Any]) -> Path:
    """Write the record beside the kmodel, atomically."""
    return atomic.write_json(info_path(kmodel_path), info)
