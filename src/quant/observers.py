"""Observers: cells that watch a tensor's range and pass it on unchanged."""
import mindspore.nn as nn
import mindspore.ops as ops
import numpy as np
from mindspore import Parameter, Tensor

ACTIVATION_EMA_DECAY = 0.99


class RangeObserver(nn.Cell):
    """Tracks the min/max of a tensor; returns it unchanged.

    In training the range follows an EMA; in eval it is fixed, unless ``calibrating`` is
    set (by :func:`src.quant.calibrate`), when it widens to every value seen. The switch is a
    parameter so that one compiled eval graph serves both.
    """

    def __init__(self):
        super().__init__()
        self.act_min = Parameter(Tensor(np.zeros(1, np.float32)), name="act_min", requires_grad=False)
        self.act_max = Parameter(Tensor(np.zeros(1, np.float32)), name="act_max", requires_grad=False)
        self.calibrating = Parameter(Tensor(np.zeros(1, np.float32)), name="calibrating", requires_grad=False)

    def construct(self, x):
        seen_min = ops.stop_gradient(x.min()).reshape(1)
        seen_max = ops.stop_gradient(x.max()).reshape(1)
        if self.training:
            ops.assign(self.act_min, self.act_min * ACTIVATION_EMA_DECAY + seen_min * (1 - ACTIVATION_EMA_DECAY))
            ops.assign(self.act_max, self.act_max * ACTIVATION_EMA_DECAY + seen_max * (1 - ACTIVATION_EMA_DECAY))
        else:
            keep = 1 - self.calibrating
            ops.assign(self.act_min, keep * self.act_min + self.calibrating * ops.minimum(self.act_min, seen_min))
            ops.assign(self.act_max, keep * self.act_max + self.calibrating * ops.maximum(self.act_max, seen_max))
        return x

    def reset(self):
        self.act_min.set_data(Tensor(np.zeros(1, np.float32)))
        self.act_max.set_data(Tensor(np.zeros(1, np.float32)))

    def set_calibrating(self, calibrating):
        self.calibrating.set_data(Tensor(np.full(1, float(calibrating), np.float32)))
