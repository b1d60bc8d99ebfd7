"""What every command module of the CLI shares: the user-error class, and flags mapped onto a config."""
import argparse
import dataclasses
from typing import Any, Dict

from mobilefacenet_k210.errors import Mfk210Error


class CLIError(Mfk210Error):
    """A user error the CLI reports as one line and exit status 2."""


def config_flags(args: argparse.Namespace, config_class: type) -> Dict[str, Any]:
    """The command's own flags that name a field of ``config_class`` (``None`` = not given)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class) if hasattr(args, f.name)}


def address(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an address (e.g. 0x300000)") from None


def add_trust_model_code(p) -> None:
    """--trust-model-code, on every command that loads a Keras or TFLite file: the opt-out of model/io.py's
    refusal of files that carry code."""
    from mobilefacenet_k210.model.guard import OPT_OUT

    p.add_argument(OPT_OUT, action="store_true", default=None,
                   help="load a model file you trust even if it carries code (a Lambda or unknown layer, a SavedModel, "
                        "TensorFlow ops in a TFLite): that code runs. Without it such a file is refused")


def add_flash_target(p, note: str = "") -> None:
    """--address and --runtime, shared by kfpkg and flash: where the kmodel goes (``note`` says when), which
    runtime it must match."""
    from mobilefacenet_k210 import k210

    p.add_argument("--address", type=address, default=k210.FLASH_MODEL_ADDRESS,
                   help=f"flash address of the kmodel (default {k210.FLASH_MODEL_ADDRESS:#x}){note}")
    p.add_argument("--runtime", choices=sorted(k210.RUNTIMES), default=k210.DEFAULT_RUNTIME,
                   help="the firmware's nncase runtime the kmodel must match (default %(default)s)")
