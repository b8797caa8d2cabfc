"""Convert a timm GhostNet state dict into a MindSpore checkpoint for :class:`GhostNet`.

    python -m src.convert_weights --input ghostnet_100.safetensors --output ghostnet_100.ckpt

Every source tensor must be used and every network parameter filled; otherwise the
conversion stops and names what is left over or missing.
"""
import argparse
import logging
import os

import numpy as np

from src.checkpoint import save_params
from src.cli import add_width_argument, run_script
from src.errors import CheckpointError, MissingPackageError
from src.ghostnet import GhostNet, timm_to_zoo_name

logger = logging.getLogger("convert_weights")


def read_state_dict(path):
    """Read a timm state dict from ``.safetensors`` (preferred) or ``.pth``/``.pt``."""
    if not os.path.isfile(path):
        raise CheckpointError(f"input not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file
        try:
            return load_file(path)
        except Exception as err:  # safetensors raises its own error type for a damaged file
            raise CheckpointError(f"cannot read {path}: {str(err).splitlines()[0]}") from None
    if path.endswith((".pth", ".pt", ".bin")):
        try:
            import torch
        except ImportError as err:
            raise MissingPackageError(
                f"{path} is a PyTorch file and torch is not installed. Install it "
                "(pip install torch) or save the state dict as .safetensors "
                "(safetensors.torch.save_file(model.state_dict(), 'w.safetensors')).") from err
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a damaged file, or one holding more than tensors
            raise CheckpointError(f"cannot read {path} as a state dict of tensors: "
                                  f"{str(err).splitlines()[0]}") from None
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
        return {k: v.float().numpy() for k, v in state.items() if hasattr(v, "numpy")}
    raise CheckpointError(f"{path}: unknown format; expected .safetensors, .pth or .pt")


def convert(state_dict, net):
    """Return ``{our name: ndarray}`` filling every parameter of ``net``.

    Raises :class:`CheckpointError` naming unused source tensors, unfilled parameters and
    shape mismatches.
    """
    targets = {name: tuple(p.shape) for name, p in net.parameters_and_names()}
    converted, unused = {}, []
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        name = timm_to_zoo_name(key)
        if name not in targets:
            unused.append(key)
            continue
        converted[name] = np.asarray(value, dtype=np.float32)
    missing = [n for n in targets if n not in converted]
    mismatched = [f"{n} {converted[n].shape} vs network {targets[n]}"
                  for n in converted if converted[n].shape != targets[n]]
    if unused or missing or mismatched:
        problems = []
        if unused:
            problems.append(f"source tensors with no place in the network: {', '.join(unused)}")
        if missing:
            problems.append(f"network parameters with no source tensor: {', '.join(missing)}")
        if mismatched:
            problems.append(f"shape mismatches: {', '.join(mismatched)}")
        raise CheckpointError("; ".join(problems))
    return converted


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--input", required=True,
                        help="timm GhostNet state dict (.safetensors, or .pth/.pt with torch)")
    parser.add_argument("--output", required=True, help="MindSpore checkpoint to write (.ckpt)")
    add_width_argument(parser, help="width multiplier of the source model")
    parser.add_argument("--num_classes", type=int, default=None,
                        help="classes of the source classifier (default: read from the file)")
    return parser


def main(args):
    state = read_state_dict(args.input)
    num_classes = args.num_classes
    if num_classes is None:
        if "classifier.weight" not in state:
            raise CheckpointError(f"{args.input} has no classifier.weight; pass --num_classes")
        num_classes = int(state["classifier.weight"].shape[0])
    net = GhostNet(width=args.width, num_classes=num_classes)
    params = convert(state, net)
    save_params(params, args.output)
    logger.info("wrote %s: %d tensors, GhostNet width %s, %d classes",
                args.output, len(params), args.width, num_classes)


if __name__ == "__main__":
    run_script(main, get_args_parser(), logger)
