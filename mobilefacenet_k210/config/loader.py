"""The one config loader: defaults, then a YAML/JSON file, then a command's flags, then ``--set``.

Every stage takes a config dataclass of this package (:mod:`.data`, :mod:`.training`, :mod:`.deploy`,
:mod:`.evaluation`, :mod:`.demo`); the CLI maps its flags onto their fields through
:func:`load` (typed values, never re-parsed as YAML, so a path stays a path), and ``--set a.b=value``
strings are parsed as YAML. A config that comes out of :func:`from_dict` has been validated by its
own ``validate()``.
"""
import dataclasses
import json
from pathlib import Path
from typing import (Any, Callable, Dict, List, Mapping, Optional, Type, TypeVar, Union, get_args, get_origin,
                    get_type_hints)

from mobilefacenet_k210.errors import Mfk210Error

T = TypeVar("T")


class ConfigError(Mfk210Error, ValueError):
    """A configuration file or override that does not fit its dataclass."""


def check_positive(where: str, **values: float) -> None:
    """Refuse every named value that is not above zero, naming the fields."""
    bad = [k for k, v in values.items() if not v > 0]
    if bad:
        raise ConfigError(f"{where}: {', '.join(bad)} must be positive")


def check_choice(value: Any, choices: tuple, where: str) -> None:
    """Refuse ``value`` unless it is one of ``choices``, naming the field and the choices."""
    if value not in choices:
        raise ConfigError(f"{where} {value!r}: choose one of {', '.join(map(str, choices))}")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Turn parsed YAML/JSON/flag text into the type the dataclass field declares."""
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {hint.__name__}, got {value!r}")
        return from_dict(hint, value, where)
    if origin is Union:
        args = [a for a in get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if origin in (list, List):
        (item,) = get_args(hint) or (Any,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return bool(value)
    if hint in (int, float, str):
        try:
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return hint(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}") from None
    return value


def from_dict(cls: Type[T], data: Dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys (typos must not pass silently)."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; known: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    config = cls(**kwargs)
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config


def to_dict(config: Any) -> Dict[str, Any]:
    """Plain-data form of a config dataclass (for metadata, reports and resume checks)."""
    return dataclasses.asdict(config)


PACKAGED = Path(__file__).resolve().parent.parent / "configs"


def resolve(path: Union[str, Path]) -> Path:
    """The config file ``path`` names: the file itself if it exists, else the package's own copy of a
    shipped config given as ``NAME.yaml`` or ``configs/NAME.yaml`` (so `mfk210 demo` works from any folder)."""
    path = Path(path)
    if path.is_file() or path.is_absolute() or len(path.parts) > 2 or path.parts[:-1] not in ((), ("configs",)):
        return path
    packaged = PACKAGED / path.name
    return packaged if packaged.is_file() else path


def read_file(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a YAML or JSON config file into a mapping, with the file named in any error."""
    path = resolve(path)
    if not path.is_file():
        shipped = ", ".join(sorted(p.name for p in PACKAGED.glob("*.yaml")))
        raise ConfigError(f"{path}: config file not found (the package ships {shipped}, as configs/NAME)")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # the parser's own message says where
        raise ConfigError(f"{path}: cannot parse: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def _list_index(node: List[Any], part: str, item: str, where: str) -> int:
    """The index ``part`` names in list ``node``: an entry, or ``len(node)`` to append one."""
    try:
        index = int(part)
    except ValueError:
        raise ConfigError(f"override {item!r}: {where} is a list; {part!r} is not an index") from None
    n = len(node)
    if not -n <= index <= n:
        valid = f"0..{n - 1} names an entry, {n} appends one" if n else "0 appends one"
        raise ConfigError(f"override {item!r}: {where} has {n} entries, index {index} is out of range ({valid})")
    return index


def parse_value(raw: str) -> Any:
    """An override's value: YAML for numbers, booleans, null, and lists or mappings written in brackets;
    any other text verbatim, so a path keeps its ``#`` and ``: `` (YAML would cut or split it)."""
    import yaml

    text = raw.strip()
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        return raw
    if isinstance(value, str) or (isinstance(value, (dict, list)) and not text.startswith(("{", "["))):
        return raw
    if value is None and text not in ("null", "Null", "NULL", "~"):
        return raw
    return value


def apply_overrides(data: Dict[str, Any], overrides: Optional[List[str]]) -> Dict[str, Any]:
    """Apply ``key.sub=value`` strings (values by :func:`parse_value`) onto a copy of a nested mapping.

    A number names a list entry; the list's length appends one (``phases.2={head: triplet}`` or
    ``phases.2.head=triplet`` on a two-phase list adds a third phase). A missing or null mapping
    on the way is created.
    """
    data = json.loads(json.dumps(data))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE")
        key, raw = item.split("=", 1)
        value = parse_value(raw)
        parts = key.strip().split(".")
        node: Any = data
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[:depth]) or "the config"
            if isinstance(node, list):
                index = _list_index(node, part, item, where)
                if index == len(node):
                    node.append(value if last else {})
                elif last:
                    node[index] = value
                node = node[index]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                elif node.get(part) is None:
                    node[part] = {}
                node = node[part]
            else:
                raise ConfigError(f"override {item!r}: {where} is {node!r}, not a mapping or a list")
    return data


def _nested_config(hint: Any) -> Optional[type]:
    """The dataclass a field holds (directly or as ``Optional``), else ``None``."""
    if dataclasses.is_dataclass(hint):
        return hint
    if get_origin(hint) is Union:
        return next((a for a in get_args(hint) if dataclasses.is_dataclass(a)), None)
    return None


def merge(cls: type, base: Dict[str, Any], new: Mapping[str, Any]) -> Dict[str, Any]:
    """Update ``base`` (a ``to_dict`` of ``cls``) with ``new`` in place, and return it.

    A nested config (a dataclass field) is merged key by key, so a file can change one field of
    ``model`` or ``policy``; any other value is replaced whole: a list (a file's ``phases`` is the
    whole list) and a free-form mapping (``verification``, ``reduced_photos``: a file names all of
    its entries). Unknown keys are kept for :func:`from_dict` to refuse.
    """
    hints = get_type_hints(cls)
    for key, value in new.items():
        nested = _nested_config(hints.get(key))
        if nested is not None and isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge(nested, base[key], value)
        else:
            base[key] = value
    return base


def load(cls: Type[T], path: Optional[Union[str, Path]] = None, overrides: Optional[List[str]] = None,
         flags: Optional[Mapping[str, Any]] = None,
         presets: Optional[Mapping[str, Callable[[str], Any]]] = None) -> T:
    """Defaults of ``cls``, then the file at ``path`` (if any), then ``flags``, then ``overrides``.

    The defaults are spelled out first, so an override reaches what only exists as a default
    (``--set phases.1.epochs=3``); the file and ``flags`` (a command's own options, ``None`` =
    not given) are merged over them with :func:`merge`, and ``overrides`` (``--set KEY=VALUE``)
    applied last. ``presets`` maps a field to a function from a name to its config, for fields
    the file or a flag may give by name (the builder's ``policy: none``).
    """
    data = to_dict(cls())
    layers = (read_file(path) if path else {}, {k: v for k, v in (flags or {}).items() if v is not None})
    for layer in layers:
        for key, make in (presets or {}).items():
            if isinstance(layer.get(key), str):
                layer[key] = to_dict(make(layer[key]))
        merge(cls, data, layer)
    data = apply_overrides(data, overrides)
    return from_dict(cls, data, str(path) if path else cls.__name__)
