"""The demo's steps on the ORL faces: lay out the photos, align them, make verification pairs, identify
the held-out people as the board would (closed and open set), write the board files. Each is a plain
function of the demo's output folder and config; :mod:`.run` runs them in order and records them.
"""
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

from mobilefacenet_k210 import atomic
from mobilefacenet_k210.config import HeldOutRunConfig


def _copy_atomic(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` through a hidden temporary: a killed copy never leaves a truncated ``dst``."""
    with atomic.atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _copy_identity(src: Path, dst: Path, count: Optional[int] = None) -> int:
    photos = sorted(src.glob("*.pgm"), key=lambda p: int(p.stem))[:count]
    dst.mkdir(parents=True, exist_ok=True)
    for p in photos:
        if not (dst / p.name).is_file():
            _copy_atomic(p, dst / p.name)
    return len(photos)


def lay_out_faces(out: Path, groups: Dict[str, List[int]],
                  reduced_photos: Optional[Dict[str, int]] = None) -> Dict[str, Any]:
    """Copy the photos of ORL identities into raw/<group>/s<i> folders (``groups``: group -> identity
    numbers, e.g. train, select, test); ``reduced_photos`` caps some training identities' photos."""
    from mobilefacenet_k210.data.orl import fetch_orl

    orl = fetch_orl()
    counts: Dict[str, Dict[str, int]] = {}
    for group, ids in groups.items():
        counts[group] = {}
        for i in ids:
            name = f"s{i}"
            limit = (reduced_photos or {}).get(name) if group == "train" else None
            counts[group][name] = _copy_identity(orl / name, out / "raw" / group / name, limit)
    return {"orl": str(orl), "photos": {g: sum(c.values()) for g, c in counts.items()}, "counts": counts}


def align_tree(src: Path, dst: Path, workers: int, detector: Optional[str] = None) -> Dict[str, Any]:
    """Aligned 112x112 PNG crops of an identity-per-folder tree (builder with no policy, then unpacked);
    ``detector``: the builder's default unless named (the bench compares detectors)."""
    from mobilefacenet_k210.config import BuildConfig
    from mobilefacenet_k210.data import builder, policy, tfrecord

    shards = dst.with_name(dst.name + "_shards")
    cfg = BuildConfig(workers=workers, val_fraction=0.0, policy=policy.preset("none"),
                      **({"detector": detector} if detector else {}))
    summary = builder.build(src, shards, cfg)
    import cv2
    import numpy as np

    meta = tfrecord.load_metadata(shards)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    import tensorflow as tf

    count = 0
    for f in tfrecord.shard_files(shards, "train", meta):
        for raw in tf.data.TFRecordDataset(str(f)).as_numpy_iterator():
            rec = tfrecord.decode_record(raw)
            image = cv2.imdecode(np.frombuffer(rec[tfrecord.IMAGE], np.uint8), cv2.IMREAD_COLOR)
            out = tmp / rec[tfrecord.IDENTITY] / (Path(rec[tfrecord.SOURCE]).stem + ".png")
            out.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out), image)
            count += 1
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return {"crops": count, "rejected": summary["rejected"], "images_per_s": summary["images_per_s"]}


def write_pairs(aligned: Path, out: Path, seed: int = 0) -> Dict[str, Any]:
    """All same-person pairs of an aligned folder and as many different-person pairs, as a .bin."""
    from mobilefacenet_k210.evaluate import bins, pairs

    pair_list = pairs.folder_pairs(aligned, seed=seed)
    loaded = pairs.load_pair_images(pair_list, aligned=True)
    bins.write_bin(out, loaded.images, loaded.issame)
    return {"bin": str(out), "pairs": int(len(loaded.issame)), "positive": int(sum(loaded.issame))}


def model_paths(out: Path) -> Dict[str, str]:
    """The demo's two models by backend name: the Keras run folder and the kmodel."""
    return {"keras": str(out / "train"), "kmodel": str(out / "export" / "model.kmodel")}


def eval_set_name(out: Path, model: str) -> str:
    """The name under which `evaluate --json` filed a model's result on the test pairs."""
    from mobilefacenet_k210.evaluate import report

    return f"{model}/{report.set_name(out / 'test.bin')}"


def identify_test(out: Path, config: HeldOutRunConfig) -> Dict[str, Any]:
    """Enroll the first photos of each test identity, identify the rest, with Keras and with the kmodel.

    The galleries are in ``config.gallery_mode``, the one :func:`open_set_test` measures the board's
    threshold in (a threshold holds only for the mode it was measured in).
    """
    from mobilefacenet_k210.board import gallery, score

    aligned = out / "aligned" / "test"
    enroll_dir = out / "identify" / "enroll"
    probes: List[Path] = []
    truth: List[str] = []
    for person in sorted(p for p in aligned.iterdir() if p.is_dir()):
        photos = sorted(person.glob("*.png"), key=lambda p: (len(p.stem), p.stem))
        (enroll_dir / person.name).mkdir(parents=True, exist_ok=True)
        for p in photos[:config.enroll_photos]:
            _copy_atomic(p, enroll_dir / person.name / p.name)
        probes += photos[config.enroll_photos:]
        truth += [person.name] * len(photos[config.enroll_photos:])
    results: Dict[str, Any] = {"probes": len(probes), "enrolled_photos_per_person": config.enroll_photos,
                               "gallery_mode": config.gallery_mode}
    eval_json = out / "evaluate" / "results.json"
    for name, model in model_paths(out).items():
        threshold = score.threshold_from_eval(eval_json, eval_set_name(out, model))
        gallery_path = out / "identify" / f"gallery_{name}.json"
        gallery.enroll(enroll_dir, model, gallery_path, aligned=True, mode=config.gallery_mode)
        found = gallery.identify(probes, gallery_path, model, threshold_score=threshold["score"], aligned=True)
        names = [m["name"] for m in found]
        closest = [m["best"] for m in found]
        results[name] = {"names": names, "threshold_score": threshold["score"],
                         "accuracy": sum(n == t for n, t in zip(names, truth)) / max(1, len(truth)),
                         "rank1": sum(n == t for n, t in zip(closest, truth)) / max(1, len(truth)),
                         "unknown": sum(n == "unknown" for n in names)}
    results["same_names"] = sum(a == b for a, b in zip(results["keras"]["names"], results["kmodel"]["names"]))
    return results


def open_set_test(out: Path, config: HeldOutRunConfig) -> Dict[str, Any]:
    """The kmodel's open-set figures on the test identities (the board's job), thresholds up to their number."""
    from mobilefacenet_k210.config import EvalConfig
    from mobilefacenet_k210.evaluate import evaluate as evaluate_fn

    cfg = EvalConfig(models=[model_paths(out)["kmodel"]], folder=str(out / "aligned" / "test"), aligned=True,
                     identification=True, enroll_photos=config.enroll_photos, gallery_size=len(config.test),
                     gallery_mode=config.gallery_mode,
                     json=str(out / "openset" / "results.json"), out=str(out / "openset"))
    result = evaluate_fn(cfg)
    keep = ("rank1", "at_fpir", "enrolled_people", "mated_probes", "nonmated_probes", "gallery_size_method",
            "gallery_mode")
    return {"table": result["table"], "results": {m: {k: r[k] for k in keep} for m, r in result["results"].items()}}


def board_files(out: Path, gallery_size: int) -> Dict[str, Any]:
    """The .kfpkg for kflash and the CanMV script with the kmodel's open-set threshold (FPIR 1%) and gallery,
    both in the demo's gallery mode (board-files refuses a mismatch)."""
    from mobilefacenet_k210.board import kfpkg, sd_card

    kmodel = model_paths(out)["kmodel"]
    plan = kfpkg.build_kfpkg(kmodel, out / "board" / "mfk210.kfpkg")
    written = sd_card.write_board_files(out / "board" / "sd", kmodel, None, eval_set=kmodel,
                                        gallery=out / "identify" / "gallery_kmodel.json",
                                        ident_eval=out / "openset" / "results.json", fpir=0.01,
                                        gallery_size=gallery_size)
    return {"kfpkg": str(out / "board" / "mfk210.kfpkg"), "flash": plan.get("files", plan),
            "files": written["files"], "threshold": written["config"]["threshold"], "warnings": written["warnings"]}


def inspect_shards(out: Path) -> Dict[str, Any]:
    """Counts and the contact sheet of what training saw."""
    from mobilefacenet_k210.data import inspect_shards as inspection

    (out / "inspect").mkdir(parents=True, exist_ok=True)
    return inspection.inspect_shards(out / "shards", out / "inspect" / "contact_sheet.png")
