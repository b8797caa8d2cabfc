"""Int8 layers: int8 weights with per-channel scales, int32 biases, uint8 input scales and zero
points; what an int8 checkpoint holds and what a deployment runs. They compute in float on
the dequantized integers, exactly the integer arithmetic's result."""
import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
import numpy as np
from mindspore import Parameter, Tensor

from src.graph_ops import cast, mul, reshape, squeeze
from src.kernels import conv_geometry, framework_conv
from src.quant.fake_quant import QuantizedInputConv
from src.quant.primitives import fake_quant_activation, per_channel_shape


class _Int8Params(nn.Cell):
    accepts_fast_quant = True  # see src.kernels.enable_fast_cpu_path

    def __init__(self, weight_shape):
        super().__init__()
        self.fast_quant = None
        out_channels = weight_shape[0]
        self.weight = Parameter(Tensor(np.zeros(weight_shape, np.int8)), name="weight", requires_grad=False)
        self.weight_scale = Parameter(Tensor(np.ones(out_channels, np.float32)), name="weight_scale",
                                      requires_grad=False)
        self.bias = Parameter(Tensor(np.zeros(out_channels, np.int32)), name="bias", requires_grad=False)
        self.act_scale = Parameter(Tensor(np.ones(1, np.float32)), name="act_scale", requires_grad=False)
        self.act_zero_point = Parameter(Tensor(np.zeros(1, np.int32)), name="act_zero_point",
                                        requires_grad=False)
        self.weight_scale_shape = per_channel_shape(len(weight_shape))
        self._input_on_grid = False

    def read_quantized_by(self, layer):
        """Take inputs quantized upstream as ``layer`` quantizes its own: share its input scale
        and zero point (one entry in the checkpoint, under ``layer``'s name). Such inputs arrive
        quantized (by a ghost module's concatenation): the layer does not quantize them again,
        which would change nothing."""
        self.act_scale = layer.act_scale
        self.act_zero_point = layer.act_zero_point
        self._input_on_grid = True

    def input_scale(self):
        """The input's scale, 0-d (see primitives.activation_qparams)."""
        return squeeze(self.act_scale)

    def input_zero_point(self):
        """The input's zero point, a 0-d float."""
        return cast(squeeze(self.act_zero_point), ms.float32)

    def dequantized_weight(self):
        return mul(cast(self.weight, ms.float32), reshape(self.weight_scale, self.weight_scale_shape))

    def dequantized_bias(self, scale):
        """The bias for the input ``scale`` (:meth:`input_scale`)."""
        return mul(cast(self.bias, ms.float32), mul(scale, self.weight_scale))


class Int8Conv2d(QuantizedInputConv, _Int8Params):
    """Convolution with int8 weights, int32 bias and a uint8 input, as a deployment runs it.

    ``output_min`` / ``output_max`` hold the observed output range, for exporters.
    """
    accepts_fast_conv = True  # see src.kernels.enable_fast_cpu_path

    def __init__(self, conv):
        super().__init__(conv.weight.shape)
        self.geometry = conv_geometry(conv)
        self.conv_op = framework_conv(self.geometry, conv.weight.shape)
        self.fast_conv = getattr(conv, "fast_conv", None)
        self.output_min = Parameter(Tensor(np.zeros(1, np.float32)), name="output_min", requires_grad=False)
        self.output_max = Parameter(Tensor(np.zeros(1, np.float32)), name="output_max", requires_grad=False)

    def construct(self, x):
        return self.output(x, False)

    def output(self, x, relu):
        """The layer's output, then a ReLU with ``relu`` (a constant)."""
        scale = self.input_scale()
        return self._quantized_input_convolution(x, scale, self.input_zero_point(), self.dequantized_weight(),
                                                 self.dequantized_bias(scale), relu)


class Int8Dense(_Int8Params):
    def __init__(self, dense):
        super().__init__(dense.weight.shape)

    def construct(self, x):
        scale = self.input_scale()
        x = fake_quant_activation(x, scale, self.input_zero_point(), self.fast_quant)
        return ops.matmul(x, self.dequantized_weight().T) + self.dequantized_bias(scale)


class Int8ConcatQuant(nn.Cell):
    """uint8 quantization of a concatenation's parts with one scale and zero point: the input
    quantization of ``layer``, which reads the first part (see
    :class:`src.quant.fake_quant.ConcatQuant`)."""
    accepts_fast_quant = True  # see src.kernels.enable_fast_cpu_path

    def __init__(self, layer):
        super().__init__()
        self.layer = layer
        self.fast_quant = None

    def construct(self, x):
        layer = self.layer
        return fake_quant_activation(x, layer.input_scale(), layer.input_zero_point(), self.fast_quant)

    def concat(self, primary, quantized, cheap):
        """A ghost module's output: ``quantized`` (``primary`` through this quantization) and
        ``cheap`` quantized, concatenated (see :meth:`src.quant.ConcatQuant.concat`)."""
        return ops.cat((quantized, self.construct(cheap)), axis=1)
