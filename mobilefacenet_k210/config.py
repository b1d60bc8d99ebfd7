"""Configuration dataclasses with defaults, loadable from YAML/JSON files, overridable from flags.

Every stage takes one of these; the CLI maps flags onto their fields (``--set a.b=value`` or the
stage's own flags), so a run is fully described by a file plus its overrides.
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


@dataclasses.dataclass
class ModelConfig:
    """MobileFaceNet shape. Defaults give the paper's ~0.99M parameters and ~221M multiply-adds."""

    input_size: int = 112
    width_multiplier: float = 1.0
    embedding_size: int = 128
    activation: str = "relu"  # relu or relu6: PReLU needs more RAM than the K210 has
    bn_momentum: float = 0.9  # Keras' 0.99 leaves inference statistics untrained on small data
    bn_epsilon: float = 1e-3
    embedding_head: str = "gdc_linear_kpu"  # see model.mobilefacenet.EMBEDDING_HEADS (same weights as the paper's gdc_linear)


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


def apply_overrides(data: Dict[str, Any], overrides: Optional[List[str]]) -> Dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML) onto a copy of a nested mapping.

    A number names a list entry; the list's length appends one (``phases.2={head: triplet}`` or
    ``phases.2.head=triplet`` on a two-phase list adds a third phase). A missing or null mapping
    on the way is created.
    """
    import yaml

    data = json.loads(json.dumps(data))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
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


HEADS = ("softmax", "arcface", "cosface", "combined", "triplet")


@dataclasses.dataclass
class PipelineConfig:
    """The tf.data input of training (see ``data/pipeline.py``).

    Shards are listed from ``metadata.json``, their order reshuffled every epoch, read
    ``cycle_length`` at a time by ``interleave`` and mixed again through a ``shuffle_buffer``.
    Augmentation at read time: horizontal flip, and optionally a random shift (``crop_pad``
    pixels of padding, then a random crop back to size), rotation and zoom about the centre
    (faces in the demo photos turn and tilt), brightness and contrast jitter.
    """

    shuffle_buffer: int = 16384
    cycle_length: int = 16  # shards read at once by interleave
    block_length: int = 1  # consecutive records taken from one shard before moving on
    flip: bool = True
    crop_pad: int = 0
    rotate_degrees: float = 0.0  # random in-plane rotation within +-rotate_degrees
    zoom: float = 0.0  # random scale factor within [1 - zoom, 1 + zoom]
    brightness: float = 0.0  # max delta, in normalized units (1.0 = 128 grey levels)
    contrast: float = 0.0  # factor drawn from [1 - contrast, 1 + contrast]
    validation: bool = True  # evaluate the head on the "val" split every epoch when it has records
    val_batch_size: int = 256


@dataclasses.dataclass
class PhaseConfig:
    """One ``model.fit`` of a run: a head (loss), an optimizer and a learning-rate schedule.

    ``lr_steps`` are epochs (fractions allowed) at which the learning rate is multiplied by
    ``lr_decay``; ``warmup_epochs`` ramps it linearly from 0. ``scale``/``margin`` configure
    ArcFace (s=64, m=0.5) and CosFace (m=0.35); ``m1, m2, m3`` the combined margin
    cos(m1*theta + m2) - m3. A triplet phase draws P x K batches (``identities_per_batch`` x
    ``images_per_identity``; its batch size is their product) and uses ``triplet_margin``.
    ``init``: ``previous`` starts the backbone from the phase before, ``scratch`` from random.
    ``head_init``: ``random`` class centres, or ``imprint``: each centre starts at its class's mean
    normalized embedding under the backbone the phase starts from (weight imprinting, Qi et al.
    2018), so that a margin head after a softmax phase refines what that phase learned instead of
    first tearing it apart to fit random centres (margin heads only; one unaugmented pass over the
    train split).
    """

    head: str = "softmax"
    epochs: int = 1
    batch_size: int = 512
    optimizer: str = "sgd"  # sgd (with momentum) or adam
    momentum: float = 0.9
    lr: float = 0.1
    lr_steps: List[float] = dataclasses.field(default_factory=list)
    lr_decay: float = 0.1
    warmup_epochs: float = 0.0
    weight_decay: float = 5e-4
    scale: float = 64.0
    margin: float = 0.5
    m1: float = 1.0
    m2: float = 0.3
    m3: float = 0.2
    triplet_margin: float = 0.2
    identities_per_batch: int = 32
    images_per_identity: int = 4
    init: str = "previous"
    head_init: str = "random"


def _default_phases() -> List[PhaseConfig]:
    return [PhaseConfig(head="softmax", epochs=10), PhaseConfig(head="arcface", epochs=20, lr_steps=[10, 15])]


@dataclasses.dataclass
class TrainConfig:
    """A training run: the model, the input pipeline and the list of phases run one after the other.

    ``verification`` maps a name to a ``.bin`` pairs file; the mean accuracy over them picks the
    best checkpoint every epoch (without any, the head's accuracy on the "val" split does, best
    within the last phase). ``backup_every_steps`` is how often the exact-resume state is saved.
    ``strategy``: default, mirrored (all local GPUs/devices) or multiworker (``TF_CONFIG``).
    """

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    pipeline: PipelineConfig = dataclasses.field(default_factory=PipelineConfig)
    phases: List[PhaseConfig] = dataclasses.field(default_factory=_default_phases)
    seed: int = 0
    verification: Dict[str, str] = dataclasses.field(default_factory=dict)
    verification_batch_size: int = 64
    verification_flip: bool = True
    verification_every: int = 1  # epochs between verifications (the last epoch of a phase always)
    strategy: str = "default"
    mixed_precision: bool = False
    backup_every_steps: int = 100
    steps_per_epoch: int = 0  # 0: train records // batch size
    deterministic_ops: bool = False  # tf.config.experimental.enable_op_determinism (bit-exact reruns, slower)


@dataclasses.dataclass
class PolicyRule:
    """One branch of the per-identity policy: applies to identities with more than ``more_than`` faces.

    ``action``: ``sample`` (keep a seeded random ``sample`` of the faces), ``keep`` (all) or ``drop``
    (the whole identity). ``augment``: copies added per kept face, by tag (``opening``, ``gaussian``,
    ``saltpepper``), each its own record tagged with the augmentation that made it.
    """

    more_than: int = -1
    action: str = "keep"
    sample: int = 0
    augment: List[str] = dataclasses.field(default_factory=list)


def _seed_rules() -> List[PolicyRule]:
    return [
        PolicyRule(more_than=350, action="sample", sample=350),
        PolicyRule(more_than=200, action="keep"),
        PolicyRule(more_than=90, action="keep", augment=["opening"]),
        PolicyRule(more_than=30, action="keep", augment=["opening", "gaussian", "saltpepper"]),
        PolicyRule(more_than=-1, action="drop"),
    ]


@dataclasses.dataclass
class PolicyConfig:
    """Per-identity balancing, counted on aligned faces; rules are tried in order, the first whose
    ``more_than`` is below the count applies. Defaults are the seed's (MobileFaceNet-K210 notes):
    n>350 random 350 | 200<n<=350 keep | 90<n<=200 +opening (2x) | 30<n<=90 +opening+gaussian+
    salt-and-pepper (4x) | n<=30 drop. ``name`` ``none`` keeps every face, no augmentation."""

    name: str = "seed"
    rules: List[PolicyRule] = dataclasses.field(default_factory=_seed_rules)
    opening_kernel: int = 3  # cv2.morphologyEx MORPH_OPEN, elliptical kernel of this side
    gaussian_var: float = 0.005  # skimage.util.random_noise mode="gaussian" variance on 0..1 pixels
    saltpepper_amount: float = 0.01  # skimage.util.random_noise mode="s&p" fraction of pixels


@dataclasses.dataclass
class BuildConfig:
    """The dataset builder (``mfk210 build-tfrecords``): detection, policy, split, shards, runner."""

    runner: str = "local"  # local (processes) or beam (Apache Beam pipeline)
    workers: int = 0  # local runner processes; 0 = CPU count
    aligned: bool = False  # input is already 112x112 aligned crops: no detection
    val_fraction: float = 0.005  # per identity, by source photo (augmented copies follow their original)
    seed: int = 0  # policy sampling, augmentation noise, split and shard order
    jpeg_quality: int = 95
    min_face_size: int = 20  # faces smaller than this (box side, photo pixels) are rejected
    select: str = "largest"  # largest | center | confidence
    detect_batch_size: int = 16  # photos per MTCNN call
    detect_max_side: int = 1024  # larger photos are detected on a downscaled copy
    detect_pad_multiple: int = 32  # photos padded to a multiple of this to share batches
    records_per_shard: int = 10000
    keep_work: bool = False  # keep OUT_DIR/.work (the resumable per-identity cache) after success
    beam_options: List[str] = dataclasses.field(default_factory=list)  # Beam pipeline flags
    policy: PolicyConfig = dataclasses.field(default_factory=PolicyConfig)


@dataclasses.dataclass
class ExportConfig:
    """`mfk210 export`: how the Keras model becomes TFLite and a K210 kmodel, and how parity is measured.

    ``calibrate_method`` is nncase's PTQ range method ('l2' or 'no_clip'; 'kld' measured poor);
    calibration faces are drawn (seeded) from the calibration folder/shards, held-out faces for
    the parity report from ``--holdout``, the shards' val split, or the rest of the folder.
    ``use_mse_quant_w`` makes nncase choose weight ranges by least squared error (not min/max).
    ``quantize: false`` compiles a float kmodel (parity checks only: too big for the board).
    """

    calibrate_method: str = "l2"
    calibration_samples: int = 100
    holdout_samples: int = 100
    quantize: bool = True
    w_quant_type: str = "uint8"
    use_mse_quant_w: bool = True  # measured: cosine mean/min 0.9881/0.9705 -> 0.9916/0.9821 (ORL hold-out)
    int8_tflite: bool = True
    keep_ir_dump: bool = False
    compile_timeout_s: int = 1800
    seed: int = 0


@dataclasses.dataclass
class EvalConfig:
    """`mfk210 evaluate`: which models, on which verification sets, and where the report goes.

    Sets: InsightFace ``bins``, a ``pairs`` file (paths relative to ``root``), an identity-per-folder
    ``folder`` (at most ``max_positive_pairs`` same-person pairs and as many others, drawn with
    ``seed``), or precomputed ``embeddings`` + ``issame`` .npy files. ``compare`` names two models
    whose accuracies, drop and embedding cosine agreement are reported. ``flip`` sums each crop's
    embedding with its mirror's (InsightFace's test-time flip). ``out`` receives the PNGs and the
    Markdown table; ``json`` the full results.
    """

    models: List[str] = dataclasses.field(default_factory=list)
    bins: List[str] = dataclasses.field(default_factory=list)
    pairs: Optional[str] = None
    root: Optional[str] = None
    folder: Optional[str] = None
    aligned: bool = False
    embeddings: Optional[str] = None
    issame: Optional[str] = None
    compare: List[str] = dataclasses.field(default_factory=list)
    flip: bool = False
    batch_size: int = 64
    nfolds: int = 10
    max_positive_pairs: int = 3000
    seed: int = 0
    json: Optional[str] = None
    out: Optional[str] = None
    save_bin: Optional[str] = None


def _canmv_face_detector_anchors() -> List[float]:
    return [0.1075, 0.126875, 0.126875, 0.175, 0.1465625, 0.2246875, 0.1953125, 0.25375, 0.2440625, 0.351875,
            0.341875, 0.4721875, 0.5078125, 0.6696875, 0.8984375, 1.099687, 2.129062, 2.425937]


@dataclasses.dataclass
class BoardConfig:
    """`mfk210 board-files`: what the CanMV script needs besides our kmodel and threshold.

    The detector and landmark models are CanMV's own examples (YOLOv2 ``face_detect_320x240.kmodel``
    with these 9 anchors, run on the 320x240 camera frame, and ``ld5.kmodel``, 5 landmarks from a
    128x128 crop); the paths are where the user copies them on the SD card. ``kmodel_name`` is the
    name our kmodel gets on the SD card (unless it is flashed). ``runtime`` is the firmware's nncase
    runtime (see ``k210.RUNTIMES``).
    """

    sd_root: str = "/sd"
    kmodel_name: str = "mfk210.kmodel"
    detector_path: str = "/sd/KPU/yolo_face_detect/face_detect_320x240.kmodel"
    detector_anchor: List[float] = dataclasses.field(default_factory=_canmv_face_detector_anchors)
    detector_threshold: float = 0.5
    detector_nms: float = 0.2
    landmarks_path: str = "/sd/KPU/face_recognization/ld5.kmodel"
    landmarks_input_size: int = 128
    enroll_button: bool = True
    runtime: str = "canmv-feat-kpu"


@dataclasses.dataclass
class DemoConfig:
    """`make demo` on the ORL faces: who trains, who picks the checkpoint, who is held out.

    Identities are ORL's ``s1..s40``. ``reduced_photos`` hands the builder fewer photos of some
    training identities so that every branch of the scaled policy in ``build_config`` runs. The
    checkpoint is chosen by verification on the ``select`` identities, and every reported figure
    comes from the ``test`` identities, which nothing before the report has seen.
    ``enroll_photos`` of each test identity form the gallery; the others are identified.
    """

    train: List[int] = dataclasses.field(default_factory=lambda: list(range(1, 28)))
    select: List[int] = dataclasses.field(default_factory=lambda: [28, 29, 30])
    test: List[int] = dataclasses.field(default_factory=lambda: list(range(31, 41)))
    reduced_photos: Dict[str, int] = dataclasses.field(
        default_factory=lambda: {"s24": 8, "s25": 6, "s26": 4, "s27": 3})
    build_config: str = "configs/demo_build.yaml"
    train_config: str = "configs/demo_cpu.yaml"
    enroll_photos: int = 5
    calibrate_method: str = "l2"
    calibration_samples: int = 100
    workers: int = 0
