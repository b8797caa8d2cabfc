"""Train or fine-tune GhostNet on an Oxford-IIIT Pet MindRecord, in float or int8.

    python train.py --dataset_path OUT_DIR/train.mindrecord [--eval_dataset_path OUT_DIR/test.mindrecord]
                    [--pretrained CKPT] [--output_dir DIR] [--resume] [--run_distribute] [--KEY VALUE ...]

int8: ``--quant --pretrained FLOAT.ckpt --epoch_size 0`` calibrates on ``--calib_batches``
training batches and writes ghostnet-int8.ckpt ("without finetune"); with ``--epoch_size E``
it then fine-tunes E epochs ("with finetune") at ``--quant_lr``.

Every key of the training configuration (src/config.py) is a flag; the effective
configuration is logged and saved as config.json beside the checkpoints.
"""
import argparse
import contextlib
import logging
import math
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass

import src  # noqa: F401  (before MindSpore: sets OMP_WAIT_POLICY, see src/__init__.py)
import mindspore as ms
import mindspore.dataset as ds
import mindspore.nn as nn
import numpy as np

from src.checkpoint import CheckpointKind, load_strict, read_checkpoint, require_kind, save_params
from src.cli import add_device_argument, run_script, set_device, setup_logging
from src.config import (REFERENCE_BATCH, add_config_arguments, check_resume_config, config_from_args,
                        validate)
from src.dataset import batches, check_num_classes, copy_class_names, create_dataset
from src.errors import CheckpointError, ConfigError, DatasetError, OutputError, TrainingDiverged, UserError
from src.evaluation import evaluate
from src.ghostnet import GhostNet, dropout_mask
from src.kernels import enable_fast_cpu_path
from src.lr_generator import get_lr
from src.outputs import LOCK_FILE, FolderLock, output_folder, write_text
from src.plots import draw_history_if_possible
from src.quant import calibrate, int8_params, prepare, set_bn_frozen, set_observers_frozen
from src.train_utils import (BEST_CHECKPOINT, CONFIG_FILE, FINAL_CHECKPOINT, CheckpointKeeper,
                             TrainingHistory, build_optimizer, check_parameters_finite,
                             init_distributed, parameter_fingerprint, position_in_epoch, resume_from,
                             training_state)

logger = logging.getLogger("train")
INT8_CHECKPOINT = "ghostnet-int8.ckpt"
INT8_CALIBRATED_CHECKPOINT = "ghostnet-int8-calibrated.ckpt"


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataset_path", required=True, help="train.mindrecord written by src.dataset")
    parser.add_argument("--eval_dataset_path", default=None,
                        help="test.mindrecord: evaluate after every epoch and keep the best checkpoint")
    add_device_argument(parser)
    parser.add_argument("--pretrained", default=None,
                        help="checkpoint to start from (src.convert_weights output or ours); a "
                             "classifier of another size is re-initialised (float only)")
    parser.add_argument("--output_dir", default="output", help="folder for checkpoints and config.json")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in --output_dir")
    parser.add_argument("--run_distribute", action="store_true",
                        help="data-parallel training in a group started by msrun "
                             "(scripts/run_distribute_train.sh)")
    parser.add_argument("--quant", action="store_true",
                        help="int8: calibrate --pretrained, then fine-tune --epoch_size epochs")
    add_config_arguments(parser)
    return parser


def load_pretrained(net, path, quant):
    """Float training takes a float checkpoint (any classifier size); int8 a float or fake-quant one."""
    params = read_checkpoint(path)
    if not quant:
        require_kind(path, params, (CheckpointKind.FLOAT,), "--pretrained takes a float checkpoint "
                     "(to fine-tune int8 weights add --quant; eval.py evaluates int8 checkpoints)")
        report = load_strict(net, params, allow_new_classifier=True, source=path)
        logger.info("loaded %d parameters from %s", report.loaded, path)
        return net, False
    kind = require_kind(path, params, (CheckpointKind.FLOAT, CheckpointKind.FAKE_QUANT),
                        "--quant --pretrained takes a float checkpoint to quantize, or a fake-quant "
                        "one (ghostnet-epoch*.ckpt of an earlier --quant run)")
    if kind == CheckpointKind.FLOAT:
        load_strict(net, params, source=path)
        return prepare(net), False
    net = prepare(net)
    load_strict(net, params, source=path)
    return net, True


@dataclass
class EpochResult:
    loss_sum: float  # over the epoch's steps so far, those before a resume included
    steps: int  # the epoch's steps done, those before a resume included
    images_per_second: float
    stopped: bool  # a stop was asked for (StopRequest): the epoch is not complete


class LossWithDropoutMask(nn.Cell):
    """The training loss, with the classifier's dropout mask as an input: train.py draws each
    step's mask from the seed, the worker and the step (``src.ghostnet.dropout_mask``), so that
    a run resumed at any step trains as a run never stopped does."""

    def __init__(self, net, loss_fn):
        super().__init__(auto_prefix=False)  # parameter names stay the network's
        self.net = net
        self.loss_fn = loss_fn

    def construct(self, images, labels, mask):
        return self.loss_fn(self.net.forward_head(self.net.forward_features(images), mask), labels)


def train_one_epoch(train_net, dataset, dataset_path, epoch, config, global_step, learning_rates,
                    resume_at=0, loss_sum=0.0, stop=None, rank=0):
    """Run one epoch from step ``resume_at`` (the batches before it are read and passed over:
    the same seed gives the same batches, in order) and return an :class:`EpochResult`. Stops
    at a NaN or infinite loss, at an image or a file that cannot be read (named in one line),
    and after the step in progress when ``stop`` is asked for."""
    train_net.set_train(True)
    steps = dataset.get_dataset_size()
    losses, start, step = [], time.time(), resume_at
    for step, (images, labels) in enumerate(batches(dataset, dataset_path), 1):
        if step <= resume_at:
            continue
        mask = dropout_mask(config.dropout, images.shape[0], (config.seed, rank, global_step + step))
        loss = float(train_net(images, labels, ms.Tensor(mask)).asnumpy())
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {loss} at epoch {epoch + 1}, step {step} (learning rate "
                f"{learning_rates[min(global_step + step - 1, len(learning_rates) - 1)]:.5f}); no "
                "checkpoint was written for this epoch. Lower --lr or --loss_scale, or --resume "
                "from the last good checkpoint.")
        losses.append(loss)
        if step % config.log_every == 0 or step == steps:
            logger.info("epoch %d step %d/%d loss %.4f", epoch + 1, step, steps,
                        np.mean(losses[-config.log_every:]))
        if stop is not None and stop.asked and step < steps:
            break
    elapsed = max(time.time() - start, 1e-9)
    return EpochResult(loss_sum + float(np.sum(losses)), step, len(losses) * config.batch_size / elapsed,
                       stopped=stop is not None and stop.asked and step < steps)


class StopRequest:
    """SIGTERM (what a cluster scheduler or a spot machine sends before it kills) or Ctrl-C:
    the run stops after the step in progress and writes where it is; a second signal stops at
    once (KeyboardInterrupt)."""
    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signal = None
        self.previous = {}

    @property
    def asked(self):
        return self.signal is not None

    def _handle(self, signum, frame):
        if self.asked:
            raise KeyboardInterrupt
        self.signal = signum
        logger.warning("%s received: stopping after this step (again to stop at once)",
                       signal.Signals(signum).name)

    def __enter__(self):
        for number in self.SIGNALS:
            self.previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc):
        for number, handler in self.previous.items():
            signal.signal(number, handler)


class Stopped(UserError):
    """The run stopped on a signal after writing where it was; exits with 128 + the signal."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.exit_code = 128 + signum


def resume_command():
    argv = [os.path.relpath(sys.argv[0]) if os.path.isabs(sys.argv[0]) else sys.argv[0], *sys.argv[1:]]
    return shlex.join(["python", *argv] + ([] if "--resume" in argv else ["--resume"]))


def main(args):
    config = validate(config_from_args(args))
    set_device(args.device_target)  # before init(): MindSpore refuses it afterwards
    rank, group_size = init_distributed(args.run_distribute)
    setup_logging(rank)
    ms.set_seed(config.seed)  # identical initial weights on every worker
    logger.info("configuration:\n%s", config.to_json())
    if args.quant and not args.pretrained:
        raise CheckpointError("--quant needs --pretrained: the float checkpoint to quantize")
    if config.epoch_size == 0 and not args.quant:
        raise ConfigError("--epoch_size 0 trains nothing (it only makes sense with --quant)")
    # one run per folder: rank 0 writes there and holds it until the end
    lock = FolderLock(args.output_dir, "--output_dir") if rank == 0 else contextlib.nullcontext()
    cleanup = nothing_left_without_a_checkpoint(args.output_dir) if rank == 0 else contextlib.nullcontext()
    # one process: a signal stops it after the step in progress. The workers of a distributed run
    # would each stop at another step (and wait for the others for ever): there a signal ends
    # the run at once, as in any script (src.cli.run_script), and --resume goes on from the
    # last epoch checkpoint
    stop_request = StopRequest() if group_size == 1 else contextlib.nullcontext()
    with output_folder(args.output_dir, "--output_dir"), lock, cleanup, stop_request as stop:
        try:
            return train(args, config, rank, group_size, stop)
        except OutputError as err:
            newest = CheckpointKeeper(args.output_dir, config.keep_checkpoint_max).newest()
            kept = (f"the last complete checkpoint, {newest}, is kept: once the folder can be written, "
                    "run the same command with --resume to continue from it") if newest else \
                "no checkpoint was written yet"
            raise OutputError(f"{err}. {kept[0].upper()}{kept[1:]}") from None


def save_where_stopped(keeper, net, optimizer, epoch, global_step, best_top1, result, stop):
    """Write a checkpoint of the step reached and raise :class:`Stopped` with the command that
    goes on from it (one-process runs only: see main)."""
    name = signal.Signals(stop.signal).name
    state = training_state(net, optimizer, epoch, global_step, best_top1, epoch_step=result.steps,
                           epoch_loss_sum=result.loss_sum)
    path = keeper.save_epoch_step(state, epoch + 1, result.steps)
    raise Stopped(f"{name}: stopped at epoch {epoch + 1}, step {result.steps}; wrote {path}. Continue with: "
                  f"{resume_command()}", stop.signal)


@contextlib.contextmanager
def nothing_left_without_a_checkpoint(output_dir):
    """A run that fails before any checkpoint is in ``output_dir`` removes the files it wrote
    there (config.json, class_names.txt, history): a failed start leaves nothing behind."""
    before = set(os.listdir(output_dir))
    try:
        yield
    except BaseException:
        left = set(os.listdir(output_dir))
        if not any(name.endswith(".ckpt") for name in left):
            for name in left - before - {LOCK_FILE}:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(output_dir, name))
        raise


def train(args, config, rank, group_size, stop=None):
    keeper = CheckpointKeeper(args.output_dir, config.keep_checkpoint_max)
    saved_config = os.path.join(args.output_dir, CONFIG_FILE)
    if args.resume and keeper.epoch_checkpoints() and os.path.isfile(saved_config):
        check_resume_config(saved_config, config, group_size)

    # data
    check_num_classes(args.dataset_path, config.num_classes)
    if args.eval_dataset_path and rank == 0:  # now, not after the first epoch's training
        check_num_classes(args.eval_dataset_path, config.num_classes)

    def train_data(epoch):
        ds.config.set_seed(config.seed + epoch)  # read when the epoch's iterator starts
        return create_dataset(args.dataset_path, train=True, image_size=config.image_size,
                              batch_size=config.batch_size, num_workers=config.num_workers)
    steps_per_epoch = train_data(0).get_dataset_size()
    if steps_per_epoch == 0:
        raise DatasetError(f"{args.dataset_path} has fewer images per worker than --batch_size "
                           f"{config.batch_size}; lower --batch_size")
    eval_data = None
    if args.eval_dataset_path and rank == 0:
        eval_data = create_dataset(args.eval_dataset_path, train=False, image_size=config.image_size,
                                   batch_size=config.batch_size, num_workers=config.num_workers)

    # model
    net = GhostNet(width=config.width, num_classes=config.num_classes, dropout=config.dropout)
    calibrated = False
    if args.pretrained:
        net, calibrated = load_pretrained(net, args.pretrained, args.quant)
    enable_fast_cpu_path(net)  # on CPU: depthwise and stem convolutions, BatchNorm etc. on compiled kernels

    # optimizer
    peak_lr = config.scaled_lr(group_size, args.quant)
    warmup = 0 if args.quant else config.warmup_epochs
    learning_rates = get_lr(peak_lr, config.epoch_size, steps_per_epoch, warmup, config.lr_end,
                            config.lr_schedule, config.lr_step_epochs, config.lr_step_gamma)
    logger.info("peak learning rate %.5f (--%s %g x global batch %d / %d), %d steps per epoch",
                peak_lr, "quant_lr" if args.quant else "lr", config.quant_lr if args.quant else config.lr,
                config.batch_size * group_size, REFERENCE_BATCH, steps_per_epoch)
    optimizer = build_optimizer(net, learning_rates if len(learning_rates) else np.zeros(1, np.float32),
                                config.momentum, config.weight_decay, config.loss_scale)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smooth)

    def training_step():
        return nn.TrainOneStepCell(LossWithDropoutMask(net, loss_fn), optimizer, sens=config.loss_scale)

    train_net = training_step()

    # resume
    start_epoch, global_step, best_top1 = 0, 0, -1.0
    resume_at, loss_sum = 0, 0.0  # a run stopped in the middle of an epoch goes on from that step
    newest = keeper.newest() if args.resume else None
    if newest:
        state = read_checkpoint(newest)
        if args.quant != (CheckpointKind.of(state) == CheckpointKind.FAKE_QUANT):
            raise CheckpointError(f"{newest} was written by a {'float' if args.quant else '--quant'} "
                                  f"run; resume it with{'out' if args.quant else ''} --quant")
        start_epoch, global_step, best_top1 = resume_from(state, net, optimizer, source=newest)
        resume_at, loss_sum = position_in_epoch(state)
        calibrated = args.quant
        logger.info("resumed from %s: epoch %d, step %d%s", newest, start_epoch, global_step,
                    f" (step {resume_at} of epoch {start_epoch + 1})" if resume_at else "")
    elif args.resume:
        logger.info("no checkpoint in %s yet: starting from the beginning", args.output_dir)
    elif keeper.epoch_checkpoints():
        raise CheckpointError(f"{args.output_dir} already holds checkpoints "
                              f"({keeper.epoch_checkpoints()[-1]}); pass "
                              "--resume to continue that run or choose another --output_dir")
    if rank == 0:
        write_text(saved_config, config.to_json(workers=group_size, pretrained=args.pretrained,
                                                quant=args.quant, dataset_path=args.dataset_path))
        copy_class_names(args.dataset_path, args.output_dir)  # classify.py names breeds from it

    # int8 calibration ("without finetune")
    if args.quant and not calibrated:
        calibration_data = create_dataset(args.dataset_path, train=False, image_size=config.image_size,
                                          batch_size=config.batch_size, num_workers=config.num_workers)
        calibrate(net, batches(calibration_data, args.dataset_path), config.calib_batches)
        if rank == 0:
            name = INT8_CHECKPOINT if config.epoch_size == 0 else INT8_CALIBRATED_CHECKPOINT
            save_params(int8_params(net), os.path.join(args.output_dir, name))
            message = f"int8 calibrated on {config.calib_batches} batches: {name}"
            if eval_data is not None:
                top1 = evaluate(net, eval_data, args.eval_dataset_path, log_progress=False)["top1"]
                message += f", eval top-1 {top1:.4f}"
            logger.info(message)
        if stop is not None and stop.asked and config.epoch_size > 0:
            raise Stopped(f"{signal.Signals(stop.signal).name}: stopped after calibration; wrote "
                          f"{os.path.join(args.output_dir, name)}. "
                          f"Continue with: {resume_command()}", stop.signal)

    # loop
    history = TrainingHistory(args.output_dir, start_epoch) if rank == 0 else None
    for epoch in range(start_epoch, config.epoch_size):
        if args.quant:
            switched = [set_bn_frozen(net, epoch >= config.quant_bn_freeze_epoch),
                        set_observers_frozen(net, epoch >= config.quant_observer_freeze_epoch)]
            if any(switched):
                train_net = training_step()  # freezing is read when the step compiles: compile anew
        skipped = resume_at if epoch == start_epoch else 0
        result = train_one_epoch(train_net, train_data(epoch), args.dataset_path, epoch, config, global_step - skipped,
                                 learning_rates, skipped, loss_sum if skipped else 0.0, stop, rank)
        global_step += result.steps - skipped
        check_parameters_finite(net, optimizer, epoch + 1)  # before anything is evaluated or saved
        if result.stopped:
            save_where_stopped(keeper, net, optimizer, epoch, global_step, best_top1, result, stop)
        loss, speed = result.loss_sum / result.steps, result.images_per_second
        message = (f"epoch {epoch + 1}/{config.epoch_size}: loss {loss:.4f}, "
                   f"lr {learning_rates[global_step - 1]:.5f}, {speed * group_size:.1f} images/s")
        if rank != 0:
            logger.info(message)
            continue
        top1 = None
        if eval_data is not None:
            top1 = evaluate(net, eval_data, args.eval_dataset_path, log_progress=False)["top1"]
            message += f", eval top-1 {top1:.4f}"
        logger.info(message)
        history.add(epoch=epoch + 1, loss=loss, lr=float(learning_rates[global_step - 1]),
                    images_per_second=speed * group_size, top1=top1)
        state = training_state(net, optimizer, epoch + 1, global_step,
                               best_top1 if top1 is None else max(best_top1, top1))
        path = keeper.save_epoch(state, epoch + 1)
        if top1 is not None and top1 > best_top1:
            best_top1 = top1
            keeper.save_named(state, BEST_CHECKPOINT)
        if stop is not None and stop.asked and epoch + 1 < config.epoch_size:  # came during eval or the save
            raise Stopped(f"{signal.Signals(stop.signal).name}: stopped after epoch {epoch + 1}; wrote {path}. "
                          f"Continue with: {resume_command()}", stop.signal)
    logger.info("trainable parameter fingerprint (equal on every worker): %s", parameter_fingerprint(net))
    if rank == 0 and config.epoch_size > 0:
        path = keeper.save_named(training_state(net, optimizer, config.epoch_size, global_step,
                                                best_top1), FINAL_CHECKPOINT)
        if args.quant:
            net.set_train(False)
            path = os.path.join(args.output_dir, INT8_CHECKPOINT)
            save_params(int8_params(net), path)
        logger.info("final checkpoint %s%s", path,
                    f" (best eval top-1 {best_top1:.4f})" if best_top1 >= 0 else "")
        draw_history_if_possible(args.output_dir)  # loss, lr and eval top-1 per epoch
    return net


if __name__ == "__main__":
    run_script(main, get_args_parser(), logger)
