"""Child-process side of the nncase compile: ``python -m mobilefacenet_k210.export.compile_worker JOB.json``.

nncase 1.x segfaults on some inputs (quantized TFLite, preprocess without input shape, ...). Running
the compiler here, in its own process, lets the parent survive such a crash and report it clearly.
The job file names the float TFLite, the calibration samples (``.npy``, exactly the compiled input's
dtype/layout/range), the compile options and where to write the kmodel.
"""
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict

import numpy as np

from mobilefacenet_k210 import atomic


def set_options(target: Any, options: Dict[str, Any]) -> Dict[str, list]:
    """Set each option the installed nncase knows; report which were set and which it lacks.

    nncase 1.1 lacks e.g. ``output_range``, ``model_layout`` and ``split_w_to_act``, which 1.9 has.
    """
    applied, skipped = [], []
    for name, value in options.items():
        if value is None:
            continue
        if hasattr(target, name):
            setattr(target, name, value)
            applied.append(name)
        else:
            skipped.append(name)
    return {"applied": applied, "skipped": skipped}


def compile_job(job: Dict[str, Any]) -> Dict[str, Any]:
    """Import, (optionally) calibrate and compile; write the kmodel; return what was set and how long it took."""
    import nncase

    options = nncase.CompileOptions()
    result = {"compile_options": set_options(options, job["compile_options"])}
    compiler = nncase.Compiler(options)
    import_options = nncase.ImportOptions()
    compiler.import_tflite(Path(job["tflite"]).read_bytes(), import_options)
    if job.get("calibration"):
        samples = np.load(job["calibration"], allow_pickle=False)
        ptq = nncase.PTQTensorOptions()
        result["ptq_options"] = set_options(ptq, {"calibrate_method": job["calibrate_method"],
                                                  "samples_count": int(samples.shape[0])})
        ptq.set_tensor_data(np.ascontiguousarray(samples).tobytes())
        compiler.use_ptq(ptq)
    start = time.perf_counter()
    compiler.compile()
    result["compile_seconds"] = time.perf_counter() - start
    atomic.write_bytes(job["kmodel"], compiler.gencode_tobytes())
    return result


def main(argv: list) -> int:
    job_path = Path(argv[0])
    job = json.loads(job_path.read_text())
    result = compile_job(job)
    Path(job["result"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
