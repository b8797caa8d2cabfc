"""A/B training harness: our GhostNet (train.py) against timm's in PyTorch, same data and recipe.

    python bench/bench_ab.py [--output_dir ab_output] [--seeds 1 2 3] [--epochs 12]
                             [--runners ours timm] [--variant NAME "TRAIN.PY FLAGS"] [--lockstep_steps 30]
                             [--check_repeat] [--data_root PETS_DIR]

Needs torch, timm and torchvision beside this package's requirements (timm's side runs in
its own process, bench/torch_train.py). Two parts:

1. **Lockstep** (``--lockstep_steps``): both networks start from timm's initial weights
   (converted with src.convert_weights) and take the same pre-augmented batches (made once
   by our train pipeline) at the same per-step learning rates, dropout off. Their per-step
   losses must agree closely; a drift is a difference in the network, the loss or the optimizer.
2. **Runs**: every runner trains ``--epochs`` from scratch per seed and is evaluated after
   every epoch. ``ours`` is train.py as a user runs it; ``timm`` is timm's ghostnet with
   torchvision's augmentations and its own initialisation; ``ours-timm-init`` is train.py
   from timm's initial weights of the same seed; ``timm-zoo-init`` is timm's side started
   from our network's initial weights of the same seed; ``plain`` is timm's side in a plain
   loop (pictures decoded once and kept in memory, batches drawn and transformed in the main
   process, no DataLoader); ``--variant NAME "FLAGS"`` adds train.py
   with extra flags, to change one thing at a time. ``--check_repeat`` runs ``ours`` twice
   on the first seed and reports whether the per-epoch losses are identical.

The data is the hard synthetic set (src.sample_data ``--kind hard``: classes one attribute
apart, among distractors and noise) unless ``--data_root`` names a Pets-layout folder. The
recipe is issue 15's: 64 px, batch 32, SGD momentum 0.9, ``--lr`` per 256 images, one
warm-up epoch then cosine, label smoothing 0.1, weight decay 4e-5 (not on BatchNorm and
biases). Prints per-epoch losses and top-1 and writes everything to results.json.
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import src  # noqa: E402,F401  (before MindSpore: sets OMP_WAIT_POLICY)
from src.config import REFERENCE_BATCH  # noqa: E402
from src.outputs import write_text  # noqa: E402
from bench.timing import bench_script, environment_without_omp_wait_policy  # noqa: E402

BUILT_IN_RUNNERS = ("ours", "timm", "plain", "ours-timm-init", "timm-zoo-init")


def torch_command(*flags):
    """bench/torch_train.py with ``flags``, with PyTorch's own OpenMP defaults."""
    return ([sys.executable, bench_script("torch_train.py"), *map(str, flags)],
            environment_without_omp_wait_policy())


def run(argv, env=None, log=None):
    """Run ``argv``, its output into ``log``; raise with the log's tail when it fails."""
    with open(log, "w", encoding="utf-8") as out:
        code = subprocess.call(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if code != 0:
        with open(log, encoding="utf-8") as f:
            tail = "".join(f.readlines()[-15:])
        raise SystemExit(f"{' '.join(argv[:3])} ... failed (exit {code}); the end of {log}:\n{tail}")


# what the cached data, initial weights and runs in --output_dir depend on
RECIPE_KEYS = ("data_root", "train_per_class", "test_per_class", "epochs", "image_size", "batch_size", "lr",
               "momentum", "weight_decay", "label_smooth", "loss_scale")


def check_same_recipe(args):
    """--output_dir keeps data and runs for reuse: refuse it for another recipe or data set."""
    path = os.path.join(args.output_dir, "recipe.json")
    recipe = {key: getattr(args, key) for key in RECIPE_KEYS}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        changed = [f"--{key} {saved.get(key)} -> {value}" for key, value in recipe.items() if saved.get(key) != value]
        if changed:
            raise SystemExit(f"{args.output_dir} holds runs of another recipe ({', '.join(changed)}): "
                             "pass the same values or another --output_dir")
    write_text(path, json.dumps(recipe, indent=1) + "\n")


def make_data(args):
    """``(Pets folder, train.mindrecord, test.mindrecord, classes)``, made once in output_dir."""
    from src.dataset import convert_pets, read_class_names
    from src.sample_data import HARD_CLASSES, make_sample_pets

    root = args.data_root or os.path.join(args.output_dir, "hard_pets")
    mindrecord = os.path.join(args.output_dir, "mindrecord")
    if not args.data_root and not os.path.isdir(root):
        made = make_sample_pets(root + ".partial", num_classes=HARD_CLASSES, train_per_class=args.train_per_class,
                                test_per_class=args.test_per_class, awkward_files=False, seed=0, kind="hard")
        os.replace(root + ".partial", root)
        print(f"hard synthetic set: {made['train']} train / {made['test']} test pictures, "
              f"{HARD_CLASSES} classes, in {root}")
    if not os.path.isfile(os.path.join(mindrecord, "test.mindrecord")):
        convert_pets(root, mindrecord)
    train, test = (os.path.join(mindrecord, f"{split}.mindrecord") for split in ("train", "test"))
    return root, train, test, len(read_class_names(train))


def timm_init(args, classes, seed):
    """timm's initial weights for ``seed`` as our float checkpoint (src.convert_weights)."""
    from src.checkpoint import save_params
    from src.convert_weights import convert, read_state_dict
    from src.ghostnet import GhostNet

    path = os.path.join(args.output_dir, f"timm-init-seed{seed}.ckpt")
    if not os.path.isfile(path):
        weights = path.replace(".ckpt", ".safetensors")
        argv, env = torch_command("--mode", "init", "--num_classes", classes, "--seed", seed,
                                  "--output", weights + ".json", "--init_output", weights)
        run(argv, env, weights + ".log")
        save_params(convert(read_state_dict(weights), GhostNet(num_classes=classes)), path)
    return path


def zoo_init_for_timm(args, classes, seed):
    """Our network's initial weights for ``seed`` (ms.set_seed, then GhostNet, as in train.py) in
    timm's names, as safetensors for bench/torch_train.py --init_input."""
    import mindspore as ms
    from safetensors.numpy import load_file, save_file

    from src.ghostnet import GhostNet, timm_to_zoo_name

    path = os.path.join(args.output_dir, f"zoo-init-seed{seed}.safetensors")
    if not os.path.isfile(path):
        timm_init(args, classes, seed)  # for timm's names, and its num_batches_tracked
        timm_names = load_file(os.path.join(args.output_dir, f"timm-init-seed{seed}.safetensors"))
        ms.set_seed(seed)
        ours = {name: p.asnumpy() for name, p in GhostNet(num_classes=classes).parameters_and_names()}
        weights = {key: value if key.endswith("num_batches_tracked") else ours[timm_to_zoo_name(key)]
                   for key, value in timm_names.items()}
        save_file(weights, path + ".partial")
        os.replace(path + ".partial", path)
    return path


def lockstep(args, train_path, classes):
    """Our step and timm's on the same batches from the same weights; their per-step losses."""
    import mindspore as ms
    import mindspore.dataset as ds
    import mindspore.nn as nn

    from src.checkpoint import load_strict, read_checkpoint
    from src.dataset import create_dataset
    from src.ghostnet import GhostNet
    from src.kernels import enable_fast_cpu_path
    from src.train_utils import build_optimizer

    ds.config.set_seed(args.seeds[0])
    data = create_dataset(train_path, train=True, image_size=args.image_size, batch_size=args.batch_size)
    batches = []
    for images, labels in data.create_tuple_iterator(output_numpy=True, num_epochs=1):
        batches.append((images, labels))
        if len(batches) == args.lockstep_steps:
            break
    lrs = learning_rates(args, data.get_dataset_size())[:len(batches)]
    path = os.path.join(args.output_dir, "lockstep-batches.npz")
    np.savez(path, images=np.stack([b[0] for b in batches]), labels=np.stack([b[1] for b in batches]), lrs=lrs)

    init = timm_init(args, classes, args.seeds[0])
    argv, env = torch_command("--mode", "lockstep", "--num_classes", classes, "--seed", args.seeds[0],
                              "--batches", path, "--dropout", 0, "--output", path + ".timm.json",
                              "--init_input", init.replace(".ckpt", ".safetensors"))
    run(argv, env, path + ".timm.log")
    with open(path + ".timm.json", encoding="utf-8") as f:
        timm_losses = json.load(f)["losses"]

    ms.set_context(mode=ms.GRAPH_MODE)

    def our_losses(fast):
        net = GhostNet(num_classes=classes, dropout=0.0)
        load_strict(net, read_checkpoint(init), source=init)
        if fast:
            enable_fast_cpu_path(net)
        optimizer = build_optimizer(net, lrs, args.momentum, args.weight_decay, args.loss_scale, compiled=fast)
        step = nn.TrainOneStepCell(nn.WithLossCell(net, nn.CrossEntropyLoss(label_smoothing=args.label_smooth)),
                                   optimizer, sens=args.loss_scale)
        step.set_train(True)
        return [float(step(ms.Tensor(images), ms.Tensor(labels)).asnumpy()) for images, labels in batches]
    # the framework's own convolutions compute the same steps with other rounding: how far
    # rounding alone drifts apart is the yardstick for the gap to timm
    return {"ours": our_losses(fast=True), "timm": timm_losses, "ours, framework convolutions": our_losses(fast=False)}


def train_ours(args, name, seed, paths, classes, extra):
    output = os.path.join(args.output_dir, "runs", f"{name}-seed{seed}")
    argv = [sys.executable, "train.py", "--dataset_path", paths[1], "--eval_dataset_path", paths[2],
            "--output_dir", output, "--num_classes", classes, "--epoch_size", args.epochs,
            "--warmup_epochs", 1, "--lr", args.lr, "--batch_size", args.batch_size,
            "--image_size", args.image_size, "--momentum", args.momentum, "--weight_decay", args.weight_decay,
            "--label_smooth", args.label_smooth, "--seed", seed, "--keep_checkpoint_max", 1,
            "--log_every", 1000, *extra]
    if os.path.isdir(output):
        argv.append("--resume")  # a finished run resumes to nothing; an interrupted one goes on
    run([str(a) for a in argv], log=output + ".log")
    with open(os.path.join(output, "history.json"), encoding="utf-8") as f:
        return json.load(f)["epochs"]


def learning_rates(args, steps_per_epoch):
    """train.py's schedule for the recipe: one warm-up epoch, then cosine (src/lr_generator.py)."""
    from src.lr_generator import get_lr

    return get_lr(args.lr * args.batch_size / REFERENCE_BATCH, args.epochs, steps_per_epoch, 1)


def train_timm(args, seed, paths, classes, init=None, loader="dataloader"):
    """timm's side; ``init``: start from these weights (safetensors) instead of timm's own;
    ``loader``: torch's DataLoader, or ``plain`` (bench/torch_train.py --loader)."""
    from src.dataset import create_dataset

    name = "plain" if loader == "plain" else f"timm{'-zoo-init' if init else ''}"
    output = os.path.join(args.output_dir, "runs", f"{name}-seed{seed}.json")
    if not os.path.isfile(output):
        steps = create_dataset(paths[1], train=True, batch_size=args.batch_size).get_dataset_size()
        rates = os.path.join(args.output_dir, "learning-rates.npy")
        np.save(rates, learning_rates(args, steps))
        argv, env = torch_command(
            "--mode", "fit", "--num_classes", classes, "--seed", seed, "--data_root", paths[0],
            "--output", output, "--image_size", args.image_size, "--batch_size", args.batch_size,
            "--epochs", args.epochs, "--lrs", rates, "--momentum", args.momentum,
            "--weight_decay", args.weight_decay, "--label_smooth", args.label_smooth, "--loader", loader,
            *(["--init_input", init] if init else []))
        run(argv, env, output.replace(".json", ".log"))
    with open(output, encoding="utf-8") as f:
        return json.load(f)["epochs"]


def summary_rows(results):
    lines = [f"{'runner':<18} {'seed':>4} {'top-1':>6}  loss per epoch"]
    for name, runs in results.items():
        for seed, history in runs.items():
            losses = " ".join(f"{e['loss']:.3f}" for e in history)
            lines.append(f"{name:<18} {seed:>4} {history[-1]['top1']:>6.3f}  {losses}")
    lines.append("")
    lines.append(f"{'runner':<18} {'seeds':>5} {'top-1 mean':>10} {'std':>6} {'min':>6} {'max':>6}")
    for name, runs in results.items():
        finals = [history[-1]["top1"] for history in runs.values()]
        spread = statistics.stdev(finals) if len(finals) > 1 else 0.0
        lines.append(f"{name:<18} {len(finals):>5} {statistics.mean(finals):>10.4f} {spread:>6.4f} "
                     f"{min(finals):>6.3f} {max(finals):>6.3f}")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output_dir", default="ab_output", help="data, runs and results.json (reused)")
    parser.add_argument("--data_root", default=None, help="a Pets-layout folder instead of the hard set")
    parser.add_argument("--train_per_class", type=int, default=85, help="hard set: train pictures per class")
    parser.add_argument("--test_per_class", type=int, default=35, help="hard set: test pictures per class")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="one run per runner and seed")
    parser.add_argument("--runners", nargs="*", default=["ours", "timm"], choices=BUILT_IN_RUNNERS,
                        help="ours, timm, plain (timm in issue 35's plain loop: pictures in memory, "
                             "no DataLoader), ours-timm-init (ours from timm's initial weights), "
                             "timm-zoo-init (timm from ours)")
    parser.add_argument("--variant", nargs=2, action="append", default=[], metavar=("NAME", "FLAGS"),
                        help="train.py with these extra flags, e.g. ours-wd \"--loss_scale 1\"")
    parser.add_argument("--lockstep_steps", type=int, default=30, help="0 skips the lockstep comparison")
    parser.add_argument("--check_repeat", action="store_true",
                        help="run ours twice on the first seed and compare the per-epoch losses")
    parser.add_argument("--epochs", type=int, default=12, help="epochs of every run")
    parser.add_argument("--image_size", type=int, default=64, help="side of the training crop")
    parser.add_argument("--batch_size", type=int, default=32, help="images per training step")
    parser.add_argument("--lr", type=float, default=0.4, help=f"peak learning rate per {REFERENCE_BATCH} images")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum of both sides")
    parser.add_argument("--weight_decay", type=float, default=4e-5,
                        help="weight decay of both sides (not on BatchNorm and biases)")
    parser.add_argument("--label_smooth", type=float, default=0.1, help="label smoothing of both sides")
    parser.add_argument("--loss_scale", type=float, default=1024.0, help="lockstep: our static loss scale")
    args = parser.parse_args()
    os.makedirs(os.path.join(args.output_dir, "runs"), exist_ok=True)
    check_same_recipe(args)
    paths = make_data(args)
    classes = paths[3]
    report = {"recipe": {k: v for k, v in vars(args).items() if k not in ("output_dir", "data_root")}}

    if args.lockstep_steps:
        losses = lockstep(args, paths[1], classes)
        ours, timm, framework = losses["ours"], losses["timm"], losses["ours, framework convolutions"]
        gaps = [abs(a - b) for a, b in zip(ours, timm)]
        rounding = [abs(a - b) for a, b in zip(ours, framework)]
        print(f"\nlockstep: same initial weights (timm's, seed {args.seeds[0]}), same {len(gaps)} batches, "
              "dropout off; 'rounding' is ours against ours on the framework's convolutions")
        print(f"{'step':>4} {'ours':>9} {'timm':>9} {'|ours-timm|':>11} {'rounding':>9}")
        for step, row in enumerate(zip(ours, timm, gaps, rounding), 1):
            print(f"{step:>4} {row[0]:>9.5f} {row[1]:>9.5f} {row[2]:>11.2e} {row[3]:>9.2e}")
        print(f"mean |ours - timm| {statistics.mean(gaps):.2e}; mean rounding drift {statistics.mean(rounding):.2e}")
        report["lockstep"] = losses

    runners = [(name, []) for name in args.runners if name != "ours-timm-init"]
    runners += [(name, ["--pretrained", None]) for name in args.runners if name == "ours-timm-init"]
    runners += [(name, shlex.split(flags)) for name, flags in args.variant]
    results = {name: {} for name, _ in runners}
    for seed in args.seeds:
        for name, extra in runners:
            if name in ("timm", "plain"):
                results[name][seed] = train_timm(args, seed, paths, classes,
                                                 loader="plain" if name == "plain" else "dataloader")
            elif name == "timm-zoo-init":
                results[name][seed] = train_timm(args, seed, paths, classes, zoo_init_for_timm(args, classes, seed))
            else:
                flags = [timm_init(args, classes, seed) if flag is None else flag for flag in extra]
                results[name][seed] = train_ours(args, name, seed, paths, classes, flags)
            print(f"{name} seed {seed}: top-1 {results[name][seed][-1]['top1']:.4f}", flush=True)
    if args.check_repeat:
        again = train_ours(args, "ours-repeat", args.seeds[0], paths, classes, [])
        first = [e["loss"] for e in results.get("ours", {}).get(args.seeds[0]) or
                 train_ours(args, "ours", args.seeds[0], paths, classes, [])]
        second = [e["loss"] for e in again]
        differ = [i + 1 for i, (a, b) in enumerate(zip(first, second)) if a != b]
        print("\nrepeat of ours, seed %d: per-epoch losses %s" % (
            args.seeds[0], "identical" if not differ else f"differ from epoch {differ[0]}"))
        report["repeat"] = {"first": first, "second": second, "identical": not differ}
    print()
    print("\n".join(summary_rows(results)))
    report["runs"] = results
    write_text(os.path.join(args.output_dir, "results.json"), json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    from bench.timing import recorded

    with recorded("bench_ab"):
        main()
