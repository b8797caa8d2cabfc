"""Compiled CPU kernels and the fast CPU path (see :mod:`src.kernels.fast_cpu`)."""
from src.kernels.fast_cpu import (apply_conv, conv_geometry, cpu_flags, enable_fast_cpu_path,
                                  fuse_relu_for_inference)

__all__ = ["apply_conv", "conv_geometry", "cpu_flags", "enable_fast_cpu_path", "fuse_relu_for_inference"]
