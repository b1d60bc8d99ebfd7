"""The learning-rate schedule and the optimizer of a phase."""
from typing import Any, Dict, List

import numpy as np
import tensorflow as tf

from mobilefacenet_k210.config import PhaseConfig


class WarmupPiecewise(tf.keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``lr`` over ``warmup_steps``, then ``lr * decay**(boundaries passed)``.

    A function of the optimizer's iteration count only, so restoring the optimizer restores it.
    """

    def __init__(self, lr: float, boundaries: List[int], decay: float = 0.1, warmup_steps: int = 0):
        self.lr, self.boundaries, self.decay, self.warmup_steps = float(lr), [int(b) for b in boundaries], \
            float(decay), int(warmup_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        passed = tf.reduce_sum(tf.cast(step >= tf.constant(self.boundaries or [np.inf], tf.float32), tf.float32))
        lr = self.lr * tf.pow(self.decay, passed)
        if self.warmup_steps > 0:
            lr = tf.where(step < self.warmup_steps, self.lr * (step + 1.0) / self.warmup_steps, lr)
        return lr

    def get_config(self) -> Dict[str, Any]:
        return {"lr": self.lr, "boundaries": self.boundaries, "decay": self.decay, "warmup_steps": self.warmup_steps}


class WarmupCosine(WarmupPiecewise):
    """Linear warm-up to ``lr`` over ``warmup_steps``, then a cosine from ``lr`` down to 0 at ``total_steps``.

    A function of the optimizer's iteration count only, so restoring the optimizer restores it.
    """

    def __init__(self, lr: float, total_steps: int, warmup_steps: int = 0):
        super().__init__(lr, [], 1.0, warmup_steps)
        self.total_steps = int(total_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        span = float(max(1, self.total_steps - self.warmup_steps))
        done = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
        lr = self.lr * 0.5 * (1.0 + tf.cos(np.pi * done))
        if self.warmup_steps > 0:
            lr = tf.where(step < self.warmup_steps, self.lr * (step + 1.0) / self.warmup_steps, lr)
        return lr

    def get_config(self) -> Dict[str, Any]:
        return {"lr": self.lr, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps}


def make_schedule(phase: PhaseConfig, steps_per_epoch: int) -> WarmupPiecewise:
    """The phase's learning-rate schedule in optimizer steps (``lr_steps`` and warm-up are in epochs)."""
    warmup = round(phase.warmup_epochs * steps_per_epoch)
    if phase.lr_schedule == "cosine":
        return WarmupCosine(phase.lr, phase.epochs * steps_per_epoch, warmup)
    return WarmupPiecewise(phase.lr, [round(e * steps_per_epoch) for e in sorted(phase.lr_steps)], phase.lr_decay,
                           warmup)


def make_optimizer(phase: PhaseConfig, steps_per_epoch: int) -> tf.keras.optimizers.Optimizer:
    """SGD with momentum or Adam, decoupled weight decay (not on BatchNorm), the phase's schedule."""
    schedule = make_schedule(phase, steps_per_epoch)
    wd = phase.weight_decay or None
    if phase.optimizer == "sgd":
        opt = tf.keras.optimizers.SGD(schedule, momentum=phase.momentum, weight_decay=wd)
    else:
        opt = tf.keras.optimizers.Adam(schedule, weight_decay=wd)
    if wd:
        opt.exclude_from_weight_decay(var_names=["_bn/"])
    return opt
