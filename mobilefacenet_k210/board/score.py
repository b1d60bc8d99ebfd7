"""The board's score scale and the conversion of our verification threshold onto it.

Evaluation picks ``best_threshold`` on the squared L2 distance ``d`` between L2-normalized
embeddings (a pair matches when ``d < threshold``). CanMV's ``KPU.Feat.compare`` scores two
normalized features as ``(0.5 + 0.5 * cos) * 100``. For unit vectors ``d = 2 - 2 cos``, so
``cos = 1 - d / 2`` and ``score = 100 - 25 * d``: a distance threshold ``t`` becomes the score
threshold ``100 - 25 t`` (a face matches when its score is above it), with no approximation.
"""
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from mobilefacenet_k210 import atomic
from mobilefacenet_k210.errors import Mfk210Error
from mobilefacenet_k210.evaluate.identification import FORMAT as IDENTIFICATION_FORMAT
from mobilefacenet_k210.evaluate.identification import (board_scores, score_to_distance,  # the one copy
                                                        threshold_from_identification)

__all__ = ["ThresholdError", "board_scores", "board_threshold", "distance_to_score", "score_to_distance",
           "threshold_from_eval", "threshold_from_identification", "threshold_warnings"]


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


def board_threshold(path: Union[str, Path], eval_set: Optional[str] = None, fpir: float = 0.01,
                    gallery_size: Optional[int] = None, gallery_mode: Optional[str] = None,
                    gallery: Optional[Union[str, Path]] = None, open_set_only: bool = False) -> Dict[str, Any]:
    """The board's match threshold from an evaluation file: the one rule ``board-files`` and ``identify`` share.

    An open-set result (``mfk210 evaluate --identification --json``) gives the score at which strangers get
    a name at most ``fpir`` of the time in a gallery of ``gallery_size`` people, and must have been measured
    in the gallery's mode (``gallery_mode``, of the file ``gallery``); a verification result (``mfk210
    evaluate --json``) gives its 10-fold best threshold. Either way a face matches when its best score is
    above ``score``. ``open_set_only`` refuses a verification result (``board-files --ident-eval``).
    """
    data = atomic.read_json(Path(path), "no such evaluation file (write one with `mfk210 evaluate --json` or "
                                        "`mfk210 evaluate --identification --json`)", ThresholdError)
    if not open_set_only and not (isinstance(data, dict) and data.get("format") == IDENTIFICATION_FORMAT):
        return {**threshold_from_eval(path, eval_set), "from": "1:1 verification (10-fold best accuracy)",
                "gallery_size": None}
    if gallery_size is None:
        raise ThresholdError(f"{path}: the open-set threshold depends on how many people are enrolled; "
                             "pass --gallery or --gallery-size")
    threshold = threshold_from_identification(path, gallery_size, fpir, eval_set)
    if gallery_mode is not None and threshold["gallery_mode"] != gallery_mode:
        raise ThresholdError(f"{path} measured the threshold for a {threshold['gallery_mode']!r} gallery but "
                             f"{gallery} is a {gallery_mode!r} gallery, where that threshold does not hold; run "
                             f"`mfk210 evaluate --identification --gallery-mode {gallery_mode}` or enroll again "
                             f"with `mfk210 enroll --gallery-mode {threshold['gallery_mode']}`")
    return threshold


def threshold_warnings(threshold: Dict[str, Any]) -> List[str]:
    """What a user must know about a threshold from :func:`board_threshold` (a rate finer than was measured)."""
    if not threshold.get("limited"):
        return []
    return [f"{threshold['source']}: FPIR {threshold['fpir']:g} for {threshold['gallery_size']} people needs a "
            f"per-comparison rate below 1 in {threshold['impostor_comparisons']} measured; the threshold is the "
            "highest impostor score seen (measure on more people for a finer one)"]
