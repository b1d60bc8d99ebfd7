"""Evaluation: InsightFace's 10-fold verification for Keras, TFLite and kmodel embedding models.

``metrics`` (the protocol), ``bins`` (InsightFace .bin sets), ``pairs`` (your own photos), ``report``
(PNGs, table, JSON) and ``callback`` (the same measure during training); the models run through
``runtime.backends`` (one ``embed`` per model form). :func:`evaluate` runs what ``mfk210 evaluate`` asks for.
"""
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import numpy as np

from mobilefacenet_k210 import atomic
from mobilefacenet_k210.config import EvalConfig, to_dict
from mobilefacenet_k210.errors import Mfk210Error
from mobilefacenet_k210.evaluate.bins import distinct_images


class EvalError(Mfk210Error, ValueError):
    """An evaluation request that cannot be carried out as given."""


def _check_config(config: EvalConfig) -> List[str]:
    """Validate the request; return the model paths to load (``models`` then ``compare``, deduplicated)."""
    models = list(dict.fromkeys(list(config.models) + list(config.compare)))
    if config.compare and len(config.compare) != 2:
        raise EvalError(f"--compare takes exactly two models, got {len(config.compare)}")
    if config.compare and config.compare[0] == config.compare[1]:
        raise EvalError("--compare needs two different models")
    if (config.embeddings is None) != (config.issame is None):
        raise EvalError("--embeddings and --issame go together")
    if config.root and not config.pairs:
        raise EvalError("--root only applies to --pairs")
    has_images = bool(config.bins or config.pairs or config.folder)
    if models and not has_images:
        raise EvalError("no verification set: give --bin, --pairs or --folder for the model(s)")
    if has_images and not models:
        raise EvalError("no model: give --model (or --compare A B) to embed the images")
    if not models and config.embeddings is None:
        raise EvalError("nothing to evaluate: give --model with a set, or --embeddings with --issame")
    if config.save_bin and bool(config.pairs) == bool(config.folder):
        raise EvalError("--save-bin writes the photo set of exactly one --pairs or --folder")
    for flag, path in (("--json", config.json), ("--save-bin", config.save_bin)):
        if path:
            _check_writable(Path(path), flag, folder=False)
    if config.out:
        _check_writable(Path(config.out), "--out", folder=True)
    return models


def _check_writable(path: Path, flag: str, folder: bool) -> None:
    """Refuse an output path that cannot be written, before any model is loaded or image embedded.

    ``path`` is a file (``folder=False``) or a folder to create or reuse. Its nearest existing
    ancestor must be a writable folder; a path under a file can never be created.
    """
    if path.exists():
        if folder and not path.is_dir():
            raise EvalError(f"{path}: {flag} names a file; give a folder to write the figures in")
        if not folder and path.is_dir():
            raise EvalError(f"{path}: {flag} names a folder; give a file name (e.g. {path / 'results.json'})")
        target = path if folder else path.parent
    else:
        target = path.parent
        while not target.exists() and target != target.parent:
            target = target.parent
        if not target.is_dir():
            raise EvalError(f"{path}: cannot write {flag} here: {target} is a file, not a folder; "
                            "give a path inside a folder")
    if not os.access(target, os.W_OK | os.X_OK):
        raise EvalError(f"{path}: cannot write {flag} here: no write permission on {target}; "
                        "give a path in a folder you can write")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _image_sets(config: EvalConfig, echo: Callable[[str], None],
                warn: Callable[[str], None]) -> Iterator[Tuple[str, np.ndarray, Any, np.ndarray,
                                                                                   Dict[str, Any]]]:
    """Yield ``(set name, crops, index, issame, extra info)`` one set at a time (sets can be large).

    Pair ``i`` is ``crops[index[2i]], crops[index[2i+1]]``: every set yields its distinct photos
    (each embedded once) and the index that puts them back in pair order.
    """
    from mobilefacenet_k210.evaluate import bins, pairs, report

    for path in config.bins:
        images, issame = bins.load_bin(path)
        unique, index = distinct_images(images)
        yield report.set_name(path), unique, index, issame, {"source": str(path), "distinct_images": len(unique)}
    for kind, source in (("pairs", config.pairs), ("folder", config.folder)):
        if not source:
            continue
        if kind == "pairs":
            pair_list = pairs.read_pairs_file(source, config.root)
        else:
            pair_list = pairs.folder_pairs(source, config.max_positive_pairs, config.seed)
        loaded = pairs.load_pair_images(pair_list, aligned=config.aligned)
        for path, reason, lost in loaded.unreadable:
            warn(f"warning: skipped {path}: {reason} ({lost} pair(s) left out)")
        skipped = {path for path, _, _ in loaded.unreadable}
        for (a, b, _), reason in loaded.dropped:
            if not skipped & {a, b}:
                echo(f"  left out pair {a} {b}: {reason}")
        if config.save_bin:
            echo(f"wrote {bins.write_bin(config.save_bin, loaded.images, loaded.issame)}")
        yield (report.set_name(source), loaded.unique, loaded.index, loaded.issame,
               {"source": str(source), "pairs_total": len(pair_list), "pairs_dropped": len(loaded.dropped)})


def evaluate(config: EvalConfig, echo: Callable[[str], None] = print,
             warn: Callable[[str], None] = _stderr) -> Dict[str, Any]:
    """Run the evaluation ``config`` describes; print the table; write JSON/PNGs/Markdown if asked.

    ``warn`` gets one line per photo left out because its file does not decode (stderr by default).
    Output paths are checked before anything is loaded, so a bad ``--json`` fails at once.

    Returns ``{"results": {model: {set: summary}}, "compare": {set: {...}}, "table": markdown,
    "tar_table": markdown, "files": [written paths]}``; every summary has at least ``accuracy``,
    ``accuracy_std``, ``best_threshold`` and ``tar_at_far``.
    """
    from mobilefacenet_k210.evaluate import metrics, report
    from mobilefacenet_k210.runtime import backends

    if config.identification:
        from mobilefacenet_k210.evaluate.identification import evaluate_identification

        return evaluate_identification(config, echo)
    model_paths = _check_config(config)
    out = Path(config.out) if config.out else None
    loaded = {path: backends.load_backend(path, config.trust_model_code) for path in model_paths}
    full: Dict[str, Dict[str, Dict[str, Any]]] = {}
    compare: Dict[str, Dict[str, Any]] = {}
    files: List[str] = []

    def record(model: str, set_name: str, result: Dict[str, Any], extra: Dict[str, Any]) -> None:
        full.setdefault(model, {})[set_name] = {**result, **extra}
        echo(f"{model} on {set_name}: accuracy {100 * result['accuracy']:.2f} ± {100 * result['accuracy_std']:.2f}%"
             f" (threshold {result['best_threshold']:.2f}, {result['n_pairs']} pairs)")
        if out:
            path = out / f"dist_{report.slug(set_name)}_{report.slug(model)}.png"
            files.append(str(report.plot_distances(result, path, f"{model} on {set_name}")))

    for set_name, images, index, issame, extra in _image_sets(config, echo, warn):
        embedded, distinct = {}, {}
        for path, backend in loaded.items():
            emb = backend.embed(images, batch_size=config.batch_size, flip=config.flip)
            zero = int(np.sum(~np.any(emb != 0, axis=1)))
            if zero:
                echo(f"  warning: {path} gave {zero} all-zero embedding(s) of {len(images)} on {set_name} "
                     "(a collapsed output, e.g. an output quantization range that rounds everything to 0)")
            distinct[path] = emb
            embedded[path] = emb if index is None else emb[index]
            record(path, set_name, metrics.verify(embedded[path], issame, config.nfolds), extra)
        if config.compare:
            a, b = config.compare
            agree = metrics.cosine_agreement(distinct[a], distinct[b])
            compare[set_name] = {"model_a": a, "model_b": b, "accuracy_a": full[a][set_name]["accuracy"],
                                 "accuracy_b": full[b][set_name]["accuracy"],
                                 "drop": full[a][set_name]["accuracy"] - full[b][set_name]["accuracy"],
                                 "cosine": metrics.summary(agree)}
            echo(f"compare on {set_name}: {a} {100 * compare[set_name]['accuracy_a']:.2f}% vs {b} "
                 f"{100 * compare[set_name]['accuracy_b']:.2f}% -> drop {100 * compare[set_name]['drop']:+.2f} "
                 f"points; cosine(A, B) mean {agree['mean']:.4f}, median {agree['median']:.4f}, "
                 f"5th percentile {agree['p05']:.4f}, min {agree['min']:.4f} over {agree['n_images']} images")
            if out:
                files.append(str(report.plot_cosine(agree['cosine'], out / f"cosine_{report.slug(set_name)}.png",
                                                    f"{a} vs {b} on {set_name}")))
        if out:
            curves = {m: full[m][set_name] for m in loaded}
            files.append(str(report.plot_roc(curves, out / f"roc_{report.slug(set_name)}.png", set_name)))

    if config.embeddings is not None:
        emb, issame = _load_npy(config.embeddings, "embeddings"), _load_npy(config.issame, "issame")
        set_name = report.set_name(config.issame)
        model = Path(config.embeddings).name
        result = metrics.verify(emb, issame, config.nfolds)
        record(model, set_name, result, {"source": str(config.embeddings)})
        if out:
            files.append(str(report.plot_roc({model: result}, out / f"roc_{report.slug(set_name)}.png", set_name)))

    results = {m: {s: metrics.summary(r) for s, r in sets.items()} for m, sets in full.items()}
    table, tars = report.markdown_table(results), report.tar_table(results)
    echo("")
    echo(table)
    if out:
        files.append(str(atomic.write_text(out / "results.md", f"## Verification accuracy (%)\n\n{table}\n"
                                           f"## TAR at FAR (%)\n\n{tars}")))
    payload = {"results": results, "compare": compare, "table": table, "tar_table": tars,
               "config": to_dict(config), "files": files}
    return report.write_payload(payload, config.json, files, echo)


def _load_npy(path: str, what: str) -> np.ndarray:
    """``np.load`` without pickles, with the file named in any error."""
    if not Path(path).is_file():
        raise EvalError(f"{path}: no such {what} file")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise EvalError(f"{path}: cannot read {what} as a .npy array: {exc}") from None
