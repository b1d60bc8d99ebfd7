"""Open-set 1:N identification as the board does it: rank-1, FNIR at FPIR, the DET curve, thresholds per gallery size.

The board names a face by comparing its normalized feature with every gallery entry on
``Feat.compare``'s scale ``(0.5 + 0.5 cos) * 100`` and accepts the best one when its score is *above*
the threshold. The gallery mode (``config.GALLERY_MODES``) says what the entries are: ``mean``, one per
person, the normalized mean of its normalized features; ``max``, one per enrolled photo under the
person's name, so a person's score is the max over its entries (``board/gallery.py``).
This module measures exactly that on a folder of people: the people are split into two halves;
the first ``enroll_photos`` photos of each person of one half form the gallery, their other photos
are *mated* probes, and every photo of the other half is a *non-mated* probe (a stranger); then the
halves swap and both folds are pooled. Measures (NIST FRVT 1:N's):

- rank-1: share of mated probes whose best-scoring gallery entry is their own person;
- FPIR(t): share of non-mated probes whose top score is above ``t`` (a stranger gets a name);
- FNIR(t): share of mated probes not named correctly at ``t`` (top score not above ``t``, or the top
  entry is somebody else).

A stranger is compared with every enrolled person, so its top score grows with the gallery size N.
The threshold for a gallery of N people comes from the per-comparison impostor scores (every probe
against every enrolled person not its own, a person's score being the max over its entries in ``max``
mode, so N people are N comparisons in either mode): with ``p(t)`` the share above ``t``, and
comparisons taken as independent, ``FPIR_N(t) = 1 - (1 - p(t))^N``. Where N is at most the people enrolled in a fold,
the report checks that model against galleries of N people drawn from the enrolled ones.
"""
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from mobilefacenet_k210 import atomic
from mobilefacenet_k210.config import DEFAULT_GALLERY_MODE, GALLERY_MODES, check_choice, recorded_gallery_mode
from mobilefacenet_k210.errors import Mfk210Error

FORMAT = "mfk210-identification"
FPIR_TARGETS = (0.01, 0.1)
GALLERY_SIZES = (1, 5, 10, 20, 50, 100, 1000)
IMPOSTOR_TAIL = 100_000
"""How many of the highest impostor scores the JSON keeps: enough for any FPIR up to 10% with
this many divided by 0.1 comparisons, and for the small per-comparison rates of large galleries."""
RESAMPLES = 200


class IdentificationError(Mfk210Error, ValueError):
    """An identification request or file that cannot be used; the message names it and says what to do."""


def board_scores(features: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """``Feat.compare`` of every feature (N, D) with every gallery feature (G, D): (0.5 + 0.5 * dot) * 100.

    Like the board, no normalization happens here: both sides must already be unit vectors. This is
    the one copy of the board's formula (``board/score.py`` and the host ``identify`` use it too).
    """
    return (0.5 + 0.5 * np.asarray(features, np.float32) @ np.asarray(gallery, np.float32).T) * 100.0


def score_to_distance(score: float) -> float:
    """Squared L2 distance of unit vectors with board score ``score``: cos = 2 score/100 - 1, d = 2 - 2 cos."""
    return 2.0 * (1.0 - (float(score) / 100.0 - 0.5) / 0.5)


def person_features(features: np.ndarray, labels: Sequence[str]) -> Tuple[List[str], np.ndarray]:
    """The board's gallery: per person the normalized mean of its (already normalized) features."""
    names = sorted(set(labels))
    labels = np.asarray(labels)
    means = np.stack([np.asarray(features, np.float64)[labels == n].mean(axis=0) for n in names])
    return names, (means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32)


def gallery_entries(features: np.ndarray, labels: Sequence[str], mode: str) -> Tuple[np.ndarray, np.ndarray]:
    """The gallery's (entry names, unit entry features) for ``mode``: one mean per person, or one per photo."""
    check_choice(mode, GALLERY_MODES, "gallery mode")
    if mode == "mean":
        names, means = person_features(features, labels)
        return np.asarray(names), means
    order = np.argsort(np.asarray(labels), kind="stable")
    return np.asarray(labels)[order], np.asarray(features, np.float32)[order]


def person_scores(scores: np.ndarray, entry_names: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per person the best of its entries' scores (probes, entries) -> (names, (probes, people)), as the board."""
    names = np.asarray(sorted(set(entry_names.tolist())))
    best = np.stack([scores[:, entry_names == n].max(axis=1) for n in names], axis=1)
    return names, best


def threshold_at(scores: np.ndarray, rate: float) -> float:
    """The lowest threshold ``t`` (from ``scores``) with at most ``rate`` of ``scores`` above it (board: score > t)."""
    ordered = np.sort(np.asarray(scores, np.float64))[::-1]
    k = int(np.floor(rate * len(ordered) + 1e-9))
    return float(ordered[k]) if k < len(ordered) else 0.0


def rates(top_mated: np.ndarray, correct: np.ndarray, top_nonmated: np.ndarray, t: float) -> Tuple[float, float]:
    """(FPIR, FNIR) at threshold ``t``: a probe is named when its top score is above ``t``."""
    fpir = float(np.mean(top_nonmated > t)) if len(top_nonmated) else float("nan")
    fnir = float(np.mean(~(correct & (top_mated > t)))) if len(top_mated) else float("nan")
    return fpir, fnir


def det_curve(top_mated: np.ndarray, correct: np.ndarray, top_nonmated: np.ndarray) -> Dict[str, List[float]]:
    """FPIR and FNIR at every distinct top score (and 0), thresholds increasing."""
    thresholds = np.unique(np.concatenate([[0.0], top_mated, top_nonmated]))
    nonmated = np.sort(top_nonmated)
    named = np.sort(top_mated[correct])
    fpir = 1.0 - np.searchsorted(nonmated, thresholds, side="right") / max(1, len(nonmated))
    fnir = 1.0 - (len(named) - np.searchsorted(named, thresholds, side="right")) / max(1, len(top_mated))
    return {"threshold": thresholds.tolist(), "fpir": fpir.tolist(), "fnir": fnir.tolist()}


def threshold_for_gallery(impostor_tail: np.ndarray, impostor_count: int, gallery_size: int,
                          fpir: float) -> Dict[str, Any]:
    """Score threshold giving ``fpir`` for a gallery of ``gallery_size`` people, by the independence model.

    ``impostor_tail`` holds the highest per-comparison impostor scores out of ``impostor_count``.
    ``limited`` is true when the rate asked for is below one comparison in ``impostor_count``: the
    threshold is then the highest impostor score seen, and the real FPIR is only known to be lower.
    """
    if gallery_size < 1 or not 0.0 < fpir < 1.0:
        raise IdentificationError(f"gallery size {gallery_size} and FPIR {fpir}: need a size >= 1 and 0 < FPIR < 1")
    per_comparison = 1.0 - (1.0 - fpir) ** (1.0 / gallery_size)
    ordered = np.sort(np.asarray(impostor_tail, np.float64))[::-1]
    k = int(np.floor(per_comparison * impostor_count + 1e-9))
    if k >= len(ordered) and len(ordered) < impostor_count:
        raise IdentificationError(f"FPIR {fpir} for {gallery_size} people needs impostor scores beyond the "
                                  f"{len(ordered)} highest kept; measure with fewer probes or a larger gallery size")
    score = float(ordered[min(k, len(ordered) - 1)]) if len(ordered) else 0.0
    return {"score": score, "distance": score_to_distance(score), "fpir": fpir, "gallery_size": int(gallery_size),
            "per_comparison_rate": per_comparison, "limited": k == 0, "impostor_comparisons": int(impostor_count),
            "method": "independent comparisons: FPIR_N(t) = 1 - (1 - p(t))^N, p from every impostor comparison"}


def _folds(labels: np.ndarray, order: np.ndarray, enroll_photos: int) -> List[Dict[str, np.ndarray]]:
    """Two folds: gallery half A (first photos), mated probes (A's other photos), non-mated (all of B); then swapped."""
    people = sorted(set(labels.tolist()))
    if len(people) < 2:
        raise IdentificationError("open-set identification needs at least 2 people (half enrolled, half strangers)")
    half = len(people) // 2
    folds = []
    for enrolled, strangers in ((people[:half], people[half:]), (people[half:], people[:half])):
        gallery = np.isin(labels, enrolled) & (order < enroll_photos)
        mated = np.isin(labels, enrolled) & (order >= enroll_photos)
        folds.append({"gallery": gallery, "mated": mated, "nonmated": np.isin(labels, strangers)})
    return folds


def open_set(features: np.ndarray, labels: Sequence[str], order: Sequence[int], enroll_photos: int,
             fpirs: Sequence[float] = FPIR_TARGETS, gallery_sizes: Sequence[int] = GALLERY_SIZES,
             seed: int = 0, gallery_mode: str = DEFAULT_GALLERY_MODE) -> Dict[str, Any]:
    """The whole protocol on normalized ``features`` with their person ``labels`` and photo ``order`` per person,
    the gallery entered as ``gallery_mode``.

    Returns rank-1, per FPIR target the threshold and FNIR on the protocol's gallery, the DET curve,
    the threshold per gallery size (independence model, checked by resampling where possible) and
    the highest impostor scores (for :func:`threshold_for_gallery` later).
    """
    features, labels, order = np.asarray(features, np.float32), np.asarray(labels), np.asarray(order)
    rng = np.random.default_rng(seed)
    top_m, ok, top_n, impostor, sampled = [], [], [], [], {}
    enrolled_sizes = []
    for fold in _folds(labels, order, enroll_photos):
        entries, gallery = gallery_entries(features[fold["gallery"]], labels[fold["gallery"]], gallery_mode)
        if not fold["mated"].any():
            raise IdentificationError(f"no photo left to probe with after enrolling {enroll_photos} per person; "
                                      "lower the enrolled photos or add photos")
        names, mated = person_scores(board_scores(features[fold["mated"]], gallery), entries)
        nonmated = person_scores(board_scores(features[fold["nonmated"]], gallery), entries)[1]
        enrolled_sizes.append(len(names))
        top_m.append(mated.max(axis=1))
        ok.append(names[mated.argmax(axis=1)] == labels[fold["mated"]])
        top_n.append(nonmated.max(axis=1))
        impostor += [mated[names[None, :] != labels[fold["mated"]][:, None]], nonmated.ravel()]
        for n in gallery_sizes:
            if n <= len(names):
                picks = [rng.choice(len(names), n, replace=False) for _ in range(RESAMPLES)]
                sampled.setdefault(n, []).append(np.concatenate([nonmated[:, p].max(axis=1) for p in picks]))
    top_mated, correct, top_nonmated = np.concatenate(top_m), np.concatenate(ok), np.concatenate(top_n)
    impostor_all = np.sort(np.concatenate(impostor))[::-1]
    tail = impostor_all[:IMPOSTOR_TAIL]
    at_fpir = {}
    for f in fpirs:
        t = threshold_at(top_nonmated, f)
        fpir, fnir = rates(top_mated, correct, top_nonmated, t)
        at_fpir[_key(f)] = {"threshold_score": t, "fpir": fpir, "fnir": fnir}
    by_size = {}
    for n in gallery_sizes:
        row = {}
        for f in fpirs:
            model = threshold_for_gallery(tail, len(impostor_all), n, f)
            entry = {"score": model["score"], "limited": model["limited"],
                     "fnir_measured_probes": rates(top_mated, correct, top_nonmated, model["score"])[1]}
            if n in sampled:
                entry["fpir_resampled"] = float(np.mean(np.concatenate(sampled[n]) > model["score"]))
            row[_key(f)] = entry
        by_size[str(n)] = row
    return {"rank1": float(np.mean(correct)), "enroll_photos": int(enroll_photos), "gallery_mode": gallery_mode,
            "enrolled_people": enrolled_sizes, "mated_probes": int(len(top_mated)),
            "nonmated_probes": int(len(top_nonmated)), "at_fpir": at_fpir, "by_gallery_size": by_size,
            "det": det_curve(top_mated, correct, top_nonmated),
            "impostor_count": int(len(impostor_all)), "impostor_tail": [round(float(s), 4) for s in tail],
            "gallery_size_method": "independent comparisons: FPIR_N(t) = 1 - (1 - p(t))^N, p(t) = share of "
                                   "per-comparison (one enrolled person) impostor scores above t; checked against "
                                   f"galleries of N people drawn {RESAMPLES} times from the enrolled ones where N "
                                   "allows"}


def _key(fpir: float) -> str:
    return f"{fpir:g}"


def table(results: Dict[str, Dict[str, Any]], fpirs: Sequence[float] = FPIR_TARGETS) -> str:
    """Markdown: per model rank-1 and FNIR at each FPIR (threshold in board score), then thresholds per gallery size."""
    head = " | ".join(f"FNIR @FPIR {100 * f:g}% (score >)" for f in fpirs)
    lines = [f"| Model | rank-1 | {head} | enrolled / mated / strangers | gallery |",
             "|---|---:|" + "---:|" * len(fpirs) + "---|---|"]
    for model, r in results.items():
        cells = [f"{100 * r['at_fpir'][_key(f)]['fnir']:.1f}% ({r['at_fpir'][_key(f)]['threshold_score']:.1f})"
                 for f in fpirs]
        lines.append(f"| {model} | {100 * r['rank1']:.1f}% | " + " | ".join(cells) +
                     f" | {'+'.join(map(str, r['enrolled_people']))} people x {r['enroll_photos']} photos / "
                     f"{r['mated_probes']} / {r['nonmated_probes']} | {describe_mode(r.get('gallery_mode'))} |")
    for model, r in results.items():
        lines += ["", f"Threshold (board score) for a gallery of N people, {model}; FNIR on the measured probes at "
                      "it; FPIR of galleries of N drawn from the enrolled people where N allows:", "",
                  "| N | " + " | ".join(f"score @FPIR {100 * f:g}% | FNIR | FPIR drawn" for f in fpirs) + " |",
                  "|---:|" + "---:|---:|---:|" * len(fpirs)]
        for n, row in r["by_gallery_size"].items():
            cells = []
            for f in fpirs:
                e = row[_key(f)]
                drawn = f"{100 * e['fpir_resampled']:.1f}%" if "fpir_resampled" in e else "-"
                cells.append(f"{e['score']:.1f}{' (max seen)' if e['limited'] else ''} | "
                             f"{100 * e['fnir_measured_probes']:.1f}% | {drawn}")
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def describe_mode(mode: Optional[str]) -> str:
    """The gallery mode in words, for tables and reports (results written before modes were ``mean``)."""
    return {"max": "max over each person's photos", "mean": "mean of each person's photos"}[recorded_gallery_mode(mode)]


def plot_det(results: Dict[str, Dict[str, Any]], path: Path, title: str) -> Path:
    """DET (FNIR against FPIR, log FPIR) per model, FPIR targets marked; beside it, threshold against gallery size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, (model, r) in enumerate(results.items()):
        fpir, fnir = np.asarray(r["det"]["fpir"]), np.asarray(r["det"]["fnir"])
        keep = fpir > 0
        ax.step(fpir[keep], fnir[keep], where="post", linestyle=("-", "--", ":")[i % 3],
                label=f"{model} (rank-1 {100 * r['rank1']:.1f}%)")
        sizes = [int(n) for n in r["by_gallery_size"]]
        for j, f in enumerate(FPIR_TARGETS):
            scores = [r["by_gallery_size"][str(n)][_key(f)]["score"] for n in sizes]
            bx.plot(sizes, scores, marker="o", linestyle=("-", "--")[j], label=f"{model}, FPIR {100 * f:g}%")
    for f in FPIR_TARGETS:
        ax.axvline(f, color="0.8", linewidth=0.8, zorder=0)
    ax.set_xscale("log")
    ax.set_xlabel("FPIR (strangers given a name)")
    ax.set_ylabel("FNIR (enrolled people not named correctly)")
    ax.set_ylim(0.0, 1.01)
    ax.set_title(f"DET, open-set 1:N: {title}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    bx.set_xscale("log")
    bx.set_xlabel("people in the gallery (N)")
    bx.set_ylabel("board score threshold")
    bx.set_title("threshold for the same FPIR grows with N")
    bx.grid(True, alpha=0.3)
    bx.legend(fontsize=7)
    return atomic.save_figure(fig, path, dpi=110, bbox_inches="tight")


def load_folder(folder: str, aligned: bool) -> Tuple[Any, np.ndarray, np.ndarray, List[str]]:
    """Crops of every photo of an identity-per-folder tree: (crops, labels, order within person, skipped)."""
    from mobilefacenet_k210.data.crops import Unreadable, read_crops
    from mobilefacenet_k210.evaluate.pairs import identity_images, wrong_size

    paths = [(name, p) for name, photos in identity_images(folder) for p in photos]
    read = read_crops([p for _, p in paths], aligned, wrong_size, batch_size=32, skip_unreadable=True, progress=True)
    kept = [i for i, crop in enumerate(read) if isinstance(crop, np.ndarray)]
    skipped = [f"{paths[i][1]}: {crop.reason if isinstance(crop, Unreadable) else 'no face found'}"
               for i, crop in enumerate(read) if not isinstance(crop, np.ndarray)]
    crops = np.stack([read[i] for i in kept]).astype(np.uint8) if kept else None
    if crops is None:
        raise IdentificationError(f"{folder}: no face found in any photo")
    labels = np.asarray([paths[i][0] for i in kept])
    order = np.zeros(len(kept), np.int64)
    for name in set(labels.tolist()):  # the photos' order among the person's photos with a face
        order[labels == name] = np.arange(int(np.sum(labels == name)))
    return crops, labels, order, skipped


def evaluate_identification(config: Any, echo: Callable[[str], None] = print) -> Dict[str, Any]:
    """``mfk210 evaluate --identification``: the protocol on ``config.folder`` for each model; table, DET PNG, JSON."""
    from mobilefacenet_k210.runtime.backends import load_backend
    from mobilefacenet_k210.evaluate.metrics import l2_normalize

    if not config.folder or config.bins or config.pairs or config.embeddings or config.compare:
        raise IdentificationError("--identification takes --folder (one sub-folder of photos per person) and "
                                  "--model, and no --bin, --pairs, --embeddings or --compare")
    if not config.models:
        raise IdentificationError("no model: give --model to embed the photos of --folder")
    crops, labels, order, skipped = load_folder(config.folder, config.aligned)
    for reason in skipped:
        echo(f"  left out {reason}")
    sizes = sorted(set(GALLERY_SIZES) | ({config.gallery_size} if config.gallery_size else set()))
    results = {}
    for model in config.models:
        emb = load_backend(model, config.trust_model_code).embed(crops, batch_size=config.batch_size, flip=False)
        results[model] = open_set(l2_normalize(emb), labels, order, config.enroll_photos, FPIR_TARGETS, sizes,
                                  config.seed, config.gallery_mode)
        r = results[model]
        echo(f"{model} on {config.folder}, {describe_mode(config.gallery_mode)}: rank-1 {100 * r['rank1']:.1f}%, " + ", ".join(
            f"FNIR {100 * r['at_fpir'][_key(f)]['fnir']:.1f}% at FPIR {100 * f:g}%" for f in FPIR_TARGETS))
    text = table(results)
    echo("")
    echo(text)
    files = []
    if config.out:
        out = Path(config.out)
        files.append(str(plot_det(results, out / "det_identification.png", Path(config.folder).name)))
        files.append(str(atomic.write_text(out / "identification.md", f"## Open-set identification\n\n{text}")))
    from mobilefacenet_k210.evaluate.report import write_payload

    payload = {"format": FORMAT, "version": 1, "folder": str(config.folder), "results": results, "table": text,
               "files": files}
    return write_payload(payload, config.json, files, echo)


def threshold_from_identification(path: Any, gallery_size: int, fpir: float = 0.01,
                                  model: Optional[str] = None) -> Dict[str, Any]:
    """The board threshold for ``gallery_size`` people at ``fpir`` from ``mfk210 evaluate --identification --json``,
    with the gallery mode it holds for (files written before modes existed measured ``mean``)."""
    path = Path(path)
    data = atomic.read_json(path, "no such identification file (write one with "
                                  "`mfk210 evaluate --identification --json`)", IdentificationError)
    results = data.get("results") if isinstance(data, dict) and data.get("format") == FORMAT else None
    if not isinstance(results, dict) or not results:
        raise IdentificationError(f"{path}: not `mfk210 evaluate --identification --json` output "
                                  f"(format {FORMAT!r} with results)")
    if model is None and len(results) > 1:
        raise IdentificationError(f"{path}: results of {len(results)} models ({', '.join(sorted(results))}); "
                                  "pick one with --eval-set")
    chosen = model if model is not None else next(iter(results))
    if chosen not in results:
        raise IdentificationError(f"{path}: no model {chosen!r}; it has {', '.join(sorted(results))}")
    r = results[chosen]
    try:
        tail, count = np.asarray(r["impostor_tail"], np.float64), int(r["impostor_count"])
    except (KeyError, TypeError, ValueError):
        raise IdentificationError(f"{path}: no usable impostor scores for {chosen!r}; write the file again "
                                  "with `mfk210 evaluate --identification --json`") from None
    threshold = threshold_for_gallery(tail, count, gallery_size, fpir)
    return {**threshold, "source": str(path), "set": chosen, "from": "open-set identification",
            "rank1": r.get("rank1"), "gallery_mode": recorded_gallery_mode(r.get("gallery_mode"))}
