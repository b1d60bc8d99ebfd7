"""Commands on photos and shards: build-tfrecords, lst, merge, inspect, add-teacher."""

from mobilefacenet_k210 import config as cfg
from mobilefacenet_k210.cli.common import CLIError, add_trust_model_code


# --- data: build-tfrecords, lst, merge, inspect -----------------------------------------------------
def add_build_tfrecords(sub) -> None:
    p = sub.add_parser("build-tfrecords", help="raw photos -> aligned, balanced, sharded TFRecords",
                       description="Decode, detect (MTCNN), align to 112x112, balance per identity, split and "
                                   "shard. RAW is a folder RAW/<identity>/<photo>, an InsightFace .lst file, or "
                                   "an InsightFace RecordIO set (a folder holding train.rec + train.idx, or the "
                                   ".rec): its aligned crops are read without mxnet, one identity per class, "
                                   "named PREFIX_<class> (--set identity_prefix=ms1m; default: the folder's "
                                   "name). Resumable: rerun the same command after a kill to continue.")
    p.add_argument("raw", help="folder of identity folders, a .lst file, or an InsightFace RecordIO set")
    p.add_argument("out", nargs="?", default="tfrecords", help="output folder (default: tfrecords)")
    p.add_argument("--workers", type=int, help="local worker processes (default: one per core, or this process alone for a few hundred photos)")
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
    add_trust_model_code(p)
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
    import sys

    from mobilefacenet_k210.data import builder

    cfg = builder.load_build_config(args.config, args.set, workers=args.workers, runner=args.runner,
                                    policy=args.policy or ("none" if args.unlabeled else None),
                                    aligned=args.aligned, val_fraction=args.val_fraction,
                                    seed=args.seed, jpeg_quality=args.jpeg_quality,
                                    min_face_size=args.min_face_size, detector=args.detector,
                                    beam_options=args.beam_options, unlabeled=args.unlabeled)
    teacher = None
    if args.teacher:
        from mobilefacenet_k210.teacher.loader import load_teacher

        teacher = load_teacher(args.teacher, bool(args.trust_model_code))
    summary = builder.build(args.raw, args.out, cfg, progress=not args.quiet, overwrite=args.overwrite,
                            teacher=teacher)
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    for note in summary.get("source", {}).get("notes", []):
        print(f"note: {note}", file=sys.stderr)
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
    from mobilefacenet_k210.data.inspect_shards import format_report, inspect_shards

    report = inspect_shards(args.shards_dir, args.out, args.identities, args.per_identity, args.seed, args.verify)
    print(format_report(report))
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
    add_trust_model_code(p)
    p.set_defaults(handler=run_add_teacher)


def run_add_teacher(args) -> int:
    from mobilefacenet_k210.teacher.shards import add_teacher

    meta = add_teacher(args.shards_dir, args.teacher, args.out, args.batch_size, progress=not args.quiet,
                       trust_model_code=bool(args.trust_model_code))
    t = meta["teacher"]
    print(f"{args.out}: {sum(s['records'] for s in meta['shards'])} records with {t['name']} "
          f"({t['dim']}-d, sha256 {t['sha256'][:12]}) embeddings")
    return 0
