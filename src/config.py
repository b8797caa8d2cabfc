"""Training configuration: one dataclass, every key a command-line flag, saved beside checkpoints."""
import dataclasses
import json
import math
from dataclasses import dataclass, field, fields

from src.errors import ConfigError
from src.ghostnet import DROPOUT, WIDTH_CHOICES

REFERENCE_BATCH = 256  # `lr` is the learning rate for this global batch; it scales linearly
# Keys a resumed run may change: they do not alter the schedule, the network or the data order.
RESUMABLE_CHANGES = ("num_workers", "log_every", "keep_checkpoint_max")


@dataclass
class TrainConfig:
    num_classes: int = field(default=37, metadata={"help": "classes of the classifier"})
    width: float = field(default=1.0, metadata={
        "help": f"GhostNet width multiplier ({', '.join(map(str, WIDTH_CHOICES))})"})
    image_size: int = field(default=224, metadata={"help": "side of the training crop"})
    batch_size: int = field(default=128, metadata={"help": "images per batch on each worker"})
    epoch_size: int = field(default=200, metadata={"help": "epochs to train"})
    warmup_epochs: float = field(default=4, metadata={"help": "epochs of linear warm-up"})
    lr: float = field(default=0.4, metadata={
        "help": f"peak learning rate for a global batch of {REFERENCE_BATCH}; the rate used is "
                f"lr * batch_size * workers / {REFERENCE_BATCH}"})
    lr_end: float = field(default=0.0, metadata={
        "help": "learning rate at the end of the schedule (cosine: where it ends; step: its floor)"})
    lr_schedule: str = field(default="cosine", metadata={
        "help": "cosine, step or constant, after the warm-up", "choices": ("cosine", "step", "constant")})
    lr_step_epochs: int = field(default=30, metadata={"help": "step schedule: epochs between decays"})
    lr_step_gamma: float = field(default=0.1, metadata={"help": "step schedule: decay factor"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    weight_decay: float = field(default=4e-5, metadata={
        "help": "L2 weight decay (not applied to BatchNorm parameters and biases)"})
    label_smooth: float = field(default=0.1, metadata={"help": "label smoothing factor"})
    dropout: float = field(default=DROPOUT, metadata={
        "help": "share of the classifier's inputs dropped in training (timm's drop_rate), in [0, 1)"})
    loss_scale: float = field(default=1024.0, metadata={"help": "static loss scale"})
    keep_checkpoint_max: int = field(default=5, metadata={"help": "epoch checkpoints to keep"})
    num_workers: int = field(default=2, metadata={"help": "data loading workers"})
    seed: int = field(default=1, metadata={"help": "random seed (same on every worker)"})
    log_every: int = field(default=20, metadata={"help": "log progress every N steps"})
    calib_batches: int = field(default=10, metadata={
        "help": "--quant: training batches (without augmentation) that set the activation ranges"})
    quant_lr: float = field(default=0.004, metadata={
        "help": f"--quant: peak learning rate of int8 fine-tuning for a global batch of "
                f"{REFERENCE_BATCH}, cosine to lr_end without warm-up"})
    quant_bn_freeze_epoch: int = field(default=2, metadata={
        "help": "--quant: BatchNorm statistics update for this many fine-tuning epochs, then freeze"})
    quant_observer_freeze_epoch: int = field(default=4, metadata={
        "help": "--quant: activation ranges follow the data for this many fine-tuning epochs, then "
                "freeze (0: keep the calibrated ranges)"})

    def scaled_lr(self, group_size, quant=False):
        return (self.quant_lr if quant else self.lr) * self.batch_size * group_size / REFERENCE_BATCH

    def to_json(self, **extra):
        """The configuration (and ``extra`` keys beside it) as JSON text."""
        return json.dumps(dict(dataclasses.asdict(self), **extra), indent=2, sort_keys=True)


def add_config_arguments(parser, config_class=TrainConfig):
    group = parser.add_argument_group("training configuration")
    for f in fields(config_class):
        kwargs = {"default": f.default, "help": f.metadata.get("help", "")}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        group.add_argument(f"--{f.name}", type=f.type, **kwargs)
    return parser


def config_from_args(args, config_class=TrainConfig):
    return config_class(**{f.name: getattr(args, f.name) for f in fields(config_class)})


def at_least_one(values):
    """Problems for ``{flag name: value}`` entries below 1 (None: not given, fine)."""
    return [f"--{name} must be at least 1, got {value}" for name, value in values.items()
            if value is not None and value < 1]


def check_at_least_one(**values):
    """For the scripts' own flags: ``check_at_least_one(batch_size=args.batch_size, ...)``."""
    problems = at_least_one(values)
    if problems:
        raise ConfigError("; ".join(problems))


def validate(config):
    """Reject values that cannot train, naming the flag."""
    problems = [f"--{f.name} must be a finite number, got {getattr(config, f.name)}"
                for f in fields(config) if f.type is float and not math.isfinite(getattr(config, f.name))]
    problems += at_least_one({name: getattr(config, name) for name in
                              ("batch_size", "image_size", "num_classes", "keep_checkpoint_max", "calib_batches")})
    for name in ("epoch_size", "warmup_epochs", "lr", "lr_end", "weight_decay", "loss_scale",
                 "quant_lr", "quant_bn_freeze_epoch", "quant_observer_freeze_epoch"):
        if getattr(config, name) < 0:
            problems.append(f"--{name} must not be negative, got {getattr(config, name)}")
    if not 0 <= config.dropout < 1:
        problems.append(f"--dropout must be in [0, 1), got {config.dropout}")
    if config.width not in WIDTH_CHOICES:
        problems.append(f"--width must be one of {', '.join(map(str, WIDTH_CHOICES))}, got {config.width}")
    if problems:
        raise ConfigError("; ".join(problems))
    return config


def implied_by_older_runs(saved):
    """Keys that a config.json written before they existed lacks, with the values its run had."""
    implied = {}
    if saved.get("quant"):  # activation ranges followed the data to the end
        implied["quant_observer_freeze_epoch"] = saved.get("epoch_size")
    return implied


def check_resume_config(path, config, workers):
    """Refuse to resume the run whose config.json is ``path`` with another schedule, network or
    data set-up: every key but RESUMABLE_CHANGES must keep its value (a key the file lacks,
    the value its run had: :func:`implied_by_older_runs`)."""
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    saved = dict(implied_by_older_runs(saved), **saved)
    current = dict(dataclasses.asdict(config), workers=workers)
    changed = [f"{key} {saved[key]} -> {value}" for key, value in current.items()
               if key in saved and key not in RESUMABLE_CHANGES and saved[key] != value]
    if changed:
        raise ConfigError(
            f"--resume with another configuration than {path}: {', '.join(changed)}. The schedule "
            "would no longer fit the run: pass the saved values to continue it, or start a new run "
            "in another --output_dir")
