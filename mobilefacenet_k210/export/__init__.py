"""Export: Keras embedding model -> float/int8 TFLite -> K210 kmodel (nncase 1.x), with a parity report.

``tflite.py`` converts, ``kmodel.py`` compiles (in a child process; ``runtime/kmodel.py`` runs the
result), ``placement.py`` reads nncase's IR dump to see what runs on the KPU, ``calibration.py`` loads the faces, and
``chain.py`` ties them together into ``export_model`` and the report; ``result.py`` holds what it
returns (:class:`ExportResult`, the content of ``report.json``).
"""
from mobilefacenet_k210.export.chain import export_model
from mobilefacenet_k210.export.result import ExportResult

__all__ = ["ExportResult", "export_model"]
