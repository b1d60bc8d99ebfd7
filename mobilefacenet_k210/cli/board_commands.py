"""Commands for the board: kfpkg, flash, board-files, enroll, identify."""
import sys

from mobilefacenet_k210 import config as cfg
from mobilefacenet_k210.cli.common import add_flash_target, add_trust_model_code, address


# --- board: kfpkg, flash, board-files, enroll, identify ---------------------------------------------
def add_kfpkg(sub) -> None:
    p = sub.add_parser("kfpkg", help="pack a kmodel (and optionally a firmware) into a .kfpkg for kflash",
                       description="Check the kmodel for the board (kmodel v5, under CanMV's RAM limit, inside the "
                                   "free flash, compiled by the nncase release the runtime embeds), pack it at "
                                   "--address (and --firmware at 0) into a .kfpkg and print what goes where.")
    p.add_argument("--kmodel", required=True, help="the .kmodel (its compile record <name>.kmodel.json beside it)")
    p.add_argument("--out", required=True, metavar="PKG.kfpkg", help="package to write")
    p.add_argument("--firmware", metavar="F.bin", help="also flash this firmware .bin at address 0")
    add_flash_target(p)
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
    add_flash_target(p, "; with --kmodel")
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
                                   "score scale, the alignment template (ArcFace's, turned by 180 degrees for a "
                                   "kmodel that computes on turned crops), detector/landmark settings, the kmodel "
                                   "(on the SD card, or in flash with --flash-address) and the gallery.")
    p.add_argument("--out", required=True, metavar="DIR", help="folder whose files go to the SD card root")
    p.add_argument("--kmodel", required=True, help="our .kmodel (checked as for `mfk210 kfpkg`)")
    p.add_argument("--eval", metavar="EVAL.json", dest="eval_json",
                   help="`mfk210 evaluate --json` output: its best_threshold becomes the board's threshold")
    p.add_argument("--ident-eval", metavar="IDENT.json", help="`mfk210 evaluate --identification --json` output: "
                   "the threshold giving --fpir for the gallery's size (used instead of --eval)")
    _add_open_set_threshold(p, "--ident-eval")
    p.add_argument("--gallery", metavar="GALLERY.json", help="gallery from `mfk210 enroll` (else the board "
                                                             "starts empty and enrolls with its button)")
    p.add_argument("--flash-address", type=address, help="load the kmodel from flash here instead of the SD card")
    p.add_argument("--embedding-size", type=int, help="only if neither compile record nor gallery gives it")
    p.add_argument("--config", metavar="FILE", help="YAML/JSON file with BoardConfig fields")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a BoardConfig field")
    p.set_defaults(handler=run_board_files)


def _add_open_set_threshold(p, source: str) -> None:
    """The flags that pick the open-set threshold out of an identification result (board-files, identify)."""
    p.add_argument("--fpir", type=float, default=0.01, help=f"{source} with an open-set result: strangers named "
                                                            "at most this often (default %(default)s)")
    p.add_argument("--gallery-size", type=int, help=f"{source} with an open-set result: people enrolled "
                                                    "(default: those in --gallery)")
    p.add_argument("--eval-set", help="which result (or model) in the evaluation file when it holds several")


def run_board_files(args) -> int:
    from mobilefacenet_k210.board import sd_card

    result = sd_card.write_board_files(args.out, args.kmodel, args.eval_json, args.eval_set, args.gallery,
                                       args.flash_address, cfg.load(cfg.BoardConfig, args.config, args.set),
                                       args.embedding_size, args.ident_eval, args.fpir, args.gallery_size)
    print(sd_card.describe(result))
    return 0


def add_enroll(sub) -> None:
    p = sub.add_parser("enroll", help="make a gallery (one folder per person) the board and `identify` use",
                       description="Align each photo (MTCNN, or none with --aligned), embed it with a Keras "
                                   "model, TFLite or kmodel (nncase simulator), and store each photo's normalized "
                                   "embedding under the person's name (--gallery-mode max: the board scores a "
                                   "person by its best entry) or per person their normalized mean (mean).")
    p.add_argument("gallery_dir", metavar="GALLERY_DIR", help="one sub-folder of photos per person")
    p.add_argument("--model", required=True, help="run folder, .keras/.h5, .tflite or .kmodel")
    p.add_argument("--out", required=True, metavar="GALLERY.json")
    p.add_argument("--aligned", action="store_true", help="photos are already aligned 112x112 crops")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--gallery-mode", metavar="|".join(cfg.GALLERY_MODES), default=cfg.DEFAULT_GALLERY_MODE,
                   help="one entry per photo (max) or per person (mean); as `evaluate --identification "
                        "--gallery-mode` measured it (default %(default)s)")
    add_trust_model_code(p)
    p.set_defaults(handler=run_enroll)


def run_enroll(args) -> int:
    from mobilefacenet_k210.board.gallery import enroll, person_names

    gallery = enroll(args.gallery_dir, args.model, args.out, args.aligned, args.batch_size, mode=args.gallery_mode,
                     trust_model_code=bool(args.trust_model_code))
    for name in person_names(gallery):
        print(f"{name}: {sum(p['photos'] for p in gallery['people'] if p['name'] == name)} photo(s)")
    for reason in gallery["skipped"]:
        print(f"skipped {reason}", file=sys.stderr)
    print(f"wrote {args.out}: {len(person_names(gallery))} people in {len(gallery['people'])} entries "
          f"(gallery mode {gallery['mode']}), {gallery['embedding_size']}-d features")
    return 0


def add_identify(sub) -> None:
    p = sub.add_parser("identify", help="name the faces in photos against a gallery, as the board would",
                       description="Score each photo against the gallery with the board's (0.5 + 0.5*cos)*100 "
                                   "and our evaluation's threshold (converted to that scale).")
    p.add_argument("photos", nargs="+", metavar="PHOTO")
    p.add_argument("--gallery", required=True, metavar="GALLERY.json")
    p.add_argument("--model", required=True, help="run folder, .keras/.h5, .tflite or .kmodel")
    p.add_argument("--threshold-from", metavar="EVAL.json",
                   help="`mfk210 evaluate --json` output (its best threshold) or `mfk210 evaluate --identification "
                        "--json` output (the open-set threshold for --fpir and the gallery's size, as board-files "
                        "puts it on the board)")
    _add_open_set_threshold(p, "--threshold-from")
    p.add_argument("--aligned", action="store_true", help="photos are already aligned 112x112 crops")
    p.add_argument("--batch-size", type=int, default=32)
    add_trust_model_code(p)
    p.set_defaults(handler=run_identify)


def run_identify(args) -> int:
    from mobilefacenet_k210.board.gallery import format_result, identify, load_gallery, person_names
    from mobilefacenet_k210.board.score import board_threshold, threshold_warnings

    threshold = None
    if args.threshold_from:
        people = load_gallery(args.gallery)
        found = board_threshold(args.threshold_from, args.eval_set, args.fpir,
                                args.gallery_size or len(person_names(people)), people["mode"], args.gallery)
        for warning in threshold_warnings(found):
            print(f"warning: {warning}", file=sys.stderr)
        threshold = found["score"]
    for result in identify(args.photos, args.gallery, args.model, threshold, args.aligned, args.batch_size,
                           trust_model_code=bool(args.trust_model_code)):
        print(format_result(result, threshold))
    return 0
