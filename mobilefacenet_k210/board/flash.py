"""Flash a ``.kfpkg`` (or a kmodel, packed on the fly) through kflash's Python API, with a progress bar.

kflash resets the board into its boot ROM's ISP mode by toggling DTR/RTS (each board wires them
differently, hence ``--board``), uploads its flash stub at 115200 baud, switches to ``baudrate`` and
writes every file of the package at its address. ``--dry-run`` checks everything that can be checked
without a board and prints the plan.
"""
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

from mobilefacenet_k210 import k210
from mobilefacenet_k210.board import kfpkg
from mobilefacenet_k210.errors import Mfk210Error


class FlashError(Mfk210Error, RuntimeError):
    """A board, port or package problem, or kflash's own failure, in one clear line."""


def available_ports() -> list:
    """Serial ports pyserial sees (device names), for error messages."""
    from serial.tools import list_ports

    return sorted(p.device for p in list_ports.comports())


def check_port(port: str) -> str:
    """Refuse a serial port that does not exist, listing the ones that do."""
    if not port:
        raise FlashError("no serial port given: pass --port (e.g. /dev/ttyUSB0 or COM3)")
    if sys.platform != "win32" and not os.path.exists(port):
        seen = available_ports()
        raise FlashError(f"serial port {port} does not exist (is the board plugged in, and do you have access "
                         f"to it?); ports seen: {', '.join(seen) if seen else 'none'}")
    return port


def plan_flash(port: str, board: str, baudrate: int = k210.KFLASH_BAUDRATE,
               package: Optional[Union[str, Path]] = None, kmodel: Optional[Union[str, Path]] = None,
               address: int = k210.FLASH_MODEL_ADDRESS, runtime: str = k210.DEFAULT_RUNTIME,
               check_serial: bool = True) -> Dict[str, Any]:
    """Check board, baud rate, package/kmodel (and the port unless ``check_serial`` is off); return the plan."""
    board_name = k210.resolve_board(board)
    if baudrate < 115200:
        raise FlashError(f"baudrate {baudrate}: kflash needs at least 115200")
    if (package is None) == (kmodel is None):
        raise FlashError("give exactly one of a .kfpkg package or a kmodel")
    if package is not None:
        plan = kfpkg.read_kfpkg(package)
        for name, compiler in plan["compilers"].items():
            check_runtime(f"{package} ({name} in it)", compiler, runtime)
            if compiler is None:
                plan["warnings"].append(f"{package}: no compile record of {name} in it; make sure it was compiled by "
                                        f"nncase {k210.runtime_nncase_version(runtime)}, the release runtime "
                                        f"'{runtime}' embeds")
        if plan.get("kmodel"):
            plan["kmodel"] = {**plan["kmodel"], "runtime": runtime,
                              "runtime_nncase": k210.runtime_nncase_version(runtime)}
    else:
        plan = kfpkg.build_plan(kmodel, None, address, runtime)
        check_runtime(str(kmodel), plan["kmodel"]["nncase_version"], runtime)
    if check_serial:
        check_port(port)
    plan.update({"port": port, "board": board_name, "baudrate": int(baudrate)})
    return plan


def check_runtime(source: str, compiler: Optional[str], runtime: str) -> None:
    """Refuse to flash a kmodel whose recorded compiler is not the nncase release ``runtime`` embeds.

    Such a kmodel loads and then fails when run (opcodes differ between releases). An unknown
    compiler (no record) passes: the caller warns about it.
    """
    embedded = k210.runtime_nncase_version(runtime)
    if compiler is None or k210.nncase_versions_match(compiler, embedded):
        return
    matching = [name for name, version in k210.RUNTIMES.items() if k210.nncase_versions_match(compiler, version)]
    raise FlashError(f"{source}: compiled by nncase {compiler}, but --runtime {runtime} embeds nncase {embedded}; "
                     "it would load and then fail when run. "
                     + (f"Pass --runtime {' or '.join(matching)}" if matching else "No known runtime matches")
                     + f", or recompile with nncase=={embedded}.*")


def describe_flash(plan: Dict[str, Any]) -> str:
    """The plan as text: where each file goes, over which port and board."""
    source = plan.get("kfpkg") or "a package built from the kmodel"
    return (f"flash {source} over {plan['port'] or '(no --port given)'} (board {plan['board']}, {plan['baudrate']} baud):\n"
            + "\n".join(line for line in kfpkg.describe(plan).splitlines() if not line.startswith("package ")))


def _progress_callback() -> Callable:
    """A kflash ``callback(file, done, total, speed)`` that drives one tqdm bar per file."""
    from tqdm import tqdm

    bars: Dict[str, Any] = {}

    def callback(name: str, done: int, total: int, speed: str) -> None:
        bar = bars.get(name)
        if bar is None:
            bar = bars[name] = tqdm(total=total, desc=f"writing {name}", unit="B", unit_scale=True)
        bar.update(done - bar.n)
        if speed:
            bar.set_postfix_str(speed)
        if done >= total:
            bar.close()

    return callback


def run_kflash(package: Union[str, Path], port: str, board: str, baudrate: int) -> None:
    """Write a ``.kfpkg`` with ``kflash.KFlash().process``; its messages (not its bar) are printed."""
    from kflash import KFlash

    def log(*args, **kwargs) -> None:
        text = " ".join(str(a) for a in args)
        if not text.strip() or text.startswith("\r") or text in (".", "_", "*", "#", "="):
            return  # kflash's own progress bar and retry dots: the tqdm bar shows progress instead
        print(text, flush=True)

    previous = KFlash.print_callback
    KFlash.print_callback = log  # KFlash.log is a static method that reads the class attribute
    try:
        KFlash().process(terminal=False, dev=port, baudrate=baudrate, board=board, file=str(package),
                         callback=_progress_callback(), noansi=True)
    except Exception as exc:  # kflash raises bare Exception with its message for every failure
        raise FlashError(f"kflash failed on {port} (board {board}): {str(exc).strip()}") from exc
    finally:
        KFlash.print_callback = previous


def flash(port: str, board: str, baudrate: int = k210.KFLASH_BAUDRATE,
          package: Optional[Union[str, Path]] = None, kmodel: Optional[Union[str, Path]] = None,
          address: int = k210.FLASH_MODEL_ADDRESS, runtime: str = k210.DEFAULT_RUNTIME,
          dry_run: bool = False) -> Dict[str, Any]:
    """Check, print and (unless ``dry_run``) write a package or a kmodel to the board; return the plan.

    A dry run does not need the board or the port to exist.
    """
    plan = plan_flash(port, board, baudrate, package, kmodel, address, runtime, check_serial=not dry_run)
    print(describe_flash(plan))
    if dry_run:
        print("dry run: nothing written")
        return plan
    if package is not None:
        run_kflash(package, port, plan["board"], plan["baudrate"])
    else:
        with tempfile.TemporaryDirectory(prefix="mfk210-flash-") as tmp:
            built = kfpkg.build_kfpkg(kmodel, Path(tmp) / (Path(kmodel).stem + ".kfpkg"), None, address, runtime)
            run_kflash(built["kfpkg"], port, plan["board"], plan["baudrate"])
    print(f"done: on the board load it with {plan['board_load']}" if plan.get("board_load") else "done")
    return plan
