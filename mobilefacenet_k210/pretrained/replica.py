"""A source MobileFaceNet's weights in our MobileFaceNet: the exact float copy, and its K210-legal twin.

TensorFlow pads a stride-2 'same' convolution of an even input with 0 rows/columns before and 1
after; the KPU pads symmetrically. The two agree in a frame turned by 180 degrees:
``conv_same_s2(x, k) == rot180(conv_valid_s2(pad1(rot180(x)), rot180(k)))``, and every other layer
(stride-1 'same' 3x3, 1x1, BatchNorm, activations, residual adds, the global depthwise conv whose
output has no spatial extent) commutes with the turn when its kernel is turned too. So a source whose
stride-2 convolutions pad as 'same' is copied into a model with ``input_orientation: rot180``, every
spatial kernel turned (``kernel[::-1, ::-1]``): the same function of the upright crop, exactly, with
only KPU-legal padding.

Folded BatchNorm goes into our BatchNorm layers as an identity plus the bias (mean 0, variance
``1 - epsilon``, scale 1, shift = bias). The exact copy keeps the source's per-channel PReLU
(``activation: prelu``, a host-side teacher); the K210 twin has ReLU there, its one approximation.
"""
import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from mobilefacenet_k210 import preprocessing
from mobilefacenet_k210.config import ModelConfig
from mobilefacenet_k210.pretrained.graph import ModelImportError, SourceGraph, SourceLayer

STEM_CHANNELS = 64
"""MobileFaceNet's first convolution at width 1.0: the width of a source is its stem over this."""


def model_config(graph: SourceGraph, activation: str = "relu", split_conv_last: bool = False) -> ModelConfig:
    """Our MobileFaceNet's config for ``graph``'s shape (input, width, embedding, stem projection, orientation);
    ``split_conv_last`` where the source's last 1x1 conv has a PReLU that should stay exact."""
    first = graph.layers[0]
    size = graph.input_shape[1]
    if graph.input_shape[1] != graph.input_shape[2]:
        raise ModelImportError(f"{graph.path}: input {graph.input_shape[1:3]} is not square")
    third = graph.layers[2] if len(graph.layers) > 2 else None
    stem_project = bool(third and third.kind == "conv" and third.kernel_size == 1 and third.activation == "linear")
    asymmetric = [l for l in graph.layers if l.stride == 2 and l.padding == "same" and l.kernel_size > 1]
    odd = [l for l in asymmetric if l.input_shape[0] % 2]
    if odd:
        raise ModelImportError(f"{graph.path}: {odd[0].describe()} pads an odd input as 'same'; only even inputs "
                               "map onto the KPU's symmetric padding")
    config = ModelConfig(input_size=size, width_multiplier=first.output_shape[-1] / STEM_CHANNELS,
                         embedding_size=graph.output_dim, activation=activation, stem_project=stem_project,
                         input_orientation=preprocessing.ROT180 if asymmetric else preprocessing.UPRIGHT,
                         embedding_head="gdc_linear_kpu", split_conv_last=split_conv_last)
    config.validate()
    return config


def conv_layers(model: Any) -> List[Any]:
    """Our model's convolutions (Conv2D and DepthwiseConv2D) in graph order."""
    import tensorflow as tf

    return [l for l in model.layers if isinstance(l, (tf.keras.layers.Conv2D, tf.keras.layers.DepthwiseConv2D))]


def _activation_layer(model: Any, name: str) -> Optional[Any]:
    for suffix in ("_relu", "_prelu"):
        try:
            return model.get_layer(name + suffix)
        except ValueError:
            continue
    return None


def bn_name(conv_name: str) -> str:
    """The BatchNorm after our conv ``conv_name`` (``embedding_conv`` has ``embedding_bn``)."""
    return "embedding_bn" if conv_name == "embedding_conv" else f"{conv_name}_bn"


def _add_layer(name: str) -> Optional[str]:
    """``block_3_add`` for ``block_3_project``: where a bottleneck's residual add would be."""
    return name.replace("_project", "_add") if name.startswith("block_") and name.endswith("_project") else None


def output_layer(model: Any, conv_name: str) -> str:
    """The layer whose output is conv ``conv_name``'s after its BatchNorm, activation and residual add."""
    add = _add_layer(conv_name)
    if add and any(l.name == add for l in model.layers):
        return add
    act = _activation_layer(model, conv_name)
    if act is not None:
        return act.name
    return "embedding" if conv_name == "embedding_conv" else bn_name(conv_name)


@dataclasses.dataclass
class Mapping:
    """Which of our layers each source layer becomes."""

    pairs: List[Tuple[SourceLayer, Any]]

    def names(self) -> List[str]:
        return [ours.name for _, ours in self.pairs]


SPLIT_OUT = ("conv_last", "gdconv")
SPLIT_IN = ("gdconv", "embedding_conv")
"""Our layers with twice the source's output / input channels under ``split_conv_last``."""


def map_layers(graph: SourceGraph, model: Any, split_conv_last: bool = False) -> Mapping:
    """Pair each source layer with our conv of the same role, refusing at the first that does not fit."""
    ours = conv_layers(model)
    if len(ours) != len(graph.layers):
        raise ModelImportError(f"{graph.path}: {len(graph.layers)} convolutions (after folding {graph.folded} "
                               f"linear 1x1 into the one before), but our MobileFaceNet of this shape has "
                               f"{len(ours)}; not the MobileFaceNet topology this importer reads")
    for src, layer in zip(graph.layers, ours):
        depthwise = type(layer).__name__ == "DepthwiseConv2D"
        halve_in = 2 if split_conv_last and layer.name in SPLIT_IN else 1
        halve_out = 2 if split_conv_last and layer.name in SPLIT_OUT else 1
        want = (("depthwise" if depthwise else "conv"), layer.kernel_size[0], layer.strides[0],
                int(layer.input_shape[-1]) // halve_in, int(layer.output_shape[-1]) // halve_out)
        got = (src.kind, src.kernel_size, src.stride, src.input_shape[-1], src.output_shape[-1])
        problems = []
        if want != got:
            problems.append(f"is {got[0]} {got[1]}x{got[1]}/{got[2]} {got[3]}->{got[4]} where our layer "
                            f"{layer.name} is {want[0]} {want[1]}x{want[1]}/{want[2]} {want[3]}->{want[4]}")
        if (src.activation == "linear") != (_activation_layer(model, layer.name) is None):
            problems.append(f"is {'linear' if src.activation == 'linear' else 'followed by ' + src.activation} "
                            f"where our layer {layer.name} is not")
        has_add = any(l.name == _add_layer(layer.name) for l in model.layers)
        if (src.residual is not None) != has_add:
            problems.append(f"{'has' if src.residual is not None else 'has no'} residual add where our layer "
                            f"{layer.name} {'has none' if src.residual is not None else 'has one'}")
        if problems:
            raise ModelImportError(f"{graph.path}: {src.describe()} " + "; ".join(problems))
    return Mapping(list(zip(graph.layers, ours)))


def turn(kernel: np.ndarray, orientation: str) -> np.ndarray:
    """A (kh, kw, ...) kernel as a network computing in ``orientation`` needs it (turned by 180 degrees
    for ``rot180``)."""
    if preprocessing.check_orientation(orientation) == preprocessing.UPRIGHT:
        return kernel
    return np.ascontiguousarray(kernel[::-1, ::-1])


def _split(layer_name: str, kernel: np.ndarray, bias: np.ndarray,
           slopes: Optional[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """Kernel and bias of a ``split_conv_last`` layer from the source's: conv_last gives ``(y, -y)``, the
    GDConv weighs ``relu(-y)`` by ``-a`` (conv_last's slopes), the projection sums the two halves."""
    if layer_name == "conv_last":
        return np.concatenate([kernel, -kernel], axis=-1), np.concatenate([bias, -bias])
    if layer_name == "gdconv":
        scaled = -slopes.reshape(1, 1, -1, 1) * kernel
        return np.concatenate([kernel, scaled], axis=2), np.concatenate([bias, np.zeros_like(bias)])
    return np.concatenate([kernel, kernel], axis=2), bias


def set_weights(model: Any, mapping: Mapping, config: ModelConfig) -> None:
    """Write the source's weights into ``model`` (built from ``config``): kernels turned for the model's
    orientation, bias into the BatchNorm after each conv, PReLU slopes where the model has PReLU, and
    ``split_conv_last``'s doubled layers."""
    last_slopes = None
    for src, layer in mapping.pairs:
        kernel, bias = turn(src.kernel, config.input_orientation), src.bias.astype(np.float32)
        if config.split_conv_last and layer.name in SPLIT_OUT + SPLIT_IN:
            if layer.name == "gdconv" and last_slopes is None:
                raise ModelImportError(f"{src.describe()}: split_conv_last needs a PReLU on the conv before it")
            kernel, bias = _split(layer.name, kernel, bias, last_slopes)
            last_slopes = src.slopes if layer.name == "conv_last" else last_slopes
        layer.set_weights([kernel.astype(np.float32)])
        bn = model.get_layer(bn_name(layer.name))
        epsilon = np.float32(bn.epsilon)
        channels = bias.shape[0]
        bn.set_weights([np.ones(channels, np.float32), bias,
                        np.zeros(channels, np.float32), np.full(channels, np.float32(1.0) - epsilon)])
        act = _activation_layer(model, layer.name)
        if act is not None and act.weights and not (config.split_conv_last and layer.name == "conv_last"):
            if src.slopes is None:
                raise ModelImportError(f"{mapping.pairs[0][0].name}: our layer {act.name} has slopes but "
                                       f"{src.describe()} has none")
            act.set_weights([src.slopes.reshape(act.weights[0].shape).astype(np.float32)])


def build(graph: SourceGraph, activation: str, split_conv_last: bool = False) -> Tuple[Any, ModelConfig, Mapping]:
    """Our MobileFaceNet for ``graph`` with its weights: ``activation`` prelu for the exact copy, relu
    for the K210 twin; ``split_conv_last`` keeps the PReLU of the source's last 1x1 conv exact with ReLU.
    Returns (model, its config, the layer mapping)."""
    from mobilefacenet_k210.model.mobilefacenet import MobileFaceNet

    config = model_config(graph, activation, split_conv_last)
    model = MobileFaceNet(config, name="mobilefacenet_imported")
    mapping = map_layers(graph, model, split_conv_last)
    set_weights(model, mapping, config)
    return model, config, mapping


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


class SourceRunner:
    """The source TFLite in ``tf.lite.Interpreter`` at its own fixed batch, every tensor kept, so that each
    layer's output can be read (a MobileFaceNet_TF graph reshapes to its batch: it cannot be resized)."""

    def __init__(self, graph: SourceGraph):
        import tensorflow as tf

        self.graph = graph
        self.interpreter = tf.lite.Interpreter(model_path=str(graph.path), experimental_preserve_all_tensors=True)
        self.interpreter.allocate_tensors()
        self.batch = int(graph.input_shape[0])

    def run(self, x: np.ndarray, tensors: List[int]) -> List[np.ndarray]:
        """The values of ``tensors`` (batch first) for normalized float inputs ``x`` (N, H, W, 3)."""
        out: List[List[np.ndarray]] = [[] for _ in tensors]
        for start in range(0, len(x), self.batch):
            chunk = x[start:start + self.batch]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch - len(chunk), axis=0)])
            self.interpreter.set_tensor(self.graph.input_tensor, padded.astype(np.float32))
            self.interpreter.invoke()
            for i, t in enumerate(tensors):
                out[i].append(np.array(self.interpreter.get_tensor(t))[:len(chunk)])
        return [np.concatenate(v) for v in out]


def compare(graph: SourceGraph, model: Any, mapping: Mapping, config: ModelConfig, crops: np.ndarray,
            layers: bool = True) -> Dict[str, Any]:
    """Cosine between the source's and ``model``'s outputs of every layer (ours turned back upright) on
    uint8 crops: ``{"embedding": per-crop cosines, "layers": [(our layer, min cosine), ...]}``."""
    import tensorflow as tf

    x = preprocessing.normalize(np.asarray(crops))
    pairs = mapping.pairs if layers else mapping.pairs[-1:]
    names = [output_layer(model, ours.name) for _, ours in pairs]
    probe = tf.keras.Model(model.input, [model.get_layer(n).output for n in names])
    chunks = [probe(x[i:i + 16], training=False) for i in range(0, len(x), 16)]  # eager: no graph to trace
    ours = [np.concatenate([np.asarray(c[k] if isinstance(c, (list, tuple)) else c) for c in chunks])
            for k in range(len(names))]
    theirs = SourceRunner(graph).run(x, [src.output for src, _ in pairs])
    per_layer = []
    for name, a, b in zip(names, ours, theirs):
        upright = preprocessing.orient(a, config.input_orientation) if a.ndim == 4 else a
        if upright.size != b.size:  # split_conv_last's doubled layers: compared through the layers after them
            continue
        per_layer.append((name, float(_cosines(upright, b.reshape(upright.shape)).min())))
    embedding = _cosines(ours[-1], theirs[-1])
    return {"embedding": embedding, "layers": per_layer}


def first_difference(per_layer: List[Tuple[str, float]], threshold: float) -> Optional[Tuple[str, float]]:
    """The first (layer, min cosine) below ``threshold``, None when every layer agrees."""
    return next(((name, cos) for name, cos in per_layer if cos < threshold), None)
