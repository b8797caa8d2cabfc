"""Pictures of a run: training history, a confusion matrix, a quantization report (PNG files).

    python -m src.plots RUN_DIR [RUN_DIR ...]     # RUN_DIR/history.png from its history.json

matplotlib is an optional extra (``pip install -r requirements-plots.txt``); without it a
drawing function raises :class:`~src.errors.MissingPackageError` naming that command, and
train.py and eval.py write their JSON files and say that the picture was left out.
"""
import argparse
import io
import json
import logging
import os

import numpy as np

from src.cli import run_script
from src.errors import DatasetError, MissingPackageError
from src.outputs import write_atomically
from src.train_utils import HISTORY_FILE

logger = logging.getLogger(__name__)

PLOTS_INSTALL_HINT = "pip install -r requirements-plots.txt (matplotlib)"
HISTORY_PICTURE = "history.png"


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    try:
        import matplotlib
    except ImportError:
        raise MissingPackageError(f"drawing pictures needs matplotlib, which is not installed: "
                                  f"{PLOTS_INSTALL_HINT}") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(figure, path):
    """Write ``figure`` as a PNG, atomically; the figure is closed."""
    plt = pyplot()
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(figure)

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(buffer.getvalue())
    return write_atomically(path, write)


def read_history(run_dir):
    """The epochs of ``run_dir/history.json`` (train.py writes it after every epoch)."""
    path = os.path.join(run_dir, HISTORY_FILE)
    if not os.path.isfile(path):
        raise DatasetError(f"{path} not found: pass a folder that train.py wrote (its --output_dir)")
    try:
        with open(path, encoding="utf-8") as f:
            epochs = json.load(f)["epochs"]
        return [dict(e) for e in epochs if isinstance(e["epoch"], int)]
    except (ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"{path} is not a history train.py wrote ({err})") from None


def draw_history(run_dir, path=None):
    """``run_dir/history.png``: loss, learning rate and eval top-1 per epoch. Returns its path."""
    epochs = read_history(run_dir)
    if not epochs:
        raise DatasetError(f"{os.path.join(run_dir, HISTORY_FILE)} holds no epoch yet")
    plt = pyplot()
    x = [e["epoch"] for e in epochs]
    panels = [("training loss (epoch mean)", "loss"), ("learning rate (epoch end)", "lr")]
    if any(e.get("top1") is not None for e in epochs):
        panels.append(("eval top-1", "top1"))
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), layout="constrained")
    for ax, (title, key) in zip(np.atleast_1d(axes), panels):
        points = [(epoch, e[key]) for epoch, e in zip(x, epochs) if e.get(key) is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if key == "top1" and points:
            best = max(points, key=lambda p: p[1])
            ax.annotate(f"best {best[1]:.4f}", best, textcoords="offset points", xytext=(0, -14),
                        ha="center", fontsize=8)
    figure.suptitle(os.path.abspath(run_dir), fontsize=9)
    return save_figure(figure, path or os.path.join(run_dir, HISTORY_PICTURE))


def draw_history_if_possible(run_dir):
    """:func:`draw_history`, or a warning where matplotlib is missing (the run itself is done)."""
    try:
        path = draw_history(run_dir)
    except Exception as err:  # pylint: disable=broad-except (a picture never fails a finished run)
        logger.warning("no %s: %s", HISTORY_PICTURE, err)
        return None
    logger.info("history picture: %s", path)
    return path


def draw_confusion(confusion, names, path, title="confusion matrix"):
    """A heat map of ``confusion`` (rows: true class, columns: predicted), each row as shares of
    its class's samples, with the counts off the diagonal written in."""
    plt = pyplot()
    confusion = np.asarray(confusion)
    totals = confusion.sum(axis=1, keepdims=True)
    shares = np.divide(confusion, totals, out=np.zeros(confusion.shape), where=totals > 0)
    n = len(names)
    side = min(4 + 0.32 * n, 16)
    figure, ax = plt.subplots(figsize=(side + 1.5, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    font = 8 if n <= 20 else 6
    ax.set_xticklabels(names, rotation=90, fontsize=font)
    ax.set_yticklabels(names, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i, j in zip(*np.nonzero(confusion)):
        if i != j:
            ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=font - 1,
                    color="white" if shares[i, j] > 0.5 else "black")
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_title(title, fontsize=10)
    return save_figure(figure, path)


def draw_quantization_report(rows, path, title="int8 against float, per layer"):
    """Per layer in network order: the layer's own SQNR, the network's up to it, the weights',
    and how much of the input's uint8 range the values use. ``rows``: LayerQuantization rows."""
    plt = pyplot()
    rows = sorted(rows, key=lambda row: row.index)
    x = np.arange(len(rows))

    def finite(values):
        return np.array([v if np.isfinite(v) else np.nan for v in values])

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, 0.16 * len(rows) + 2), 7), sharex=True)
    top.plot(x, finite([r.layer_sqnr for r in rows]), marker="o", markersize=3, label="layer alone")
    top.plot(x, finite([r.network_sqnr for r in rows]), marker=".", markersize=3, label="network up to it")
    top.plot(x, finite([r.weight_sqnr for r in rows]), linestyle=":", label="weights")
    worst = min(rows, key=lambda r: r.layer_sqnr)
    top.annotate(worst.name, (worst.index, worst.layer_sqnr), textcoords="offset points", xytext=(5, -12),
                 fontsize=8, color="crimson")
    top.set_ylabel("SQNR (dB, higher is better)")
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    top.set_title(title, fontsize=10)
    bottom.bar(x, [100 * r.range_used for r in rows], color="tab:green", label="range used")
    bottom.bar(x, [100 * r.clipped for r in rows], color="tab:red", label="values clipped")
    bottom.set_ylabel("% of the input's uint8 range")
    bottom.set_ylim(0, 105)
    bottom.legend(fontsize=8)
    bottom.set_xticks(x)
    bottom.set_xticklabels([r.name for r in rows], rotation=90, fontsize=5)
    return save_figure(figure, path)


def get_args_parser():
    parser = argparse.ArgumentParser(description="Draw history.png (loss, lr, eval top-1 per epoch) "
                                                 "for train.py run folders.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", help="folders train.py wrote (each holds history.json)")
    parser.add_argument("--file_name", default=HISTORY_PICTURE,
                        help="name of the picture written into each run folder")
    return parser


def main(args):
    for run_dir in args.run_dirs:
        print(draw_history(run_dir, os.path.join(run_dir, args.file_name)))


if __name__ == "__main__":
    run_script(main, get_args_parser(), logger)
