"""Observers: cells that watch a tensor's range and pass it on unchanged."""
import mindspore.nn as nn
import mindspore.ops as ops
import numpy as np
from mindspore import Parameter, Tensor

from src.graph_ops import item

ACTIVATION_EMA_DECAY = 0.99


class RangeObserver(nn.Cell):
    """Tracks the min/max of a tensor; returns it unchanged.

    In training the range follows an EMA, unless ``frozen`` is set (torch.ao's
    ``disable_observer``), when it stays as it is. In eval it is fixed and the observer does
    nothing (eval graphs have no reductions), unless ``calibrating`` is set, when it widens to
    every value seen. Both flags are read when a graph compiles, so only a graph compiled while
    they are set sees them: :func:`src.quant.observe_ranges` compiles its own, and train.py
    compiles a new training step when :func:`src.quant.set_observers_frozen` changes one.
    """
    accepts_fast_quant = True  # see src.kernels.enable_fast_cpu_path

    def __init__(self):
        super().__init__()
        self.act_min = Parameter(Tensor(np.zeros(1, np.float32)), name="act_min", requires_grad=False)
        self.act_max = Parameter(Tensor(np.zeros(1, np.float32)), name="act_max", requires_grad=False)
        self.calibrating = False
        self.frozen = False
        self.fast_quant = None
        self.ema = Tensor(np.array([ACTIVATION_EMA_DECAY, 1 - ACTIVATION_EMA_DECAY], np.float32))
        self.frozen_ema = Tensor(np.array([1.0, 0.0], np.float32))

    def construct(self, x):
        return self._step(x)

    @property
    def _step(self):
        """The method that computes :meth:`construct` in the current mode and flags: a property
        of constant attributes, which the graph compile folds to the one method (see
        :class:`src.quant.fake_quant.QuantizedInputConv`)."""
        if self.training and (self.calibrating or not self.frozen):
            return self._moving_step if self.fast_quant is None else self._moving_step_on_kernels
        if self.calibrating:
            return self._widen if self.fast_quant is None else self._widen_on_kernels
        return self._unchanged

    def _unchanged(self, x):
        return x

    def _moving_step(self, x):
        x_seen = ops.stop_gradient(x)
        ops.assign(self.act_min, self.act_min * ACTIVATION_EMA_DECAY + x_seen.min() * (1 - ACTIVATION_EMA_DECAY))
        ops.assign(self.act_max, self.act_max * ACTIVATION_EMA_DECAY + x_seen.max() * (1 - ACTIVATION_EMA_DECAY))
        return x

    def _moving_step_on_kernels(self, x):
        new_range = self.fast_quant.range_ema(x, self.act_min, self.act_max, self.ema)
        ops.assign(self.act_min, item(new_range, 0))
        ops.assign(self.act_max, item(new_range, 1))
        return x

    def _widen(self, x):
        ops.assign(self.act_min, ops.minimum(self.act_min, x.min()))
        ops.assign(self.act_max, ops.maximum(self.act_max, x.max()))
        return x

    def _widen_on_kernels(self, x):
        new_range = self.fast_quant.range_widen(x, self.act_min, self.act_max)
        ops.assign(self.act_min, item(new_range, 0))
        ops.assign(self.act_max, item(new_range, 1))
        return x

    def kernel_ema(self):
        """``[decay, 1 - decay]`` for a kernel that takes this range's step itself (in training);
        ``[1, 0]``, no step, while the range is frozen."""
        return self.frozen_ema if self.frozen else self.ema

    def watch_together(self, first, second):
        """In training, one moving-range step over the union of two tensors' ranges (a
        concatenation's parts); elsewhere nothing. A step per part would settle between the
        parts' ranges, not cover both."""
        if self.training and not self.frozen:
            self.construct(ops.concat((self.min_max(first), self.min_max(second))))

    def min_max(self, x):
        """``[min, max]`` of ``x``, shape (2,), no gradient."""
        if self.fast_quant is not None:
            return ops.stop_gradient(self.fast_quant.min_max(x))
        return ops.stop_gradient(ops.stack((x.min(), x.max())))

    def reset(self):
        self.act_min.set_data(Tensor(np.zeros(1, np.float32)))
        self.act_max.set_data(Tensor(np.zeros(1, np.float32)))
