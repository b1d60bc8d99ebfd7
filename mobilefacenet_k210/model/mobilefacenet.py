"""MobileFaceNet (Chen et al. 2018, table 1), built only from layers the K210 KPU and nncase 1.x accept.

In the style of ``keras/applications/mobilenet_v2.py``: one function per block, explicit layer names
(``block_3_expand``, ``block_3_depthwise``...), no global state. Differences from the paper, all for
the K210 (see ``k210.py``): ReLU instead of PReLU (PReLU needs more RAM than the chip has; ``prelu`` is
there for host-side teachers only) and stride-2 convolutions as ``ZeroPadding2D((1, 1))`` + ``'valid'``
(TensorFlow's asymmetric 'same' padding is not KPU-legal). The model maps normalized float32 NHWC
upright crops (``preprocessing.normalize``) to an un-normalized embedding; heads are never part of it.
With ``input_orientation: rot180`` its first layer (:class:`InputOrientation`) turns the crop by 180
degrees and the rest (the body, which export compiles) computes on the turned crop.
"""
import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import tensorflow as tf
from tensorflow.keras import layers

from mobilefacenet_k210 import preprocessing
from mobilefacenet_k210.config import ModelConfig
from mobilefacenet_k210.k210 import KPU_MIN_SIZE

# (expansion t, output channels c, repeats n, first stride s): the paper's bottleneck table.
BOTTLENECKS = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round channel counts to a multiple of ``divisor`` without losing more than 10%."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def _activation(config: ModelConfig, base: str) -> layers.Layer:
    """The activation after layer ``base``: ``base_relu`` (ReLU or ReLU6) or ``base_prelu`` (one slope a channel)."""
    if config.activation == "prelu":
        return layers.PReLU(shared_axes=[1, 2], name=f"{base}_prelu")
    return layers.ReLU(6.0 if config.activation == "relu6" else None, name=f"{base}_relu")


@tf.keras.utils.register_keras_serializable(package="mfk210")
class InputOrientation(layers.Layer):
    """Turns upright crops into the orientation the rest of the model computes in (``preprocessing.orient``).

    Export cuts the model after this layer (:func:`split_orientation`) and records the orientation
    beside the exported files instead, so nncase never sees it and the kmodel stays on the KPU.
    """

    def __init__(self, orientation: str = preprocessing.UPRIGHT, **kwargs: Any):
        super().__init__(**kwargs)
        self.orientation = preprocessing.check_orientation(orientation)

    def call(self, images: tf.Tensor) -> tf.Tensor:
        return preprocessing.orient(images, self.orientation)

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "orientation": self.orientation}


def split_orientation(model: tf.keras.Model) -> Tuple[tf.keras.Model, str]:
    """(the model without its :class:`InputOrientation` layer, that layer's orientation): what export
    compiles, fed crops in that orientation. A model without one is returned whole, ``upright``."""
    first = model.layers[1] if len(model.layers) > 1 else None
    if not isinstance(first, InputOrientation):
        return model, preprocessing.UPRIGHT
    return tf.keras.Model(first.output, model.output, name=model.name), first.orientation


def block_outputs(model: tf.keras.Model) -> List[str]:
    """Names of the layers whose outputs are the bottlenecks' (the add, else the linear projection's BN),
    in order: the feature maps a student matches with its teacher's, same names in both."""
    names = []
    block_id = 0
    while True:
        found = [n for n in (f"block_{block_id}_add", f"block_{block_id}_project_bn")
                 if any(layer.name == n for layer in model.layers)]
        if not found:
            return names
        names.append(found[0])
        block_id += 1


def _bn(config: ModelConfig, name: str) -> layers.Layer:
    return layers.BatchNormalization(momentum=config.bn_momentum, epsilon=config.bn_epsilon, name=name)


def conv_block(x: tf.Tensor, filters: int, kernel: int, stride: int, config: ModelConfig, name: str,
               linear: bool = False) -> tf.Tensor:
    """Conv + BN (+ ReLU); stride 2 is an explicit 1-pixel zero pad followed by a 'valid' conv."""
    if stride == 2:
        x = layers.ZeroPadding2D(padding=kernel // 2, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    x = layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=False, name=name)(x)
    x = _bn(config, f"{name}_bn")(x)
    return x if linear else _activation(config, name)(x)


def depthwise_block(x: tf.Tensor, kernel: int, stride: int, config: ModelConfig, name: str,
                    linear: bool = False, padding: Optional[str] = None) -> tf.Tensor:
    """Depthwise conv + BN (+ ReLU), with the same K210-legal stride-2 padding as ``conv_block``."""
    if padding is None:
        if stride == 2:
            x = layers.ZeroPadding2D(padding=kernel // 2, name=f"{name}_pad")(x)
            padding = "valid"
        else:
            padding = "same"
    x = layers.DepthwiseConv2D(kernel, strides=stride, padding=padding, use_bias=False, name=name)(x)
    x = _bn(config, f"{name}_bn")(x)
    return x if linear else _activation(config, name)(x)


def bottleneck_block(x: tf.Tensor, expansion: int, filters: int, stride: int, config: ModelConfig,
                     block_id: int) -> tf.Tensor:
    """MobileNetV2 inverted residual: 1x1 expand, 3x3 depthwise, linear 1x1 project, add if shapes match."""
    in_channels = x.shape[-1]
    prefix = f"block_{block_id}"
    y = conv_block(x, in_channels * expansion, 1, 1, config, f"{prefix}_expand")
    y = depthwise_block(y, 3, stride, config, f"{prefix}_depthwise")
    y = conv_block(y, filters, 1, 1, config, f"{prefix}_project", linear=True)
    if stride == 1 and in_channels == filters:
        y = layers.Add(name=f"{prefix}_add")([x, y])
    return y


def embedding_head(x: tf.Tensor, config: ModelConfig) -> tf.Tensor:
    """Linear GDConv (global depthwise 7x7 on the last feature map) -> linear 1x1 to the embedding -> BN.

    With ``gdc_linear_kpu`` the 1x1 projection runs on the GDConv output repeated to 4x4 (then cropped
    to 1x1): the same function and weights (layer names match, so weights transfer), but on the KPU.
    """
    spatial = int(x.shape[1])
    x = depthwise_block(x, spatial, 1, config, "gdconv", linear=True, padding="valid")
    on_kpu = config.embedding_head == "gdc_linear_kpu"
    if on_kpu:
        # nncase 1.1 runs a conv on a 1x1 map in float on the CPU (256 KB of float weights); on a
        # KPU-sized map of identical pixels it runs quantized on the KPU, and any pixel is the result.
        x = layers.UpSampling2D(KPU_MIN_SIZE, name="embedding_repeat")(x)
    x = layers.Conv2D(config.embedding_size, 1, use_bias=False, name="embedding_conv")(x)
    x = _bn(config, "embedding_bn")(x)
    if on_kpu:
        x = layers.Cropping2D(((0, KPU_MIN_SIZE - 1), (0, KPU_MIN_SIZE - 1)), name="embedding_crop")(x)
    return layers.Flatten(name="embedding")(x)


def MobileFaceNet(config: Optional[ModelConfig] = None, name: str = "mobilefacenet") -> tf.keras.Model:
    """Build the embedding model: (N, S, S, 3) normalized float32 -> (N, embedding_size)."""
    config = config or ModelConfig()
    config.validate()
    alpha = config.width_multiplier
    inputs = layers.Input((config.input_size, config.input_size, 3), name="image")
    x = inputs
    if config.input_orientation != preprocessing.UPRIGHT:
        x = InputOrientation(config.input_orientation, name="input_orientation")(x)
    stem = _make_divisible(64 * alpha)
    x = conv_block(x, stem, 3, 2, config, "conv1")
    x = depthwise_block(x, 3, 1, config, "conv2_depthwise")
    if config.stem_project:
        x = conv_block(x, stem, 1, 1, config, "conv2_project", linear=True)
    block_id = 0
    for expansion, channels, repeats, stride in BOTTLENECKS:
        for i in range(repeats):
            x = bottleneck_block(x, expansion, _make_divisible(channels * alpha), stride if i == 0 else 1,
                                 config, block_id)
            block_id += 1
    last = _make_divisible(512 * alpha)
    if config.split_conv_last:
        # (y, -y) through ReLU: the GDConv after it can weigh relu(-y) by any per-channel slope (import)
        x = conv_block(x, 2 * last, 1, 1, dataclasses.replace(config, activation="relu"), "conv_last")
    else:
        x = conv_block(x, last, 1, 1, config, "conv_last")
    outputs = embedding_head(x, config)
    return tf.keras.Model(inputs, outputs, name=name)
