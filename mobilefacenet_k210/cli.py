"""`mfk210`: one command line over the package. Each subcommand parses flags and calls one package
function; no logic lives here. Heavy imports (TensorFlow, nncase) happen inside the handlers so that
`mfk210 --help` is instant.
"""
import argparse
import sys
from typing import List, Optional


class CLIError(Exception):
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


# --- registry -------------------------------------------------------------------------------------
COMMANDS = [add_check]


def build_parser() -> argparse.ArgumentParser:
    """The `mfk210` parser with every subcommand registered."""
    from mobilefacenet_k210 import __version__

    parser = argparse.ArgumentParser(prog="mfk210", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"mobilefacenet_k210 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the console script and of ``python -m mobilefacenet_k210``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CLIError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"mfk210 {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
