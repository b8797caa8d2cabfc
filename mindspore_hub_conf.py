"""MindSpore Hub entry: ``create_network(name, *args, **kwargs)``.

The hub imports this file by path from the package folder, so the folder is put on
``sys.path`` here; it then works from any working directory.
"""
import os
import sys

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
if _PACKAGE_DIR not in sys.path:
    sys.path.insert(0, _PACKAGE_DIR)

from src.ghostnet import GhostNet  # noqa: E402  (needs the path above)


def _float_network(width=1.0, num_classes=37, **kwargs):
    return GhostNet(width=width, num_classes=num_classes, **kwargs)


NETWORKS = {"ghostnet": _float_network}


def create_network(name, *args, **kwargs):
    """Build a network by hub name; kwargs ``width`` (default 1.0) and ``num_classes`` (37)."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; known: {', '.join(sorted(NETWORKS))}")
    return NETWORKS[name](*args, **kwargs)
