"""A float GhostNet made ready for inference: BatchNorm folded, ReLUs fused into kernels."""
from src.kernels import fuse_relu_for_inference


def fold_batchnorm_for_inference(net):
    """Fold every BatchNorm of ``net`` (a GhostNet, any form) into the convolution before it, in
    place, for eval mode only (the moving statistics become weights); outputs stay equal
    within float rounding. The convolutions gain a bias, and on the fast CPU path a depthwise
    convolution also takes the ReLU after it; returns ``net``."""
    net.fold_batchnorms()
    return fuse_relu_for_inference(net)
