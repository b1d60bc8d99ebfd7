"""Pack a kmodel (and optionally a firmware) into a ``.kfpkg`` that kflash writes to the right flash addresses.

kflash writes a plain ``.bin`` only at address 0, as firmware; a model at another address needs a
``.kfpkg``: a zip holding the files and ``flash-list.json``. kflash 1.1.6 reads that JSON through a
regex that quotes whatever follows ``"address": `` up to the last comma *on the same line*, then calls
``int(address, 0)``. So each address is a bare number, alone on its line and followed by a comma:
exactly what ``json.dumps(indent=4)`` writes with ``"address"`` as the first key of each entry.

Before packing, the kmodel is checked against what the board can load: kmodel v5 (nncase 1.x), less
than CanMV's RAM limit, inside the free flash area, and compiled by the nncase release the chosen
runtime embeds (a mismatch loads and then fails when run, so it is warned about loudly).
"""
import json
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from mobilefacenet_k210 import atomic, k210
from mobilefacenet_k210.errors import Mfk210Error
from mobilefacenet_k210.fileinfo import sha256_file

KFPKG_VERSION = "0.1.0"
"""The ``version`` field kflash_gui and Sipeed's packages write; kflash itself does not read it."""
FLASH_LIST = "flash-list.json"
PLAN_FILE = "mfk210-plan.json"
"""Extracted but never flashed by kflash: what was packed, for ``mfk210 flash --dry-run`` and people."""
RECORD_SUFFIX = ".json"
"""The kmodel's compile record rides in the package as ``<kmodel>.json`` (never flashed either), so that
``mfk210 flash --kfpkg`` can compare the compiler with ``--runtime``."""


class KfpkgError(Mfk210Error, ValueError):
    """A kmodel, firmware or package that cannot be flashed as asked; the message names the file and why."""


def _kmodel_facts(path: Path) -> Dict[str, Any]:
    """Version from the kmodel header and the compile record beside it (export's ``kmodel_info``)."""
    from mobilefacenet_k210.runtime.kmodel import KmodelError, info_path, kmodel_info, read_kmodel_version

    try:
        version = read_kmodel_version(path)
    except KmodelError as exc:
        raise KfpkgError(str(exc)) from None
    info = kmodel_info(path) if info_path(path).is_file() else {}
    return {"version": version, "nncase_version": info.get("nncase_version"), "memory": info.get("memory") or {}}


def check_kmodel(kmodel: Union[str, Path], address: int = k210.FLASH_MODEL_ADDRESS,
                 runtime: str = k210.DEFAULT_RUNTIME) -> Dict[str, Any]:
    """Check a kmodel for the board: v5, fits CanMV's RAM limit and the free flash; compiler vs runtime.

    Returns ``{"path", "size", "version", "nncase_version", "runtime", "runtime_nncase", "warnings"}``;
    raises :class:`KfpkgError` for anything that cannot work.
    """
    path = Path(kmodel)
    if not path.is_file():
        raise KfpkgError(f"{path}: no such kmodel")
    runtime_nncase = k210.runtime_nncase_version(runtime)
    facts = _kmodel_facts(path)
    if facts["version"] != k210.KMODEL_VERSION:
        raise KfpkgError(f"{path}: kmodel v{facts['version']}, but only kmodel v{k210.KMODEL_VERSION} (nncase 1.x) "
                         "is packaged here; v3/v4 come from nncase 0.x and load on MaixPy-v1, not with this "
                         "project's runtime")
    size = path.stat().st_size
    if size >= k210.CANMV_KMODEL_RAM_LIMIT:
        raise KfpkgError(f"{path}: {size} bytes ({size / 2**20:.2f} MiB); the firmware copies the whole kmodel "
                         f"into RAM and refuses one of {k210.CANMV_KMODEL_RAM_LIMIT // 2**20} MiB or more")
    _check_address(path, address, size)
    warnings = []
    compiler = facts["nncase_version"]
    if compiler is None:
        warnings.append(f"{path}: no compile record beside it ({path.name}.json); make sure it was "
                        f"compiled by nncase {runtime_nncase}, the release runtime '{runtime}' embeds")
    elif not k210.nncase_versions_match(compiler, runtime_nncase):
        warnings.append(f"{path}: compiled by nncase {compiler} but runtime '{runtime}' embeds nncase "
                        f"{runtime_nncase}: it will load and then fail when run (opcodes differ between "
                        f"releases). Recompile with nncase=={runtime_nncase}.* or pick the matching --runtime")
    return {"path": str(path), "size": size, "sha256": sha256_file(path), "version": facts["version"],
            "nncase_version": compiler, "runtime": runtime, "runtime_nncase": runtime_nncase,
            "memory": facts["memory"], "warnings": warnings}


def _check_address(path: Path, address: int, size: int) -> None:
    if address % k210.FLASH_SECTOR_BYTES:
        raise KfpkgError(f"{path}: flash address {address:#x} is not a multiple of the "
                         f"{k210.FLASH_SECTOR_BYTES}-byte flash sector")
    if address < k210.FLASH_MODEL_ADDRESS:
        raise KfpkgError(f"{path}: flash address {address:#x} lies inside the firmware area (below "
                         f"{k210.FLASH_MODEL_ADDRESS:#x}); the free area is {k210.FLASH_MODEL_ADDRESS:#x}-"
                         f"{k210.FLASH_END - 1:#x}")
    if address + size > k210.FLASH_END:
        raise KfpkgError(f"{path}: {size} bytes at {address:#x} end at {address + size:#x}, past the free flash "
                         f"area that ends at {k210.FLASH_END - 1:#x}")


def build_plan(kmodel: Union[str, Path], firmware: Optional[Union[str, Path]] = None,
               address: int = k210.FLASH_MODEL_ADDRESS, runtime: str = k210.DEFAULT_RUNTIME) -> Dict[str, Any]:
    """What goes where: the checked kmodel at ``address`` and, if given, the firmware at 0."""
    info = check_kmodel(kmodel, address, runtime)
    files: List[Dict[str, Any]] = []
    if firmware is not None:
        fw = Path(firmware)
        if not fw.is_file():
            raise KfpkgError(f"{fw}: no such firmware file")
        with fw.open("rb") as f:
            head = f.read(4)
        if head.startswith(b"PK") or head.startswith(b"\x7fELF"):
            raise KfpkgError(f"{fw}: a zip/ELF file, not a raw firmware .bin (use the .bin the build writes)")
        fw_size = fw.stat().st_size
        fw_end = fw_size + k210.KFPKG_FIRMWARE_HEADER_BYTES
        if fw_end > address:
            raise KfpkgError(f"{fw}: {fw_size} bytes (+{k210.KFPKG_FIRMWARE_HEADER_BYTES} header) end at "
                             f"{fw_end:#x}, over the kmodel at {address:#x}")
        files.append({"role": "firmware", "bin": fw.name, "source": str(fw), "address": 0, "size": fw_size,
                      "end": fw_end, "sha256Prefix": True, "sha256": sha256_file(fw)})
    name = Path(kmodel).name
    if files and files[0]["bin"] == name:
        raise KfpkgError(f"{kmodel}: the firmware and the kmodel have the same file name {name!r}")
    files.append({"role": "kmodel", "bin": name, "source": str(kmodel), "address": address,
                  "size": info["size"], "end": address + info["size"], "sha256Prefix": False,
                  "sha256": info["sha256"]})
    return {"kfpkg": None, "kmodel": info, "files": files, "warnings": list(info["warnings"]),
            "board_load": f"kpu.load({address:#x}, size={info['size']})"}


def flash_list_json(files: List[Dict[str, Any]]) -> str:
    """``flash-list.json`` in the exact layout kflash's address regex needs (see the module docstring)."""
    entries = [{"address": int(f["address"]), "bin": f["bin"], "sha256Prefix": bool(f["sha256Prefix"])}
               for f in files]
    return json.dumps({"version": KFPKG_VERSION, "files": entries}, indent=4) + "\n"


def build_kfpkg(kmodel: Union[str, Path], out: Union[str, Path], firmware: Optional[Union[str, Path]] = None,
                address: int = k210.FLASH_MODEL_ADDRESS, runtime: str = k210.DEFAULT_RUNTIME) -> Dict[str, Any]:
    """Check and pack ``kmodel`` (at ``address``) and ``firmware`` (at 0) into ``out``; return the plan.

    The zip also carries ``mfk210-plan.json`` (the plan, with the kmodel's recorded compiler), which
    kflash extracts but does not flash. Written atomically.
    """
    out = Path(out)
    if out.suffix != ".kfpkg":
        raise KfpkgError(f"{out}: kflash recognizes a package only by the .kfpkg extension")
    plan = build_plan(kmodel, firmware, address, runtime)
    plan["kfpkg"] = str(out)
    with atomic.atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in plan["files"]:
            zf.write(f["source"], arcname=f["bin"])
            record = _record_path(Path(f["source"]))
            if f["role"] == "kmodel" and record.is_file():
                zf.write(record, arcname=f["bin"] + RECORD_SUFFIX)
        zf.writestr(FLASH_LIST, flash_list_json(plan["files"]))
        zf.writestr(PLAN_FILE, json.dumps(plan, indent=2) + "\n")
    return plan


def _record_path(kmodel: Path) -> Path:
    """The compile record export writes beside a kmodel: ``<name>.kmodel.json``."""
    return kmodel.with_name(kmodel.name + RECORD_SUFFIX)


def _json_member(zf: zipfile.ZipFile, path: Path, name: str) -> Any:
    """A JSON member of the package, parsed; broken JSON is a :class:`KfpkgError` naming package and member."""
    try:
        return json.loads(zf.read(name))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KfpkgError(f"{path}: its {name} is not valid JSON ({exc}); repack it with `mfk210 kfpkg`") from None


def _listed_files(path: Path, listing: Any) -> List[Dict[str, Any]]:
    """The entries of ``flash-list.json``, refused unless it is an object whose ``files`` is a list of objects."""
    if not isinstance(listing, dict) or not isinstance(listing.get("files"), list):
        raise KfpkgError(f"{path}: its {FLASH_LIST} is not an object with a \"files\" list (found "
                         f"{type(listing).__name__}); repack it with `mfk210 kfpkg`")
    for entry in listing["files"]:
        if not isinstance(entry, dict):
            raise KfpkgError(f"{path}: its {FLASH_LIST} lists {entry!r}, not an object with \"address\" and "
                             "\"bin\"; repack it with `mfk210 kfpkg`")
    return listing["files"]


def read_kfpkg(path: Union[str, Path]) -> Dict[str, Any]:
    """The plan inside a ``.kfpkg`` (files, addresses, sizes), checked the way kflash will read it."""
    path = Path(path)
    if not path.is_file():
        raise KfpkgError(f"{path}: no such package")
    if path.suffix != ".kfpkg":
        raise KfpkgError(f"{path}: kflash treats only files ending in .kfpkg as packages")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if FLASH_LIST not in names:
                raise KfpkgError(f"{path}: no {FLASH_LIST} at the top of the zip")
            entries = _listed_files(path, _json_member(zf, path, FLASH_LIST))
            stored = _json_member(zf, path, PLAN_FILE) if PLAN_FILE in names else {}
            stored = stored if isinstance(stored, dict) else {}
            records = {}
            files = []
            for entry in entries:
                if not isinstance(entry.get("address"), int):
                    raise KfpkgError(f"{path}: address {entry.get('address')!r} of {entry.get('bin')!r} is not a "
                                     "number; kflash cannot parse it")
                if not isinstance(entry.get("bin"), str) or entry["bin"] not in names:
                    raise KfpkgError(f"{path}: {FLASH_LIST} lists {entry.get('bin')!r}, which the zip lacks")
                size = zf.getinfo(entry["bin"]).file_size
                files.append({"bin": entry["bin"], "address": entry["address"], "size": size,
                              "end": entry["address"] + size, "sha256Prefix": bool(entry.get("sha256Prefix"))})
                if entry["bin"] + RECORD_SUFFIX in names:
                    records[entry["bin"]] = _json_member(zf, path, entry["bin"] + RECORD_SUFFIX)
    except zipfile.BadZipFile as exc:
        raise KfpkgError(f"{path}: not a valid .kfpkg ({exc})") from None
    if not files:
        raise KfpkgError(f"{path}: {FLASH_LIST} lists no files")
    warnings = []
    for f in files:
        if f["bin"].endswith(".kmodel"):
            version = _header_version(_member_head(path, f["bin"]))
            if version != k210.KMODEL_VERSION:
                warnings.append(f"{path}: {f['bin']} is kmodel v{version}, not the v{k210.KMODEL_VERSION} this "
                                "project's runtimes expect")
    return {"kfpkg": str(path), "files": files, "warnings": warnings, "kmodel": stored.get("kmodel"),
            "board_load": stored.get("board_load"), "compilers": _compilers(files, records, stored)}


def _compilers(files: List[Dict[str, Any]], records: Dict[str, Any], stored: Dict[str, Any]) -> Dict[str, Any]:
    """``{kmodel member: nncase version or None}`` from the packed compile records (else the packed plan)."""
    packed = (stored.get("kmodel") or {}).get("nncase_version") if isinstance(stored.get("kmodel"), dict) else None
    found = {}
    for f in files:
        if f["bin"].endswith(".kmodel"):
            record = records.get(f["bin"])
            version = record.get("nncase_version") if isinstance(record, dict) else None
            found[f["bin"]] = version or packed
    return found


def _member_head(path: Path, name: str, size: int = 8) -> bytes:
    """The first ``size`` bytes of member ``name`` of the zip at ``path``."""
    with zipfile.ZipFile(path) as zf, zf.open(name) as f:
        return f.read(size)


def _header_version(head: bytes) -> Optional[int]:
    from mobilefacenet_k210.runtime.kmodel import KmodelError, read_kmodel_version

    try:
        return read_kmodel_version(head)
    except KmodelError:
        return None


def describe(plan: Dict[str, Any]) -> str:
    """Human-readable 'what goes where' for a plan from :func:`build_plan`/:func:`read_kfpkg`."""
    lines = []
    if plan.get("kfpkg"):
        lines.append(f"package {plan['kfpkg']}:")
    for f in plan["files"]:
        lines.append(f"  {f['address']:#010x}-{f['end'] - 1:#010x}  {f['bin']}  ({f['size']} bytes"
                     + (", with kflash's sha256 header)" if f["sha256Prefix"] else ")"))
    info = plan.get("kmodel")
    if info:
        lines.append(f"  kmodel v{info['version']}, compiled by nncase {info.get('nncase_version') or '(unknown)'}; "
                     f"runtime {info['runtime']} embeds nncase {info['runtime_nncase']}")
        lines.append(f"  RAM: the firmware copies the {info['size']}-byte kmodel into RAM (limit "
                     f"{k210.CANMV_KMODEL_RAM_LIMIT} bytes)"
                     + (f"; nncase's data pool adds {info['memory']['data']} bytes"
                        if info.get("memory", {}).get("data") else ""))
    if plan.get("board_load"):
        lines.append(f"  on the board: {plan['board_load']}")
    for w in plan.get("warnings", []):
        lines.append(f"  WARNING: {w}")
    return "\n".join(lines)
