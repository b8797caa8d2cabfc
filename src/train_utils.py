"""Pieces of the training loop: optimizer, distributed set-up and checkpoint files."""
import glob
import hashlib
import json
import logging
import math
import os

import mindspore as ms
import mindspore.nn as nn
import numpy as np
from mindspore.communication import get_group_size, get_rank, init

from src.checkpoint import describe_non_finite, load_strict, non_finite_names, read_checkpoint, save_params
from src.errors import CheckpointError, TrainingDiverged
from src.kernels.fast_cpu import CompiledMomentum, momentum_update_op
from src.outputs import write_text

logger = logging.getLogger(__name__)

EPOCH_CHECKPOINT = "ghostnet-epoch{epoch}.ckpt"
BEST_CHECKPOINT = "ghostnet-best.ckpt"
FINAL_CHECKPOINT = "ghostnet-final.ckpt"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"


def init_distributed(run_distribute):
    """Return ``(rank, group_size)``; with ``run_distribute`` join the group msrun started."""
    if not run_distribute:
        return 0, 1
    init()
    rank, group_size = get_rank(), get_group_size()
    # src.launch names a worker that ended badly by this line in its log
    logger.info("[rank %d] worker process id %d", rank, os.getpid())
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 parameter_broadcast=True, device_num=group_size)
    return rank, group_size


def no_decay(name):
    """BatchNorm parameters and biases are not weight-decayed."""
    return name.endswith(("gamma", "beta", "bias"))


def build_optimizer(net, learning_rates, momentum, weight_decay, loss_scale, compiled=True):
    """SGD with momentum for gradients scaled by ``loss_scale`` (TrainOneStepCell's ``sens``).
    The decay is PyTorch SGD's ``weight_decay`` at any loss scale (tested). ``compiled``: on
    the CPU, the update runs in one compiled operator (:class:`CompiledMomentum`)."""
    params = net.trainable_params()
    update_op = momentum_update_op() if compiled else None
    if update_op is not None:  # the same update in one compiled operator
        decays = [0.0 if no_decay(p.name) else weight_decay for p in params]
        return CompiledMomentum(params, ms.Tensor(learning_rates), momentum, decays, loss_scale, update_op)
    groups = [{"params": [p for p in params if not no_decay(p.name)], "weight_decay": weight_decay},
              {"params": [p for p in params if no_decay(p.name)], "weight_decay": 0.0},
              {"order_params": params}]
    return nn.Momentum(groups, ms.Tensor(learning_rates), momentum, loss_scale=loss_scale)


def training_state(net, optimizer, epoch, global_step, best_top1, epoch_step=0, epoch_loss_sum=0.0):
    """A checkpoint's content: network, momentum, and the position: ``epoch`` epochs done, and
    where a run stopped in the middle of the next one, its ``epoch_step`` steps done, whose
    losses sum to ``epoch_loss_sum``."""
    params = {name: p for name, p in net.parameters_and_names()}
    params.update({p.name: p for p in optimizer.moments})
    params["train_state.epoch"] = ms.Tensor(np.array([epoch], np.int32))
    params["train_state.global_step"] = ms.Tensor(np.array([global_step], np.int32))
    params["train_state.best_top1"] = ms.Tensor(np.array([best_top1], np.float32))
    if epoch_step:
        params["train_state.epoch_step"] = ms.Tensor(np.array([epoch_step], np.int32))
        params["train_state.epoch_loss_sum"] = ms.Tensor(np.array([epoch_loss_sum], np.float64))
    return params


def position_in_epoch(state):
    """``(steps done, their loss sum)`` of the epoch a checkpoint stopped in; (0, 0.0) at an
    epoch's end."""
    if "train_state.epoch_step" not in state:
        return 0, 0.0
    return (int(state["train_state.epoch_step"].asnumpy()[0]),
            float(state["train_state.epoch_loss_sum"].asnumpy()[0]))


def check_parameters_finite(net, optimizer, epoch):
    """Raise TrainingDiverged when a parameter or momentum holds NaN or inf (a loss can stay
    finite while BatchNorm statistics and weights overflow). Cheap: one float64 sum over all of
    them, which float32 values cannot overflow, so it is finite exactly when they all are."""
    params = dict(net.parameters_and_names())
    params.update({p.name: p for p in optimizer.moments})
    total = sum(float(np.sum(p.asnumpy(), dtype=np.float64)) for p in params.values())
    if math.isfinite(total):
        return
    raise TrainingDiverged(
        f"parameters became non-finite in epoch {epoch}: {describe_non_finite(non_finite_names(params), len(params))}; "
        "no checkpoint was written for this epoch. Lower --lr or --loss_scale, or --resume from the "
        "last good checkpoint.")


class CheckpointKeeper:
    """Epoch checkpoints (the last ``keep``), the best by eval top-1, and the final one."""

    def __init__(self, output_dir, keep):
        self.output_dir = output_dir
        self.keep = keep

    def epoch_checkpoints(self):
        return sorted(glob.glob(os.path.join(self.output_dir, "ghostnet-epoch*.ckpt")))

    def save_epoch(self, params, epoch):
        name = f"{epoch:04d}" if isinstance(epoch, int) else epoch
        path = os.path.join(self.output_dir, EPOCH_CHECKPOINT.format(epoch=name))
        save_params(params, path)  # atomically, and never with NaN or inf
        if isinstance(epoch, int):  # the epoch is complete: checkpoints of its middle are done with
            for stopped in glob.glob(os.path.join(self.output_dir, EPOCH_CHECKPOINT.format(epoch=f"{epoch:04d}-step*"))):
                os.remove(stopped)
        for old in self.epoch_checkpoints()[:-self.keep]:
            os.remove(old)
        return path

    def save_epoch_step(self, params, epoch, step):
        """A checkpoint in the middle of ``epoch`` (a run stopped on a signal), kept and pruned
        with the epoch checkpoints (its name sorts before the epoch's own)."""
        return self.save_epoch(params, f"{epoch:04d}-step{step:05d}")

    def save_named(self, params, name):
        path = os.path.join(self.output_dir, name)
        save_params(params, path)  # atomically, and never with NaN or inf
        return path

    def newest(self):
        """The epoch checkpoint with the highest global step stored inside it, or None (only the
        step is read from each)."""
        best, best_step = None, -1
        for path in self.epoch_checkpoints():
            state = read_checkpoint(path, names=lambda name: name.startswith("train_state."))
            if "train_state.global_step" not in state:
                logger.warning("%s holds no training state; it cannot be resumed from", path)
                continue
            step = int(state["train_state.global_step"].asnumpy()[0])
            if step > best_step:
                best, best_step = path, step
        return best


class TrainingHistory:
    """The run's figures per epoch (loss, learning rate, images/s, eval top-1) in history.json
    beside the checkpoints, rewritten atomically after every epoch. A resumed run keeps the
    entries up to the epoch it resumes from; a new run starts an empty one."""

    def __init__(self, output_dir, start_epoch=0):
        self.path = os.path.join(output_dir, HISTORY_FILE)
        self.epochs = []
        if start_epoch and os.path.isfile(self.path):
            try:
                with open(self.path, encoding="utf-8") as f:
                    self.epochs = [e for e in json.load(f)["epochs"] if e["epoch"] <= start_epoch]
            except (ValueError, KeyError, TypeError) as err:
                logger.warning("%s is unreadable (%s): the history restarts at epoch %d",
                               self.path, err, start_epoch + 1)
            self._write()  # without the epochs after the checkpoint resumed from

    def _write(self):
        write_text(self.path, json.dumps({"epochs": self.epochs}, indent=1) + "\n")

    def add(self, **figures):
        self.epochs.append(figures)
        self._write()


def resume_from(checkpoint, net, optimizer, source="checkpoint"):
    """Load network, momentum and position from a path or a read checkpoint.

    Returns ``(epoch, global_step, best_top1)``.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        source = str(checkpoint)
    report = load_strict(net, checkpoint, source=source)
    state = report.training_state
    moments = {p.name: p for p in optimizer.moments}
    missing = [name for name in moments if name not in state]
    if missing:
        raise CheckpointError(f"{source} has no optimizer state ({len(missing)} momentum tensors missing, "
                              f"first {missing[0]}), so it cannot be resumed: start a new run with "
                              f"--pretrained {source} in another --output_dir")
    for name, moment in moments.items():
        moment.set_data(ms.Tensor(state[name].asnumpy()))
    global_step = int(state["train_state.global_step"].asnumpy()[0])
    optimizer.global_step.set_data(ms.Tensor(np.array([global_step], np.int32)))
    return (int(state["train_state.epoch"].asnumpy()[0]), global_step,
            float(state["train_state.best_top1"].asnumpy()[0]))


def parameter_fingerprint(net):
    """A short hash of the trainable parameters: equal on all workers of a healthy data-parallel run.

    BatchNorm running statistics are left out: each worker computes them on its own shard
    (rank 0's are the ones saved).
    """
    digest = hashlib.sha256()
    for name, param in net.parameters_and_names():
        if not param.requires_grad:
            continue
        digest.update(name.encode())
        digest.update(param.asnumpy().tobytes())
    return digest.hexdigest()[:16]
