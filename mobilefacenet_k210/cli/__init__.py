"""`mfk210`: one command line over the package. Each subcommand parses flags and calls one package
function; no logic lives here. The commands are grouped by stage in this package's modules. Heavy imports (TensorFlow, nncase) happen inside the handlers so that
`mfk210 --help` is instant.
"""
import argparse
import os
import sys
from typing import List, Optional

from mobilefacenet_k210 import folder_lock
from mobilefacenet_k210.cli import board_commands, data_commands, model_commands, run_commands
from mobilefacenet_k210.cli.common import CLIError  # noqa: F401  (raised by the commands; part of the CLI's API)
from mobilefacenet_k210.errors import Mfk210Error


# --- registry -------------------------------------------------------------------------------------
COMMANDS = [model_commands.add_check, model_commands.add_import_model, data_commands.add_build_tfrecords,
            data_commands.add_lst, data_commands.add_merge, data_commands.add_inspect, data_commands.add_add_teacher,
            model_commands.add_train, model_commands.add_evaluate, model_commands.add_export, board_commands.add_kfpkg,
            board_commands.add_flash, board_commands.add_board_files, board_commands.add_enroll, board_commands.add_identify,
            run_commands.add_demo, run_commands.add_pretrained, run_commands.add_bench]
# The commands that write a folder (or a gallery file) and so take its lock (folder_lock): they get --break-lock.
WRITERS = ("import-model", "build-tfrecords", "merge", "add-teacher", "train", "export", "enroll", "board-files", "demo",
           "pretrained", "bench")


def build_parser() -> argparse.ArgumentParser:
    """The `mfk210` parser with every subcommand registered."""
    from mobilefacenet_k210 import __version__

    parser = argparse.ArgumentParser(prog="mfk210", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"mobilefacenet_k210 {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of any error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    for name in WRITERS:
        sub.choices[name].add_argument(
            "--break-lock", action="store_true",
            help="take over the output's lock even if it names a run on another machine (a shared file system); "
                 "only when that run is over")
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
        with folder_lock.breaking_locks(getattr(args, "break_lock", False)):
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
