"""Size figures of a Keras model: parameters and multiply-adds, per layer and in total."""
from typing import Dict

import numpy as np
import tensorflow as tf


def layer_macs(layer: tf.keras.layers.Layer) -> int:
    """Multiply-adds of one layer's forward pass for a single image (0 for layers without any)."""
    if isinstance(layer, tf.keras.layers.DepthwiseConv2D):
        _, h, w, c = layer.output_shape
        kh, kw = layer.kernel_size
        return int(h * w * c * kh * kw)
    if isinstance(layer, tf.keras.layers.Conv2D):
        _, h, w, c_out = layer.output_shape
        kh, kw = layer.kernel_size
        c_in = int(layer.input_shape[-1]) // layer.groups
        return int(h * w * c_out * kh * kw * c_in)
    if isinstance(layer, tf.keras.layers.Dense):
        return int(np.prod(layer.kernel.shape))
    return 0


def model_macs(model: tf.keras.Model) -> Dict[str, int]:
    """Multiply-adds per layer name (only layers that have any), for one image."""
    return {layer.name: m for layer in model.layers if (m := layer_macs(layer))}


def count_macs(model: tf.keras.Model) -> int:
    """Total multiply-adds for one image."""
    return sum(model_macs(model).values())


def count_params(model: tf.keras.Model) -> int:
    """All weights (trainable and BatchNorm statistics), as the paper and Keras' summary count them."""
    return int(model.count_params())
