"""MindSpore Hub entry: ``create_network(name, *args, **kwargs)``.

``"ghostnet"`` is the float network and ``"ghostnet_int8"`` the int8 one (it loads the
int8 checkpoints of ``train.py --quant``); kwargs ``width`` (default 1.0) and
``num_classes`` (37). The hub imports this file by path from the package folder, so the
folder is put on ``sys.path`` here; it then works from any working directory.
"""
import os
import sys

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
if _PACKAGE_DIR not in sys.path:
    sys.path.insert(0, _PACKAGE_DIR)

from src.models import create_network  # noqa: E402,F401  (needs the path above)
