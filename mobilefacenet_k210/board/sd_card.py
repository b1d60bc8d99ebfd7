"""``mfk210 board-files``: the CanMV script, its generated config, and (if given) the kmodel and gallery.

The config is written by this tool only: the match threshold is our evaluation's ``best_threshold``
(squared L2 between normalized embeddings) converted exactly onto the board's score scale, the
alignment template is ``preprocessing.template`` of the orientation the kmodel's record names (the
ArcFace template, or the same turned by 180 degrees for a kmodel that computes on turned crops: the
board's alignment then turns the crop, at no cost), and the kmodel is checked (v5, RAM, flash,
compiler vs runtime) exactly as for a ``.kfpkg``. Copy the output folder's files to the SD card root.
"""
import contextlib
import json
import os
import secrets
import shutil
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Optional, Union

from mobilefacenet_k210 import atomic, folder_lock, k210, preprocessing
from mobilefacenet_k210.board import gallery as board_gallery
from mobilefacenet_k210.board import kfpkg
from mobilefacenet_k210.board.score import ThresholdError, board_threshold, threshold_warnings
from mobilefacenet_k210.config import BoardConfig, recorded_gallery_mode

SCRIPT = "canmv_face_id.py"
CONFIG_NAME = "mfk210_config.json"
GALLERY_NAME = "mfk210_gallery.json"
CONFIG_FORMAT = "mfk210-board-config"


def script_source() -> str:
    """The CanMV MicroPython script shipped as package data."""
    return resources.files("mobilefacenet_k210.board").joinpath(SCRIPT).read_text(encoding="utf-8")


def board_config(kmodel_check: Dict[str, Any], threshold: Dict[str, Any], config: BoardConfig,
                 flash_address: Optional[int] = None) -> Dict[str, Any]:
    """The JSON the board script reads; every value derived from our files or ``config``."""
    info = {}
    from mobilefacenet_k210.runtime.kmodel import info_path, kmodel_info

    if info_path(kmodel_check["path"]).is_file():
        info = kmodel_info(kmodel_check["path"])
    if flash_address is None:
        model = {"path": f"{config.sd_root}/{config.kmodel_name}", "size": kmodel_check["size"]}
    else:
        model = {"flash_address": int(flash_address), "size": kmodel_check["size"]}
    output_bytes = (info.get("memory") or {}).get("output")
    embedding_size = output_bytes // 4 if output_bytes else None  # the kmodel's output is float32
    orientation = preprocessing.recorded_orientation(kmodel_check["path"])
    return {
        "format": CONFIG_FORMAT,
        "version": 1,
        "runtime": kmodel_check["runtime"],
        "runtime_nncase": kmodel_check["runtime_nncase"],
        "model": {**model, "nncase_version": kmodel_check["nncase_version"], "sha256": kmodel_check["sha256"]},
        "input_size": preprocessing.INPUT_SIZE,
        "embedding_size": embedding_size,
        "template": [[float(str(v)) for v in point] for point in preprocessing.template(orientation)],  # float32's
        preprocessing.ORIENTATION_KEY: orientation,
        "threshold": threshold,
        "gallery": f"{config.sd_root}/{GALLERY_NAME}",
        "detector": {"path": config.detector_path, "anchor": list(config.detector_anchor),
                     "threshold": config.detector_threshold, "nms": config.detector_nms},
        "landmarks": {"path": config.landmarks_path, "input_size": config.landmarks_input_size},
        "enroll_button": bool(config.enroll_button),
    }


def write_board_files(out: Union[str, Path], kmodel: Union[str, Path], eval_json: Optional[Union[str, Path]],
                      eval_set: Optional[str] = None, gallery: Optional[Union[str, Path]] = None,
                      flash_address: Optional[int] = None, config: Optional[BoardConfig] = None,
                      embedding_size: Optional[int] = None, ident_eval: Optional[Union[str, Path]] = None,
                      fpir: float = 0.01, gallery_size: Optional[int] = None) -> Dict[str, Any]:
    """Write the script, ``mfk210_config.json`` and, if given, the gallery and (unless flashed) the kmodel.

    The set is written into a hidden folder beside ``out`` and swapped in at the end, so a failure
    leaves the previous set whole, and files of an earlier set that this one lacks do not linger.

    ``embedding_size`` is needed only when neither the kmodel's compile record nor the gallery says it.
    The threshold comes from ``ident_eval`` (open-set identification: the score giving ``fpir`` for a
    gallery of ``gallery_size`` people, by default the people in ``gallery``, measured in the gallery's
    mode) when given, else from ``eval_json`` (1:1 verification); the config records which, for which
    gallery size and mode.
    Returns ``{"files": [...], "config": {...}, "warnings": [...]}``. A second writer of ``out``
    meanwhile is refused (:mod:`folder_lock`).
    """
    out = Path(out) if Path(out).name else Path(out).resolve()  # "." has no name to put a sibling beside
    with folder_lock.hold(out):  # beside ``out``: it covers the hidden folder and the swap
        return _write_board_files(out, kmodel, eval_json, eval_set, gallery, flash_address, config or BoardConfig(),
                                  embedding_size, ident_eval, fpir, gallery_size)


def _write_board_files(out: Path, kmodel: Union[str, Path], eval_json: Optional[Union[str, Path]],
                       eval_set: Optional[str], gallery: Optional[Union[str, Path]], flash_address: Optional[int],
                       config: BoardConfig, embedding_size: Optional[int], ident_eval: Optional[Union[str, Path]],
                       fpir: float, gallery_size: Optional[int]) -> Dict[str, Any]:
    """:func:`write_board_files` under ``out``'s lock."""
    people = board_gallery.load_gallery(gallery) if gallery is not None else None
    if ident_eval is None and eval_json is None:
        raise ThresholdError("no threshold source: pass --eval (`mfk210 evaluate --json`) or --ident-eval "
                             "(`mfk210 evaluate --identification --json`)")
    threshold = board_threshold(ident_eval if ident_eval is not None else eval_json, eval_set, fpir,
                                gallery_size or (len(board_gallery.person_names(people)) if people else None),
                                people["mode"] if people is not None else None, gallery, ident_eval is not None)
    check = kfpkg.check_kmodel(kmodel, flash_address if flash_address is not None else k210.FLASH_MODEL_ADDRESS,
                               config.runtime)
    cfg = board_config(check, threshold, config, flash_address)
    if people is not None:
        board_gallery.check_model(people, gallery, kmodel, check["sha256"])
        size = len(people["people"][0]["feature"])
        if cfg["embedding_size"] not in (None, size):
            raise board_gallery.GalleryError(f"{gallery}: {size}-d features but {kmodel} gives "
                                             f"{cfg['embedding_size']}-d embeddings")
        cfg["embedding_size"] = size
    if cfg["embedding_size"] is None:
        if embedding_size is None:
            raise kfpkg.KfpkgError(f"{kmodel}: its embedding size is unknown (no compile record and no "
                                   "gallery); pass --gallery or --embedding-size")
        cfg["embedding_size"] = int(embedding_size)
    if out.exists() and not out.is_dir():
        raise kfpkg.KfpkgError(f"{out}: is a file; --out must be a folder (new, or one this command wrote)")
    _check_own_folder(out, config)
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    tmp.mkdir(parents=True)
    try:
        names = [SCRIPT, CONFIG_NAME]
        atomic.write_text(tmp / SCRIPT, script_source())
        atomic.write_text(tmp / CONFIG_NAME, json.dumps(cfg, indent=1) + "\n")
        if people is not None:
            atomic.write_text(tmp / GALLERY_NAME, json.dumps(people) + "\n")  # compact: the board parses it
            names.append(GALLERY_NAME)
        if flash_address is None:
            shutil.copyfile(kmodel, tmp / config.kmodel_name)
            names.append(config.kmodel_name)
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    warnings = list(check["warnings"]) + threshold_warnings(threshold)
    return {"files": [str(out / name) for name in names], "config": cfg, "warnings": warnings}


def _check_own_folder(out: Path, config: BoardConfig) -> None:
    """Refuse an existing ``out`` that holds files this command does not write: the swap would drop them."""
    if not out.is_dir():
        return
    ours = {SCRIPT, CONFIG_NAME, GALLERY_NAME, config.kmodel_name}
    previous = out / CONFIG_NAME
    if previous.is_file():
        with contextlib.suppress(ValueError, AttributeError, TypeError, KeyError):
            ours.add(json.loads(previous.read_text(encoding="utf-8"))["model"]["path"].rsplit("/", 1)[-1])
    others = sorted(p.name for p in out.iterdir() if p.name not in ours)
    if others:
        raise kfpkg.KfpkgError(f"{out}: holds files board-files did not write ({', '.join(others[:5])}"
                               f"{', ...' if len(others) > 5 else ''}), which replacing the folder would delete; "
                               "give --out a new or empty folder")


def _swap_in(tmp: Path, out: Path) -> None:
    """Put the finished folder ``tmp`` at ``out``; the previous ``out`` stays whole until ``tmp`` is in place."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.{secrets.token_hex(4)}.old")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def describe(result: Dict[str, Any]) -> str:
    """What was written and what to do with it."""
    cfg = result["config"]
    t = cfg["threshold"]
    lines = [f"wrote {len(result['files'])} file(s); copy them to the SD card root ({cfg['gallery'].rsplit('/', 1)[0]}):"]
    lines += [f"  {f}" for f in result["files"]]
    model = cfg["model"]
    lines.append("  model: " + (model["path"] if "path" in model else
                                f"flash {model['flash_address']:#x}, {model['size']} bytes (flash it with `mfk210 flash`)"))
    where = f"{t['source']}{' [' + t['set'] + ']' if t.get('set') else ''}"
    if t.get("gallery_size"):
        lines.append(f"  threshold: score > {t['score']:.4f}  (= squared L2 distance < {t['distance']:.4f}), "
                     f"FPIR {100 * t['fpir']:g}% for {t['gallery_size']} people, gallery mode "
                     f"{recorded_gallery_mode(t.get('gallery_mode'))}, open-set identification {where}")
    else:
        lines.append(f"  threshold: score > {t['score']:.4f}  (= squared L2 distance < {t['distance']:.4f}, "
                     f"best_threshold from {where})")
    lines.append(f"  detector {cfg['detector']['path']}, landmarks {cfg['landmarks']['path']} (CanMV's examples)")
    lines.append(f"  on the board: run {SCRIPT} (or save it as /sd/main.py) on CanMV feat/kpu with kmodel v5 enabled")
    for w in result["warnings"]:
        lines.append(f"  WARNING: {w}")
    return "\n".join(lines)
