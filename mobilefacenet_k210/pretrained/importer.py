"""``mfk210 import-model SOURCE OUT``: a pretrained MobileFaceNet TFLite into our model, checked, as one folder.

OUT holds, written as one set (built beside OUT, swapped in whole, like an export):

- ``teacher.keras``: the exact float copy (per-channel PReLU), checked against SOURCE on real faces:
  every face's embedding cosine to SOURCE's at least :data:`EXACT_COSINE`, else the import is refused
  naming the first layer whose output differs;
- ``embedding/model.keras``: the K210-legal twin (ReLU for PReLU, otherwise the same weights), which
  ``mfk210 check`` passes and ``mfk210 export --model OUT`` compiles; recovery by distillation
  (``recover.yaml``) trains it back towards the teacher;
- ``recover.yaml``: the training config that recovers it (``configs/pretrained.yaml`` with this
  import's model shape, ``init_model`` and teacher filled in): ``mfk210 train --config OUT/recover.yaml``;
- ``import.json``: what was read and measured (source and its sha256, layers, cosines, K210 findings).
"""
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from mobilefacenet_k210 import atomic, k210
from mobilefacenet_k210.config import ModelConfig, TrainConfig, load, to_dict
from mobilefacenet_k210.fileinfo import sha256_file
from mobilefacenet_k210.pretrained import replica
from mobilefacenet_k210.pretrained.graph import ModelImportError, SourceGraph, read_graph

EXACT_COSINE = 0.9999
"""The least embedding cosine between the exact copy and SOURCE on any checked face."""
TEACHER_FILE = "teacher.keras"
RECORD_FILE = "import.json"
RECOVER_FILE = "recover.yaml"
RECIPE = "configs/pretrained.yaml"
"""The recovery recipe (phases and augmentation) that ``recover.yaml`` fills in."""
OUTPUT_NAMES = (TEACHER_FILE, "embedding", RECORD_FILE, RECOVER_FILE)


def check_exact(graph: SourceGraph, model: Any, mapping: replica.Mapping, config: ModelConfig,
                crops: np.ndarray, threshold: float = EXACT_COSINE) -> np.ndarray:
    """Per-face embedding cosines of ``model`` to SOURCE; :class:`ModelImportError` naming the first layer
    whose output differs when any face falls below ``threshold``."""
    cosines = replica.compare(graph, model, mapping, config, crops, layers=False)["embedding"]
    if cosines.min() >= threshold:
        return cosines
    per_layer = replica.compare(graph, model, mapping, config, crops)["layers"]
    name, cos = replica.first_difference(per_layer, threshold) or per_layer[-1]
    raise ModelImportError(f"{graph.path}: our copy does not reproduce it (embedding cosine down to "
                           f"{cosines.min():.6f} < {threshold} on {len(crops)} faces); the first layer whose output "
                           f"differs is {name} (cosine {cos:.6f})")


def import_arrays(graph: SourceGraph, crops: np.ndarray, split_conv_last: bool = False) -> Dict[str, Any]:
    """The exact copy and the K210 twin of ``graph``, checked on uint8 ``crops``; their figures.

    ``split_conv_last`` (when the source's last 1x1 conv has a PReLU) keeps that PReLU exact in the twin
    (``ModelConfig.split_conv_last``).

    Returns ``{"teacher", "student", "config", "record"}``: the two Keras models, the twin's ModelConfig
    and what ``import.json`` records.
    """
    activation = "prelu" if any(l.activation == "prelu" for l in graph.layers) else "relu"
    teacher, exact_config, mapping = replica.build(graph, activation)
    exact = check_exact(graph, teacher, mapping, exact_config, crops)
    split = split_conv_last and graph.layers[-3].activation == "prelu"  # conv_last, GDConv, projection
    student, config, student_mapping = replica.build(graph, "relu", split)
    twin = replica.compare(graph, student, student_mapping, config, crops, layers=False)["embedding"]
    findings = k210.check_model(student)
    if k210.errors(findings):
        raise ModelImportError(f"{graph.path}: its K210 twin breaks K210 rules: "
                               + "; ".join(str(f) for f in k210.errors(findings)))
    record = {
        "source": str(graph.path), "source_sha256": sha256_file(graph.path),
        "layers": len(graph.layers), "folded_linear_1x1": graph.folded,
        "source_activations": sorted({l.activation for l in graph.layers}),
        "stride2_padding": sorted({l.padding for l in graph.layers if l.stride == 2}),
        "model": to_dict(config), "teacher_activation": activation, "faces": int(len(crops)),
        "exact_cosine_min": float(exact.min()), "exact_cosine_mean": float(exact.mean()),
        "twin_cosine_min": float(twin.min()), "twin_cosine_mean": float(twin.mean()),
        "k210_warnings": [str(f) for f in findings],
        "mapping": [{"source_op": src.op_index, "source": src.name, "layer": ours.name,
                     "activation": src.activation} for src, ours in mapping.pairs],
    }
    return {"teacher": teacher, "student": student, "config": config, "record": record}


def _recovery_config(record: Dict[str, Any], out: Path, recipe: Union[str, Path],
                     overrides: Optional[List[str]]) -> TrainConfig:
    filled = [f"model.{key}={value}" for key, value in record["model"].items()]
    filled += [f"init_model={out}", f"phases.0.teacher_model={out / TEACHER_FILE}"]
    return load(TrainConfig, recipe, filled + list(overrides or []))


def recovery_config(out: Union[str, Path], recipe: Union[str, Path] = RECIPE,
                    overrides: Optional[List[str]] = None) -> TrainConfig:
    """The training config that recovers the import in ``out``: ``recipe`` with the import's model shape,
    its K210 twin as ``init_model`` and its exact copy as the feature_distill teacher (then ``overrides``)."""
    out = Path(out).resolve()
    record = atomic.read_json(out / RECORD_FILE, "not an import-model folder (`mfk210 import-model` writes it)")
    return _recovery_config(record, out, recipe, overrides)


def import_model(source: Union[str, Path], out: Union[str, Path], faces: Union[str, Path],
                 samples: int = 100, seed: int = 0, recipe: Union[str, Path] = RECIPE,
                 split_conv_last: bool = False) -> Dict[str, Any]:
    """Read SOURCE, build and check its exact copy on ``samples`` aligned faces of ``faces`` (a folder of
    crops or shards), write OUT (see the module's docstring); return what ``import.json`` records."""
    import yaml

    from mobilefacenet_k210.export.calibration import load_faces
    from mobilefacenet_k210.export.staging import check_out_dir, staged_folder
    from mobilefacenet_k210.model.io import save_embedding_model

    out = Path(out)
    check_out_dir(out, OUTPUT_NAMES)
    graph = read_graph(source)
    crops, _ = load_faces(faces, samples, seed=seed)
    built = import_arrays(graph, crops, split_conv_last)
    record = {**built["record"], "faces_from": str(faces)}
    config = _recovery_config(record, out.resolve(), recipe, None)  # names the files where OUT will hold them
    with staged_folder(out) as staging:
        save_embedding_model(built["teacher"], staging / TEACHER_FILE)
        save_embedding_model(built["student"], staging)
        atomic.write_json(staging / RECORD_FILE, record)
        atomic.write_text(staging / RECOVER_FILE, f"# `mfk210 import-model {source}`: recovers the K210 twin in "
                          f"{out} (`mfk210 train --config {out / RECOVER_FILE} --data SHARDS --out RUN`)\n"
                          + yaml.safe_dump(to_dict(config), sort_keys=False))
    return record
