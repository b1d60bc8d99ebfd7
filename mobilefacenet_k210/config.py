"""Configuration dataclasses with defaults, loadable from YAML/JSON files, overridable from flags.

Every stage takes one of these; the CLI maps flags onto their fields (``--set a.b=value`` or the
stage's own flags), so a run is fully described by a file plus its overrides.
"""
import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Type, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or override that does not fit its dataclass."""


@dataclasses.dataclass
class ModelConfig:
    """MobileFaceNet shape. Defaults give the paper's ~0.99M parameters and ~221M multiply-adds."""

    input_size: int = 112
    width_multiplier: float = 1.0
    embedding_size: int = 128
    activation: str = "relu"  # relu or relu6: PReLU needs more RAM than the K210 has
    bn_momentum: float = 0.9  # Keras' 0.99 leaves inference statistics untrained on small data
    bn_epsilon: float = 1e-3
    embedding_head: str = "gdc_linear"  # see model.mobilefacenet.EMBEDDING_HEADS


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
    return cls(**kwargs)


def to_dict(config: Any) -> Dict[str, Any]:
    """Plain-data form of a config dataclass (for metadata, reports and resume checks)."""
    return dataclasses.asdict(config)


def read_file(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a YAML or JSON config file into a mapping, with the file named in any error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
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


def apply_overrides(data: Dict[str, Any], overrides: Optional[List[str]]) -> Dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML scalars) onto a nested mapping."""
    import yaml

    data = json.loads(json.dumps(data))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if isinstance(node, list):
                node = node[int(part)]
            else:
                node = node.setdefault(part, {})
        last = parts[-1]
        value = yaml.safe_load(raw) if raw != "" else ""
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return data


def load(cls: Type[T], path: Optional[Union[str, Path]] = None, overrides: Optional[List[str]] = None) -> T:
    """Defaults of ``cls``, updated by the file at ``path`` (if any), then by ``overrides``."""
    data = read_file(path) if path else {}
    data = apply_overrides(data, overrides)
    return from_dict(cls, data, str(path) if path else cls.__name__)
