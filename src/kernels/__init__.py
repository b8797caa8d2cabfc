"""Compiled CPU kernels (:mod:`src.kernels.library`) and the fast CPU path that uses them
(:mod:`src.kernels.fast_cpu`, :mod:`src.kernels.quant_cpu`)."""
from src.kernels.fast_cpu import (apply_conv, conv_geometry, enable_fast_cpu_path, framework_conv,
                                  fuse_relu_for_inference)
from src.kernels.library import cpu_flags

__all__ = ["apply_conv", "conv_geometry", "cpu_flags", "enable_fast_cpu_path", "framework_conv",
           "fuse_relu_for_inference"]
