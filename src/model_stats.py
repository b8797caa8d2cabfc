"""Counts read off a built network: trainable parameters and multiply-accumulates."""
import mindspore as ms
import mindspore.nn as nn
import numpy as np


def count_trainable_parameters(net):
    return sum(int(p.size) for p in net.trainable_params())


def count_macs(net, image_size=224, in_channels=3):
    """Multiply-accumulates of one image through every Conv2d and Dense of ``net``.

    Runs one PyNative forward with hooks (the mode is restored afterwards), so the figure
    follows the network as built rather than a formula kept beside it.
    """
    macs = []

    def on_conv(cell, args, output):
        kernel = int(np.prod(cell.kernel_size))
        macs.append(int(output.size) * cell.in_channels // cell.group * kernel)

    def on_dense(cell, args, output):
        macs.append(int(output.size) * cell.in_channels)

    previous_mode = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    handles = []
    try:
        for _, cell in net.cells_and_names():
            if isinstance(cell, nn.Conv2d):
                handles.append(cell.register_forward_hook(on_conv))
            elif isinstance(cell, nn.Dense):
                handles.append(cell.register_forward_hook(on_dense))
        was_training = net.training
        net.set_train(False)
        net(ms.Tensor(np.zeros((1, in_channels, image_size, image_size), np.float32)))
        net.set_train(was_training)
    finally:
        for handle in handles:
            handle.remove()
        ms.set_context(mode=previous_mode)
    return sum(macs)
