"""Face verification metrics with InsightFace's protocol (``verification.py``), numpy and sklearn only.

Embeddings come in pairs (rows ``2i`` and ``2i+1`` form pair ``i``). They are L2-normalized, compared
by squared Euclidean distance (0..4), and a pair is called "same person" when its distance is below a
threshold. Accuracy is 10-fold cross-validated without shuffling: on each fold the threshold (0 to 4 by
0.01) that is best on the other nine folds is applied to it, and the mean and standard deviation of the
ten test accuracies are reported, exactly as InsightFace reports them.

TAR at a target FAR uses the same folds. InsightFace interpolates the threshold with
``scipy.interpolate.interp1d(far_train, thresholds)``, which current scipy refuses because the FAR
curve has long flat runs (duplicate x values). Here the threshold is taken exactly instead: the
largest one whose training-fold FAR does not exceed the target, i.e. the (k+1)-th smallest impostor
distance with k = floor(target x impostors); tied distances are never split, so the training FAR is
at most the target. A target is reported only when the training folds hold at least ``1/target``
impostor pairs (otherwise a FAR that small cannot be measured) and ``None`` otherwise.
"""
from typing import Any, Dict, Optional, Sequence

import numpy as np
from mobilefacenet_k210.errors import Mfk210Error

ACCURACY_THRESHOLDS = np.arange(0.0, 4.0, 0.01)
"""InsightFace's threshold grid for the accuracy: 0.00, 0.01, ..., 3.99 on squared L2 distance."""

FAR_TARGETS = (1e-1, 1e-2, 1e-3)


class VerificationError(Mfk210Error, ValueError):
    """Embeddings and labels that cannot be evaluated (shapes, too few pairs, one class only)."""


def far_key(far: float) -> str:
    """The JSON/dict key of a FAR target: ``1e-3`` -> ``"0.001"``."""
    return f"{far:g}"


def l2_normalize(embeddings: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalization (sklearn's, which leaves an all-zero row at zero)."""
    from sklearn.preprocessing import normalize

    return normalize(np.asarray(embeddings, dtype=np.float64), norm="l2", axis=1)


def pair_distances(embeddings: np.ndarray) -> np.ndarray:
    """Squared L2 distance between the normalized rows 2i and 2i+1, for every pair i."""
    emb = l2_normalize(embeddings)
    return np.sum(np.square(emb[0::2] - emb[1::2]), axis=1)


def _check(embeddings: np.ndarray, issame: np.ndarray, nfolds: int) -> None:
    if embeddings.ndim != 2:
        raise VerificationError(f"embeddings must be 2-D (2N, D), got shape {embeddings.shape}")
    if embeddings.shape[0] != 2 * issame.shape[0]:
        raise VerificationError(f"{embeddings.shape[0]} embeddings for {issame.shape[0]} pairs: "
                                "expected exactly two rows (2i, 2i+1) per pair")
    if not np.all(np.isfinite(embeddings)):
        raise VerificationError("embeddings contain NaN or infinity")
    if nfolds < 2:
        raise VerificationError(f"nfolds={nfolds}: need at least 2 folds")
    if issame.shape[0] < nfolds:
        raise VerificationError(f"{issame.shape[0]} pairs cannot be split into {nfolds} folds")
    if issame.all() or not issame.any():
        raise VerificationError("the pairs are all genuine or all impostor: need both to evaluate")


def accuracy_per_threshold(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Accuracy of ``dist < t`` as the same-person decision, for every t (exact, by sorted counts)."""
    genuine = np.sort(dist[issame])
    impostor = np.sort(dist[~issame])
    true_accepts = np.searchsorted(genuine, thresholds, side="left")  # genuine with dist < t
    false_accepts = np.searchsorted(impostor, thresholds, side="left")
    true_rejects = impostor.size - false_accepts
    return (true_accepts + true_rejects) / dist.size


def far_threshold(impostor_dist: np.ndarray, far: float) -> float:
    """Largest threshold t with mean(impostor_dist < t) <= far; ties are never split."""
    d = np.sort(impostor_dist)
    k = int(np.floor(far * d.size + 1e-9))  # false accepts allowed
    return float(d[k]) if k < d.size else float(np.nextafter(d[-1], np.inf))


def _tar_at_far(dist: np.ndarray, issame: np.ndarray, folds: Sequence, far: float) -> Optional[Dict[str, Any]]:
    tars, fars, thresholds = [], [], []
    for train, test in folds:
        impostor_train = dist[train][~issame[train]]
        if impostor_train.size * far < 1.0 - 1e-9:
            return None
        t = far_threshold(impostor_train, far)
        d, same = dist[test], issame[test]
        tars.append(np.mean(d[same] < t) if same.any() else np.nan)
        fars.append(np.mean(d[~same] < t) if (~same).any() else np.nan)
        thresholds.append(t)
    return {"tar": float(np.nanmean(tars)), "tar_std": float(np.nanstd(tars)),
            "far": float(np.nanmean(fars)), "threshold": float(np.mean(thresholds))}


def roc(dist: np.ndarray, issame: np.ndarray) -> Dict[str, Any]:
    """ROC of the score ``-distance`` (sklearn): fpr, tpr, the distance thresholds, AUC and EER."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, thr = roc_curve(issame.astype(int), -dist)
    fnr = 1.0 - tpr
    i = int(np.argmin(np.abs(fnr - fpr)))
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": (-thr).tolist(),
            "auc": float(roc_auc_score(issame.astype(int), -dist)), "eer": float((fpr[i] + fnr[i]) / 2.0)}


def verify(embeddings: np.ndarray, issame: Sequence[bool], nfolds: int = 10,
           far_targets: Sequence[float] = FAR_TARGETS) -> Dict[str, Any]:
    """InsightFace's 10-fold verification of paired embeddings (rows 2i, 2i+1 form pair i).

    Returns a dict: ``accuracy`` and ``accuracy_std`` (over folds, as fractions), ``best_threshold``
    (mean over folds of the squared-L2 threshold chosen on the training folds),
    ``fold_accuracies``, ``fold_thresholds``, ``tar_at_far`` (``{"0.1": {"tar", "tar_std", "far",
    "threshold"} or None, ...}``), ``roc`` (fpr, tpr, thresholds, auc, eer), ``n_pairs``,
    ``n_genuine``, ``n_impostor``, ``nfolds``, and numpy arrays ``distances`` and ``issame`` for
    plots (the JSON writer leaves those two out).
    """
    from sklearn.model_selection import KFold

    embeddings = np.asarray(embeddings)
    issame = np.asarray(issame).astype(bool).reshape(-1)
    _check(embeddings, issame, nfolds)
    dist = pair_distances(embeddings)
    folds = list(KFold(n_splits=nfolds, shuffle=False).split(np.arange(issame.size)))

    fold_acc, fold_thr = [], []
    for train, test in folds:
        best = int(np.argmax(accuracy_per_threshold(dist[train], issame[train], ACCURACY_THRESHOLDS)))
        t = ACCURACY_THRESHOLDS[best]
        fold_thr.append(round(float(t), 4))  # the grid's np.arange values, without float noise
        fold_acc.append(float(np.mean((dist[test] < t) == issame[test])))

    return {
        "accuracy": float(np.mean(fold_acc)),
        "accuracy_std": float(np.std(fold_acc)),
        "best_threshold": round(float(np.mean(fold_thr)), 6),
        "fold_accuracies": fold_acc,
        "fold_thresholds": fold_thr,
        "tar_at_far": {far_key(f): _tar_at_far(dist, issame, folds, f) for f in far_targets},
        "roc": roc(dist, issame),
        "n_pairs": int(issame.size),
        "n_genuine": int(issame.sum()),
        "n_impostor": int((~issame).sum()),
        "nfolds": int(nfolds),
        "distances": dist,
        "issame": issame,
    }


def summary(result: Dict[str, Any]) -> Dict[str, Any]:
    """The JSON-ready part of a :func:`verify` or :func:`cosine_agreement` result (no per-item arrays)."""
    return {k: v for k, v in result.items() if k not in ("distances", "issame", "cosine")}


def cosine_agreement(embeddings_a: np.ndarray, embeddings_b: np.ndarray) -> Dict[str, Any]:
    """How closely two models embed the same images (e.g. Keras vs kmodel): per-row cosine similarity.

    Returns ``mean``, ``std``, ``min``, ``p01``, ``p05``, ``median`` and the per-image array
    ``cosine`` (left out of JSON by :func:`summary`).
    """
    a, b = np.asarray(embeddings_a), np.asarray(embeddings_b)
    if a.shape[0] != b.shape[0]:
        raise VerificationError(f"cannot compare {a.shape[0]} embeddings with {b.shape[0]}")
    if a.shape[1] != b.shape[1]:
        raise VerificationError(f"embedding sizes differ: {a.shape[1]} vs {b.shape[1]}")
    cos = np.sum(l2_normalize(a) * l2_normalize(b), axis=1)
    return {"mean": float(cos.mean()), "std": float(cos.std()), "min": float(cos.min()),
            "p01": float(np.percentile(cos, 1)), "p05": float(np.percentile(cos, 5)),
            "median": float(np.median(cos)), "n_images": int(cos.size), "cosine": cos}
