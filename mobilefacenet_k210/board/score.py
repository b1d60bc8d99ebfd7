"""The board's score scale and the conversion of our verification threshold onto it.

Evaluation picks ``best_threshold`` on the squared L2 distance ``d`` between L2-normalized
embeddings (a pair matches when ``d < threshold``). CanMV's ``KPU.Feat.compare`` scores two
normalized features as ``(0.5 + 0.5 * cos) * 100``. For unit vectors ``d = 2 - 2 cos``, so
``cos = 1 - d / 2`` and ``score = 100 - 25 * d``: a distance threshold ``t`` becomes the score
threshold ``100 - 25 t`` (a face matches when its score is above it), with no approximation.
"""
from pathlib import Path
from typing import Any, Dict, Optional, Union

from mobilefacenet_k210 import atomic
from mobilefacenet_k210.errors import Mfk210Error
from mobilefacenet_k210.evaluate.identification import (board_scores, score_to_distance,  # the one copy
                                                        threshold_from_identification)

__all__ = ["ThresholdError", "board_scores", "distance_to_score", "score_to_distance", "threshold_from_eval",
           "threshold_from_identification"]


class ThresholdError(Mfk210Error, ValueError):
    """An evaluation file that gives no usable threshold; the message names it and says what to pass."""


def distance_to_score(distance: float) -> float:
    """Board score of a squared-L2 distance between normalized embeddings: (0.5 + 0.5 * (1 - d/2)) * 100."""
    cos = 1.0 - float(distance) / 2.0
    return (0.5 + 0.5 * cos) * 100.0


def threshold_from_eval(path: Union[str, Path], name: Optional[str] = None) -> Dict[str, Any]:
    """Read ``best_threshold`` from ``mfk210 evaluate --json`` output; return distance, score and source.

    The file may hold one result (``best_threshold`` at the top) or one per verification set
    (``{set_name: {... "best_threshold": ...}}``, possibly under a ``"results"`` key); with several
    sets, ``name`` picks one.
    """
    path = Path(path)
    data = atomic.read_json(path, "no such evaluation file (write one with `mfk210 evaluate --json`)",
                            ThresholdError)
    results = _results_with_threshold(data)
    if not results:
        raise ThresholdError(f"{path}: no 'best_threshold' in it; is it `mfk210 evaluate --json` output?")
    if name is not None:
        if name not in results:
            raise ThresholdError(f"{path}: no set {name!r}; it has {', '.join(sorted(results))}")
        chosen = name
    elif len(results) == 1:
        chosen = next(iter(results))
    else:
        raise ThresholdError(f"{path}: {len(results)} sets with a threshold ({', '.join(sorted(results))}); "
                         "pick one with --eval-set")
    try:
        distance = float(results[chosen]["best_threshold"])
    except (TypeError, ValueError):
        raise ThresholdError(f"{path}: best_threshold {results[chosen]['best_threshold']!r} is not a number; "
                             "write the file again with `mfk210 evaluate --json`") from None
    if not 0.0 <= distance <= 4.0:
        raise ThresholdError(f"{path}: best_threshold {distance} is outside 0..4, the range of squared L2 distances "
                         "between unit vectors")
    return {"distance": distance, "score": distance_to_score(distance), "source": str(path),
            "set": chosen or None, "accuracy": results[chosen].get("accuracy")}


def _results_with_threshold(data: Any) -> Dict[str, Dict[str, Any]]:
    if not isinstance(data, dict):
        return {}
    if "best_threshold" in data:
        return {"": data}
    found = {}
    for key, value in data.items():
        if isinstance(value, dict):
            for sub, result in _results_with_threshold(value).items():
                found[key if sub == "" else (sub if key == "results" else f"{key}/{sub}")] = result
    return found
