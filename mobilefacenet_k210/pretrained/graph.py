"""Read a MobileFaceNet TFLite op by op into a list of convolution layers with their weights.

The file's flatbuffer (TensorFlow's own ``schema_py_generated``) gives every operator, its options
(stride, padding, fused activation) and its constant tensors. A layer is one ``CONV_2D`` or
``DEPTHWISE_CONV_2D`` (BatchNorm already folded into its bias by the converter) with what follows it:

- its activation: none, a fused or separate ``RELU``/``RELU6``, a ``PRELU``, or PReLU decomposed as
  sirius-ai's MobileFaceNet_TF exports it, ``relu(x) + a * (x - |x|)`` (``RELU``, ``ABS``, ``SUB``,
  ``MUL`` by a per-channel constant, ``ADD``), whose negative slope is ``2 a``;
- a residual ``ADD`` of its output and an earlier layer's.

The layers must form one chain from the input to a final ``RESHAPE``/``SQUEEZE``; anything else is
refused naming the operator. Linear 1x1 convolutions that follow one another on a 1x1 map (the head's
512->512->192) are folded into one (exact: two linear maps are one).
"""
import dataclasses
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np

from mobilefacenet_k210.errors import Mfk210Error

CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")
FUSED_ACTIVATIONS = {0: "linear", 1: "relu", 3: "relu6"}
ACTIVATION_OPS = {"RELU": "relu", "RELU6": "relu6"}
OUTPUT_OPS = ("RESHAPE", "SQUEEZE")


class ModelImportError(Mfk210Error, ValueError):
    """A source model this importer cannot read or reproduce; the message names the file and the operator."""


@dataclasses.dataclass
class SourceLayer:
    """One convolution of the source with its activation and residual add.

    ``kernel`` is in Keras' layout, (kh, kw, in, out) for a conv, (kh, kw, channels, 1) for a depthwise
    conv, as the source computes it (not turned). ``output`` is the tensor after the activation and
    the add; ``residual`` the index of the layer whose output was added.
    """

    op_index: int
    name: str
    kind: str  # "conv" or "depthwise"
    kernel: np.ndarray
    bias: np.ndarray
    stride: int
    padding: str  # "same" or "valid"
    input_shape: tuple
    output_shape: tuple
    activation: str = "linear"  # "linear", "relu", "relu6" or "prelu"
    slopes: Optional[np.ndarray] = None
    residual: Optional[int] = None
    output: int = -1

    @property
    def kernel_size(self) -> int:
        return int(self.kernel.shape[0])

    def describe(self) -> str:
        return (f"op {self.op_index} {self.kind} {self.kernel_size}x{self.kernel_size}/{self.stride} "
                f"{self.input_shape[-1]}->{self.output_shape[-1]} ({self.name})")


@dataclasses.dataclass
class SourceGraph:
    """The layers of a source TFLite in order, and what its input and output look like."""

    path: Path
    layers: List[SourceLayer]
    input_shape: tuple  # (batch, h, w, c)
    output_dim: int
    input_tensor: int
    folded: int = 0  # linear 1x1 convolutions folded into the one before them


def _opcode_names() -> Dict[int, str]:
    from tensorflow.lite.python import schema_py_generated as fb

    return {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}


class _Reader:
    """Walks the flatbuffer's operators, claiming the ones each layer consumes."""

    def __init__(self, path: Path):
        from tensorflow.lite.python import schema_py_generated as fb

        self.path = path
        try:
            self.model = fb.ModelT.InitFromObj(fb.Model.GetRootAs(path.read_bytes(), 0))
        except Exception as exc:  # the generated parser raises whatever the bytes make it raise
            raise ModelImportError(f"{path}: not a TFLite model ({type(exc).__name__}: {exc})") from None
        if len(self.model.subgraphs) != 1:
            raise ModelImportError(f"{path}: {len(self.model.subgraphs)} subgraphs; a MobileFaceNet has one")
        self.graph = self.model.subgraphs[0]
        names = _opcode_names()
        self.ops = []
        for op in self.graph.operators:
            code = self.model.operatorCodes[op.opcodeIndex]
            self.ops.append(names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM"))
        self.consumers: Dict[int, List[int]] = {}
        for i, op in enumerate(self.graph.operators):
            for t in op.inputs:
                self.consumers.setdefault(int(t), []).append(i)
        self.claimed: set = set()

    def tensor_name(self, index: int) -> str:
        name = self.graph.tensors[index].name
        return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)

    def shape(self, index: int) -> tuple:
        return tuple(int(d) for d in self.graph.tensors[index].shape)

    def constant(self, index: int) -> Optional[np.ndarray]:
        """The value of a constant float32 tensor, None for a computed one."""
        tensor = self.graph.tensors[index]
        data = self.model.buffers[tensor.buffer].data
        if data is None or len(data) == 0:
            return None
        if tensor.type != 0:  # TensorType.FLOAT32
            raise ModelImportError(f"{self.path}: tensor {self.tensor_name(index)} is not float32 (a quantized "
                                   "TFLite); give the float model")
        return np.frombuffer(np.asarray(data, np.uint8).tobytes(), np.float32).reshape(self.shape(index)).copy()

    def refuse(self, i: int, why: str) -> ModelImportError:
        out = self.graph.operators[i].outputs
        name = self.tensor_name(int(out[0])) if len(out) else "?"
        return ModelImportError(f"{self.path}: op {i} ({self.ops[i]}, {name}) {why}; not a MobileFaceNet this "
                                "importer reads")

    def only_consumer(self, tensor: int, kinds: tuple) -> Optional[int]:
        users = self.consumers.get(tensor, [])
        if len(users) == 1 and self.ops[users[0]] in kinds:
            return users[0]
        return None


def _conv(reader: _Reader, i: int) -> SourceLayer:
    op = reader.graph.operators[i]
    options = op.builtinOptions
    x, w = int(op.inputs[0]), int(op.inputs[1])
    kernel = reader.constant(w)
    if kernel is None:
        raise reader.refuse(i, "has weights that are not constant")
    bias = reader.constant(int(op.inputs[2])) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
    if options.strideH != options.strideW or options.dilationHFactor != 1 or options.dilationWFactor != 1:
        raise reader.refuse(i, f"has stride {options.strideH}x{options.strideW}, dilation "
                               f"{options.dilationHFactor}x{options.dilationWFactor}")
    if options.fusedActivationFunction not in FUSED_ACTIVATIONS:
        raise reader.refuse(i, f"has fused activation {options.fusedActivationFunction}")
    depthwise = reader.ops[i] == "DEPTHWISE_CONV_2D"
    if depthwise:
        if options.depthMultiplier not in (0, 1):
            raise reader.refuse(i, f"has depth multiplier {options.depthMultiplier}")
        _, kh, kw, c = kernel.shape
        kernel = kernel.reshape(kh, kw, c, 1)
    else:
        kernel = kernel.transpose(1, 2, 3, 0)  # TFLite OHWI -> Keras HWIO
    if kernel.shape[0] != kernel.shape[1]:
        raise reader.refuse(i, f"has a {kernel.shape[0]}x{kernel.shape[1]} kernel")
    out = int(op.outputs[0])
    channels = kernel.shape[2] if depthwise else kernel.shape[3]
    return SourceLayer(op_index=i, name=reader.tensor_name(out), kind="depthwise" if depthwise else "conv",
                       kernel=kernel, bias=bias if bias is not None else np.zeros(channels, np.float32),
                       stride=int(options.strideH), padding="same" if options.padding == 0 else "valid",
                       input_shape=reader.shape(x)[1:], output_shape=reader.shape(out)[1:],
                       activation=FUSED_ACTIVATIONS[options.fusedActivationFunction], output=out)


def _decomposed_prelu(reader: _Reader, x: int) -> Optional[tuple]:
    """(slopes, output tensor, ops) when ``x`` feeds ``relu(x) + a * (x - |x|)``, else None."""
    users = reader.consumers.get(x, [])
    by_kind = {reader.ops[u]: u for u in users}
    if len(users) != 3 or set(by_kind) != {"RELU", "ABS", "SUB"}:
        return None
    ops = reader.graph.operators
    relu, ab, sub = by_kind["RELU"], by_kind["ABS"], by_kind["SUB"]
    if [int(t) for t in ops[sub].inputs] != [x, int(ops[ab].outputs[0])]:
        return None
    mul = reader.only_consumer(int(ops[sub].outputs[0]), ("MUL",))
    if mul is None:
        return None
    consts = [reader.constant(int(t)) for t in ops[mul].inputs]
    scale = next((c for c in consts if c is not None), None)
    if scale is None:
        return None
    add = reader.only_consumer(int(ops[mul].outputs[0]), ("ADD",))
    if add is None or int(ops[relu].outputs[0]) not in [int(t) for t in ops[add].inputs]:
        return None
    return 2.0 * scale.reshape(-1), int(ops[add].outputs[0]), (relu, ab, sub, mul, add)


def _activation(reader: _Reader, layer: SourceLayer) -> None:
    """Attach the activation that follows ``layer`` (claiming its ops) and move its output past it."""
    if layer.activation != "linear":
        return
    found = _decomposed_prelu(reader, layer.output)
    if found is not None:
        layer.activation, layer.slopes, layer.output = "prelu", found[0].astype(np.float32), found[1]
        reader.claimed.update(found[2])
        return
    nxt = reader.only_consumer(layer.output, tuple(ACTIVATION_OPS) + ("PRELU",))
    if nxt is None:
        return
    op = reader.graph.operators[nxt]
    if reader.ops[nxt] == "PRELU":
        alpha = reader.constant(int(op.inputs[1]))
        if alpha is None:
            raise reader.refuse(nxt, "has slopes that are not constant")
        layer.activation, layer.slopes = "prelu", alpha.reshape(-1).astype(np.float32)
    else:
        layer.activation = ACTIVATION_OPS[reader.ops[nxt]]
    layer.output = int(op.outputs[0])
    reader.claimed.add(nxt)


def _fold_linear_1x1(layers: List[SourceLayer]) -> int:
    """Fold each linear 1x1 conv on a 1x1 map into the linear 1x1 conv before it; how many were folded."""
    folded = 0
    i = 1
    while i < len(layers):
        a, b = layers[i - 1], layers[i]
        if all(l.kind == "conv" and l.kernel_size == 1 and l.activation == "linear" and l.residual is None
               and l.output_shape[:2] == (1, 1) for l in (a, b)):
            w1, w2 = a.kernel[0, 0].astype(np.float64), b.kernel[0, 0].astype(np.float64)
            a.kernel = (w1 @ w2).astype(np.float32)[None, None]
            a.bias = (a.bias.astype(np.float64) @ w2 + b.bias).astype(np.float32)
            a.output_shape, a.output, a.name = b.output_shape, b.output, b.name
            del layers[i]
            folded += 1
        else:
            i += 1
    return folded


def read_graph(path: Union[str, Path]) -> SourceGraph:
    """The convolution layers of a MobileFaceNet TFLite, in order, with activations, residuals and weights."""
    path = Path(path)
    if not path.is_file():
        raise ModelImportError(f"{path}: no such TFLite file")
    reader = _Reader(path)
    inputs, outputs = list(reader.graph.inputs), list(reader.graph.outputs)
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelImportError(f"{path}: {len(inputs)} inputs and {len(outputs)} outputs; a face embedding "
                               "model has one of each")
    layers: List[SourceLayer] = []
    by_output: Dict[int, int] = {}
    current = int(inputs[0])
    final = None
    for i, kind in enumerate(reader.ops):
        if i in reader.claimed:
            continue
        op = reader.graph.operators[i]
        if kind in CONV_OPS:
            if int(op.inputs[0]) != current:
                raise reader.refuse(i, "does not take the previous layer's output (the layers do not form a chain)")
            layer = _conv(reader, i)
            _activation(reader, layer)
            layers.append(layer)
            by_output[layer.output] = len(layers) - 1
            current = layer.output
        elif kind == "ADD" and all(reader.constant(int(t)) is None for t in op.inputs):
            operands = [int(t) for t in op.inputs]
            if current not in operands or not layers:
                raise reader.refuse(i, "adds tensors that are not the previous layer's output")
            other = operands[1] if operands[0] == current else operands[0]
            if other not in by_output or layers[-1].residual is not None:
                raise reader.refuse(i, "adds a tensor that is not an earlier layer's output")
            layers[-1].residual = by_output[other]
            layers[-1].output = current = int(op.outputs[0])
            by_output[current] = len(layers) - 1
        elif kind in OUTPUT_OPS and int(op.inputs[0]) == current:
            final = current = int(op.outputs[0])
        else:
            raise reader.refuse(i, "is not a convolution, activation, residual add or final reshape")
    if not layers or current != int(outputs[0]):
        raise ModelImportError(f"{path}: its output is not the end of its chain of convolutions; not a "
                               "MobileFaceNet this importer reads")
    shape = reader.shape(int(inputs[0]))
    if len(shape) != 4 or shape[-1] != 3 or reader.graph.tensors[int(inputs[0])].type != 0:
        raise ModelImportError(f"{path}: input {shape}, expected float32 NHWC RGB images")
    folded = _fold_linear_1x1(layers)
    dim = int(np.prod(reader.shape(final if final is not None else layers[-1].output)[1:]))
    return SourceGraph(path, layers, shape, dim, int(inputs[0]), folded)
