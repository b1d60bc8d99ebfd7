"""Everything this package knows about the Kendryte K210's limits, and a checker for Keras models.

The KPU runs 1x1 and 3x3 convolutions (normal or depthwise) with stride 1 or 2 on feature maps of
4..256 rows and 4..512 columns with at most 1024 channels, holding a layer's input and output in
its 2 MB of KPU memory. nncase 1.x compiles everything else to float code on the K210's CPU, which
is legal but slow and costs RAM. Some constructs cannot be deployed at all: PReLU makes nncase
keep float copies that need more than the 6 MB of general RAM, and TensorFlow's 'same' padding with
stride 2 pads asymmetrically, which the KPU cannot express.

``check_model`` walks a Keras model and returns findings naming the layer and the rule; errors make
export refuse the model before nncase ever sees it.
"""
import dataclasses
from typing import List, Optional
from mobilefacenet_k210.errors import Mfk210Error

KPU_KERNELS = (1, 3)
KPU_STRIDES = (1, 2)
KPU_MAX_CHANNELS = 1024
KPU_MIN_SIZE = 4
KPU_MAX_HEIGHT = 256
KPU_MAX_WIDTH = 512
KPU_MEMORY_BYTES = 2 * 1024 * 1024
MAIN_MEMORY_BYTES = 6 * 1024 * 1024
CANMV_KMODEL_RAM_LIMIT = 5 * 1024 * 1024
"""CanMV feat/kpu copies the whole kmodel into RAM and refuses one larger than this."""
KMODEL_VERSION = 5
"""nncase 1.x writes kmodel v5; MaixPy-v1 loads only v3/v4, CanMV feat/kpu and the SDK load v5."""
FLASH_MODEL_ADDRESS = 0x300000
FLASH_END = 0xD00000
"""On 16 MB boards, flash from 0x300000 up to 0xCFFFFF is free for a model next to CanMV."""

ACTIVATIONS = ("relu", "relu6", "linear")
CONV_LAYERS = ("Conv2D", "DepthwiseConv2D")
"""Judged by the KPU's kernel, stride, size, channel and memory rules."""
CPU_ACTIVATION_LAYERS = ("PReLU", "LeakyReLU", "ELU", "ThresholdedReLU", "Softmax")
"""Activations nncase 1.x keeps in float on the CPU: errors (PReLU alone needs more RAM than the chip has)."""
CPU_LAYERS = ("Dense",)
"""Legal, but run in float on the K210 CPU: warnings."""
PASS_THROUGH = ("InputLayer", "BatchNormalization", "ZeroPadding2D", "Add", "Flatten", "Reshape",
                "ReLU", "Activation", "Cropping2D", "UpSampling2D")
STRIPPED_BY_EXPORT = ("InputOrientation",)
"""Layers export cuts off and records beside the kmodel instead (the board's alignment turns the crop)."""
PACKAGE_LAYERS = STRIPPED_BY_EXPORT + ("TeacherProjection", "DistillTerm", "FeatureDistillTerm")
"""This package's own Keras layers, registered as ``mfk210>Name``; all but those export strips are
training-only (never deployable)."""
OTHER_LAYERS = ("AveragePooling2D", "MaxPooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D", "Dropout",
                "Concatenate", "Multiply")
"""Keras layers of other face models (teachers) with nothing but numbers in their config: never deployable
here (:func:`check_model` names them as unsupported), but a model file may hold them."""
KNOWN_LAYERS = CONV_LAYERS + CPU_ACTIVATION_LAYERS + CPU_LAYERS + PASS_THROUGH + PACKAGE_LAYERS + OTHER_LAYERS
"""Every layer class this package knows, and so the only ones a model file may hold (``model/guard.py``
refuses any other before it loads: a Lambda or an unknown class can carry code). To let model files hold
another class, add it to the tuple above that says how :func:`check_model` judges it."""


class K210Error(Mfk210Error, ValueError):
    """A model that cannot be deployed on the K210; the message lists every offending layer."""


@dataclasses.dataclass
class Finding:
    """One rule a layer breaks: ``error`` blocks export, ``warning`` means it runs on the CPU."""

    layer: str
    rule: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.severity}: layer '{self.layer}' breaks '{self.rule}': {self.message}"


def _activation_name(layer) -> Optional[str]:
    act = getattr(layer, "activation", None)
    if act is None:
        return None
    return getattr(act, "__name__", str(act))


def _check_conv(layer, findings: List[Finding]) -> None:
    cls = type(layer).__name__
    depthwise = cls == "DepthwiseConv2D"
    kh, kw = layer.kernel_size
    sh, sw = layer.strides
    _, in_h, in_w, in_c = layer.input_shape
    _, out_h, out_w, out_c = layer.output_shape
    is_global = out_h == 1 and out_w == 1 and layer.padding == "valid" and (kh, kw) == (in_h, in_w)
    if kh != kw or sh != sw:
        findings.append(Finding(layer.name, "square kernel and stride",
                                f"kernel {kh}x{kw}, stride {sh}x{sw}: the KPU needs square ones"))
    if sh not in KPU_STRIDES:
        findings.append(Finding(layer.name, "stride 1 or 2", f"stride {sh}: the KPU supports {KPU_STRIDES}"))
    if sh == 2 and layer.padding == "same":
        findings.append(Finding(layer.name, "stride 2 needs explicit padding",
                                "'same' padding with stride 2 pads asymmetrically; use ZeroPadding2D((1,1)) "
                                "followed by padding='valid'"))
    if getattr(layer, "dilation_rate", (1, 1)) != (1, 1):
        findings.append(Finding(layer.name, "no dilation", f"dilation {layer.dilation_rate} is not KPU-legal"))
    if kh not in KPU_KERNELS:
        if depthwise and is_global:
            findings.append(Finding(layer.name, "kernel 1x1 or 3x3",
                                    f"global {kh}x{kw} depthwise conv (GDConv) runs on the K210 CPU in float",
                                    "warning"))
        else:
            findings.append(Finding(layer.name, "kernel 1x1 or 3x3",
                                    f"{kh}x{kw} kernel: the KPU runs only {KPU_KERNELS}; only a global "
                                    "depthwise conv (output 1x1) may use another size"))
    for what, c in (("input", in_c), ("output", out_c)):
        if c > KPU_MAX_CHANNELS:
            findings.append(Finding(layer.name, f"at most {KPU_MAX_CHANNELS} channels",
                                    f"{what} has {c} channels"))
    if kh in KPU_KERNELS:
        if not (KPU_MIN_SIZE <= in_h <= KPU_MAX_HEIGHT and KPU_MIN_SIZE <= in_w <= KPU_MAX_WIDTH):
            findings.append(Finding(layer.name, "feature map 4..256 high, 4..512 wide",
                                    f"input {in_h}x{in_w} is outside the KPU's range: this layer runs on the CPU",
                                    "warning"))
        kpu_bytes = in_h * in_w * in_c + out_h * out_w * out_c
        if kpu_bytes > KPU_MEMORY_BYTES:
            findings.append(Finding(layer.name, "KPU memory per layer",
                                    f"input+output need {kpu_bytes} bytes, more than the KPU's {KPU_MEMORY_BYTES}"))
    act = _activation_name(layer)
    if act not in ACTIVATIONS:
        findings.append(Finding(layer.name, "activation relu/relu6/linear", f"fused activation {act!r}"))


def _check_padding(layer, findings: List[Finding]) -> None:
    """An asymmetric zero pad (e.g. TensorFlow's 'same' stride-2 phase, 0 before and 1 after) is legal,
    but nncase 1.1 runs it as a float Pad on the CPU between KPU layers: its float buffers add to RAM."""
    (top, bottom), (left, right) = layer.padding
    if top != bottom or left != right:
        _, h, w, c = layer.output_shape
        floats = (h * w + (h - top - bottom) * (w - left - right)) * c
        findings.append(Finding(layer.name, "symmetric padding",
                                f"padding (({top}, {bottom}), ({left}, {right})) is asymmetric: nncase runs it as a "
                                f"float Pad on the CPU between KPU layers, whose float input and output take "
                                f"{4 * floats:,} bytes of RAM; symmetric padding stays on the KPU (a model "
                                "imported from TensorFlow gets it by computing on the crop turned by 180 degrees: "
                                "input_orientation rot180)", "warning"))


def check_model(model) -> List[Finding]:
    """Walk a Keras model and list every K210 rule its layers break (errors and CPU-fallback warnings)."""
    findings: List[Finding] = []
    _, h, w, c = model.input_shape
    if c != 3:
        findings.append(Finding(model.layers[0].name, "RGB input", f"input has {c} channels, expected 3"))
    largest = 0
    for layer in model.layers:
        cls = type(layer).__name__
        for shape in (layer.output_shape if isinstance(layer.output_shape, list) else [layer.output_shape]):
            if shape and all(d is not None for d in shape[1:]):
                size = 1
                for d in shape[1:]:
                    size *= int(d)
                largest = max(largest, size)
        if cls in CONV_LAYERS:
            _check_conv(layer, findings)
        elif cls in CPU_ACTIVATION_LAYERS:
            findings.append(Finding(layer.name, "activation relu/relu6/linear",
                                    f"{cls}: nncase 1.x keeps it in float on the CPU; PReLU alone needs ~9.6 MB "
                                    "of main memory for MobileFaceNet, more than the K210's 6 MB. Use ReLU"))
        elif cls == "Activation":
            act = _activation_name(layer)
            if act not in ACTIVATIONS:
                findings.append(Finding(layer.name, "activation relu/relu6/linear", f"activation {act!r}"))
        elif cls == "ReLU":
            if layer.negative_slope not in (0, 0.0) or layer.threshold not in (0, 0.0):
                findings.append(Finding(layer.name, "activation relu/relu6/linear",
                                        "ReLU with a negative slope or threshold"))
            if layer.max_value not in (None, 6, 6.0):
                findings.append(Finding(layer.name, "activation relu/relu6/linear",
                                        f"ReLU clipped at {layer.max_value}: only 6 or none"))
        elif cls == "ZeroPadding2D":
            _check_padding(layer, findings)
        elif cls in CPU_LAYERS:
            findings.append(Finding(layer.name, "convolutions only",
                                    f"{cls} runs on the K210 CPU in float; use a 1x1 Conv2D", "warning"))
        elif cls not in PASS_THROUGH + STRIPPED_BY_EXPORT:
            findings.append(Finding(layer.name, "supported layer",
                                    f"{cls} is not a layer this package knows nncase 1.x compiles for the K210"))
    if largest * 4 * 2 > MAIN_MEMORY_BYTES:
        findings.append(Finding(model.name, "main memory",
                                f"largest activation {largest} values needs {largest * 8} bytes as float in+out, "
                                f"more than {MAIN_MEMORY_BYTES}"))
    return findings


def errors(findings: List[Finding]) -> List[Finding]:
    """The findings that block deployment."""
    return [f for f in findings if f.severity == "error"]


def assert_k210_legal(model) -> List[Finding]:
    """Raise K210Error naming every offending layer; return the warnings otherwise."""
    findings = check_model(model)
    bad = errors(findings)
    if bad:
        raise K210Error(f"model '{model.name}' cannot run on the K210:\n" + "\n".join(f"  {f}" for f in bad))
    return [f for f in findings if f.severity != "error"]


# --- boards, flashing and on-board runtimes ----------------------------------------------------------
KFLASH_BOARDS = ("kd233", "dan", "bit", "bit_mic", "goE", "goD", "maixduino", "trainer")
"""Boards kflash knows how to reset into ISP mode (each toggles DTR/RTS its own way)."""
BOARD_ALIASES = {"m5stickv": "goE", "m5stack-m5stickv": "goE", "maixgo": "goE", "maixdock": "dan",
                 "maixbit": "bit"}
"""Common product names mapped onto kflash's board names (M5StickV and Maix Go use goE's reset)."""
KFLASH_BAUDRATE = 1500000
"""kflash's default baud rate after its ISP stub boots; the boot ROM itself always talks at 115200."""
FLASH_SECTOR_BYTES = 4096
"""SPI flash sector: a model's flash address must be a multiple of it."""
KFPKG_FIRMWARE_HEADER_BYTES = 37
"""kflash prefixes firmware written at address 0 with 1 flag byte + 4 length bytes and appends a 32-byte SHA-256."""
CANMV_KMODEL_V5_FIRMWARE_BYTES = 900 * 1024
"""Roughly what CONFIG_CANMV_ENABLE_KMODEL_V5 (the nncase 1.x runtime) adds to the CanMV firmware image."""

RUNTIMES = {
    "canmv-feat-kpu": "1.1.0",
    "sdk-1.0": "1.0.0",
    "sdk-1.1": "1.1.0",
    "sdk-1.2": "1.2.0",
    "sdk-1.3": "1.3.0",
    "sdk-1.4": "1.4.0",
    "sdk-1.5": "1.5.0",
    "sdk-1.6": "1.6.0",
    "sdk-1.7": "1.7.0",
    "sdk-1.8": "1.8.0",
    "sdk-1.9": "1.9.0",
}
"""On-board runtimes that load kmodel v5 and the nncase release (major.minor.patch) each one embeds.

A kmodel must be compiled by the same nncase release as the runtime that runs it: nncase renumbered
its CPU opcodes between 1.x releases, so a mismatched kmodel loads and then fails when run. CanMV
``feat/kpu`` embeds nncase 1.1.0-642cded; the standalone SDK (``develop``) links whichever nncase
release's K210 runtime it is built with ("sdk-1.N").
"""
DEFAULT_RUNTIME = "canmv-feat-kpu"


def resolve_board(board: str) -> str:
    """kflash's name for ``board`` (case-insensitive, product aliases allowed); ValueError naming the choices."""
    for name in KFLASH_BOARDS:
        if board.lower() == name.lower():
            return name
    if board.lower() in BOARD_ALIASES:
        return BOARD_ALIASES[board.lower()]
    raise ValueError(f"unknown board {board!r}: kflash knows {', '.join(KFLASH_BOARDS)} "
                     f"(aliases: {', '.join(f'{k}={v}' for k, v in BOARD_ALIASES.items())})")


def runtime_nncase_version(runtime: str) -> str:
    """The nncase release a runtime embeds; ValueError naming the known runtimes."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    return RUNTIMES[runtime]


def nncase_versions_match(compiler_version: str, runtime_version: str) -> bool:
    """True when a compiler version (e.g. '1.1.0.20211203') is the release a runtime embeds ('1.1.0')."""
    return compiler_version.split(".")[:3] == runtime_version.split(".")[:3]
