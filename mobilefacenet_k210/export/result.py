"""What an export measured, as a dataclass: ``report.json`` on disk, read by field name in code.

``export_model`` returns an :class:`ExportResult`; the demo and the bench read its attributes, so a
renamed or removed figure fails where it is read (and in the type checker) rather than as a
``KeyError`` at the end of a long demo. ``to_dict``/``from_dict`` are the JSON form, unchanged:
the int8 TFLite's cosines are absent, not null, when no int8 TFLite was made.
"""
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from mobilefacenet_k210 import atomic
from mobilefacenet_k210.preprocessing import UPRIGHT
from mobilefacenet_k210.errors import FileFormatError

REPORT_JSON = "report.json"
_OPTIONAL_KEYS = ("cosine_int8_mean", "cosine_int8_min")
"""Keys left out of the JSON when None (no int8 TFLite), as the report has always done."""
HEADLINE = ("kmodel_bytes", "kpu_mac_share", "cosine_kmodel_mean", "cosine_kmodel_min")
"""The figures the demo and the bench report of every export: size, KPU share, parity."""


@dataclass
class ExportResult:
    """The figures of one export (see ``export.chain._build`` for where each comes from)."""

    model_name: str
    model_path: str
    params: int
    nncase_version: str
    nncase_runtime: str
    kmodel_version: int
    kmodel_bytes: int
    quantized: bool
    calibration_samples: int
    calibrate_method: Optional[str]
    w_quant_type: Optional[str]
    compile_seconds: float
    options_skipped: List[str]
    memory: Dict[str, int]
    memory_total_bytes: Optional[int]
    memory_data_bytes: Optional[int]
    input: Dict[str, Any]
    kpu_modules: int
    kpu_ops: Dict[str, int]
    cpu_ops: Dict[str, int]
    ambiguous_layers: List[str]
    macs_total: int
    macs_kpu: int
    macs_cpu: int
    kpu_mac_share: float
    cpu_conv_layers: Dict[str, int]
    unplaced_layers: List[str]
    holdout_samples: int
    holdout_ids: List[str]
    files: Dict[str, int]
    tflite_bytes: int
    tflite_int8_bytes: Optional[int]
    k210_warnings: List[str]
    config: Dict[str, Any]
    cosine_tflite_mean: float
    cosine_tflite_min: float
    cosine_kmodel_mean: float
    cosine_kmodel_min: float
    stage_seconds: Dict[str, float]
    cosine_int8_mean: Optional[float] = None
    cosine_int8_min: Optional[float] = None
    input_orientation: str = UPRIGHT  # preprocessing.ORIENTATIONS: how the TFLite and kmodel take the crop

    def figures(self, prefix: str = "", keys: Sequence[str] = HEADLINE) -> Dict[str, Any]:
        """The fields ``keys`` (default :data:`HEADLINE`) as the demo's and the bench's figures, named
        ``prefix`` + field."""
        return {f"{prefix}{key}": getattr(self, key) for key in keys}

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form written as ``report.json`` (and recorded by the demo's export step)."""
        data = dataclasses.asdict(self)
        for key in _OPTIONAL_KEYS:
            if data[key] is None:
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: Dict[str, Any], where: str = "export result") -> "ExportResult":
        """Back from :meth:`to_dict`; a missing or unknown key (another version's report) raises naming ``where``."""
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing, unknown = sorted(required - set(data)), sorted(set(data) - names)
        if missing or unknown:
            raise FileFormatError(f"{where}: not an export report of this version (missing {missing or 'none'}, "
                                  f"unknown {unknown or 'none'}); export the model again")
        return cls(**data)

    @classmethod
    def read(cls, out_dir: Union[str, Path]) -> "ExportResult":
        """The ``report.json`` of the export in ``out_dir``."""
        path = Path(out_dir) / REPORT_JSON
        return cls.from_dict(atomic.read_json(path, "no export report here (run `mfk210 export`)"), str(path))
