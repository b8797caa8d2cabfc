"""timm's ghostnet trained in PyTorch eager: the reference side of bench/bench_ab.py.

Runs in its own process with PyTorch's own OpenMP settings and never imports MindSpore.

    --mode fit:      train on a Pets-layout folder with torchvision's augmentations (the
                     counterparts of src/dataset.py's), evaluate after every epoch, write
                     ``{"epochs": [{"epoch", "loss", "top1"}, ...]}`` as JSON to --output;
                     ``--loader plain``: the pictures decoded once and kept in memory, batches
                     drawn and transformed in this process (issue 35's plain loop).
    --mode lockstep: train on the pre-augmented batches of --batches (an .npz of images,
                     labels and per-step learning rates) and write the per-step losses.
    --mode init:     only write the initial weights.

Both write the model's initial weights to --init_output (safetensors) when it is given, so
that our network can start from the same ones (src.convert_weights); --init_input starts
from the given ones instead (our network's initialisation, in timm's names). The recipe is the one
train.py runs: SGD with momentum, weight decay on everything but BatchNorm and biases,
label smoothing, and the per-step learning rates the harness computes with src/lr_generator.py
(--lrs, an .npy file; in lockstep mode they come with the batches).
"""
import argparse
import json
import os
import random

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # src/dataset.py's, repeated: this process has no MindSpore
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_RESIZE_RATIO = 256 / 224


def read_split(root, annotation_file):
    """``[(image path, label)]`` of a Pets-layout annotation file (class ids from 1), without
    the images PIL cannot read (missing or damaged), as the converter skips them."""
    from PIL import Image

    pairs, skipped = [], 0
    with open(os.path.join(root, "annotations", annotation_file), encoding="utf-8") as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                name, class_id = line.split()[:2]
                path = os.path.join(root, "images", name + ".jpg")
                try:
                    with Image.open(path) as image:
                        image.load()
                except (OSError, SyntaxError, ValueError):
                    skipped += 1
                    continue
                pairs.append((path, int(class_id) - 1))
    if skipped:
        print(f"{annotation_file}: {skipped} images missing or unreadable, skipped", flush=True)
    return pairs


def loaders(args, torch):
    from PIL import Image
    from torchvision import transforms as T

    class Pictures(torch.utils.data.Dataset):
        def __init__(self, pairs, transform):
            self.pairs, self.transform = pairs, transform

        def __len__(self):
            return len(self.pairs)

        def __getitem__(self, index):
            path, label = self.pairs[index]
            with Image.open(path) as image:
                return self.transform(image.convert("RGB")), label

    normalize = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    train = T.Compose([T.RandomResizedCrop(args.image_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)),
                       T.RandomHorizontalFlip(),
                       T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4), *normalize])
    test = T.Compose([T.Resize(int(args.image_size * EVAL_RESIZE_RATIO), T.InterpolationMode.BICUBIC),
                      T.CenterCrop(args.image_size), *normalize])

    def seed_worker(worker_id):
        seed = torch.initial_seed() % 2 ** 32
        np.random.seed(seed)
        random.seed(seed)

    if args.loader == "plain":
        return PlainBatches(read_split(args.data_root, "trainval.txt"), train, args.batch_size, torch), \
            PlainBatches(read_split(args.data_root, "test.txt"), test, args.batch_size, torch, shuffle=False)
    generator = torch.Generator().manual_seed(args.seed)
    train_loader = torch.utils.data.DataLoader(
        Pictures(read_split(args.data_root, "trainval.txt"), train), batch_size=args.batch_size,
        shuffle=True, drop_last=True, num_workers=args.num_workers, worker_init_fn=seed_worker,
        generator=generator, persistent_workers=args.num_workers > 0)
    test_loader = torch.utils.data.DataLoader(
        Pictures(read_split(args.data_root, "test.txt"), test), batch_size=args.batch_size,
        num_workers=args.num_workers)
    return train_loader, test_loader


class PlainBatches:
    """The plain loop of issue 35: every picture decoded once (PIL, RGB) and kept in memory; per
    epoch a permutation from numpy's global stream (seeded with --seed), each picture
    transformed in this process (torch's stream); the last partial batch dropped when shuffled."""

    def __init__(self, pairs, transform, batch_size, torch, shuffle=True):
        from PIL import Image

        def decoded(path):
            with Image.open(path) as image:
                return image.convert("RGB")
        self.pictures = [(decoded(path), label) for path, label in pairs]
        self.transform, self.batch_size, self.torch, self.shuffle = transform, batch_size, torch, shuffle

    def __len__(self):
        count = len(self.pictures)
        return count // self.batch_size if self.shuffle else -(-count // self.batch_size)

    def __iter__(self):
        order = np.random.permutation(len(self.pictures)) if self.shuffle else np.arange(len(self.pictures))
        for step in range(len(self)):
            chosen = [self.pictures[i] for i in order[step * self.batch_size:(step + 1) * self.batch_size]]
            yield (self.torch.stack([self.transform(image) for image, _ in chosen]),
                   self.torch.tensor([label for _, label in chosen]))


def optimizer_for(model, args, torch):
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]  # BatchNorm parameters and biases
    return torch.optim.SGD([{"params": decay, "weight_decay": args.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}], lr=0.0, momentum=args.momentum)


def train_step(model, optimizer, loss_fn, images, labels, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad()
    loss = loss_fn(model(images), labels)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def top1(model, loader, torch):
    model.eval()
    correct = total = 0
    with torch.inference_mode():
        for images, labels in loader:
            correct += int((model(images).argmax(1) == labels).sum())
            total += len(labels)
    model.train()
    return correct / total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--mode", choices=("fit", "lockstep", "init"), required=True,
                        help="fit, lockstep or init (see the module's docstring)")
    parser.add_argument("--model", default="ghostnet_100", help="timm model name")
    parser.add_argument("--num_classes", type=int, required=True, help="classes of the classifier")
    parser.add_argument("--seed", type=int, default=1, help="torch.manual_seed: initial weights, shuffle, augmentations")
    parser.add_argument("--output", required=True, help="JSON file to write")
    parser.add_argument("--init_output", help="write the initial weights here (safetensors)")
    parser.add_argument("--init_input", help="start from these weights (safetensors, timm's names)")
    parser.add_argument("--data_root", help="fit: Pets-layout folder")
    parser.add_argument("--batches", help="lockstep: .npz of images, labels and lrs")
    parser.add_argument("--image_size", type=int, default=64, help="side of the training crop")
    parser.add_argument("--batch_size", type=int, default=32, help="images per training step")
    parser.add_argument("--epochs", type=int, default=12, help="fit: epochs to train")
    parser.add_argument("--lrs", help="fit: .npy of one learning rate per step, epochs x steps per epoch")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    parser.add_argument("--weight_decay", type=float, default=4e-5, help="not on BatchNorm and biases")
    parser.add_argument("--label_smooth", type=float, default=0.1, help="label smoothing of the loss")
    parser.add_argument("--dropout", type=float, default=0.2, help="dropout before the classifier")
    parser.add_argument("--num_workers", type=int, default=2, help="fit: data loading worker processes")
    parser.add_argument("--loader", choices=("dataloader", "plain"), default="dataloader",
                        help="fit: torch's DataLoader with --num_workers, or the plain in-memory loop")
    args = parser.parse_args()
    import timm
    import torch

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    model = timm.create_model(args.model, num_classes=args.num_classes, drop_rate=args.dropout)
    if args.init_input:
        from safetensors.torch import load_file
        model.load_state_dict(load_file(args.init_input), strict=True)
    if args.init_output:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.init_output)
    model.train()
    result = {}
    optimizer = optimizer_for(model, args, torch)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smooth)
    if args.mode == "init":
        pass
    elif args.mode == "lockstep":
        batches = np.load(args.batches)
        losses = [train_step(model, optimizer, loss_fn, torch.from_numpy(images), torch.from_numpy(labels).long(),
                             float(lr))
                  for images, labels, lr in zip(batches["images"], batches["labels"], batches["lrs"])]
        result = {"losses": losses}
    else:
        train_loader, test_loader = loaders(args, torch)
        rates = np.load(args.lrs)
        if len(rates) != args.epochs * len(train_loader):
            raise SystemExit(f"{args.lrs} holds {len(rates)} learning rates; {args.epochs} epochs of "
                             f"{len(train_loader)} steps need {args.epochs * len(train_loader)}")
        epochs, step = [], 0
        for epoch in range(args.epochs):
            losses = []
            for images, labels in train_loader:
                losses.append(train_step(model, optimizer, loss_fn, images, labels, float(rates[step])))
                step += 1
            epochs.append({"epoch": epoch + 1, "loss": float(np.mean(losses)),
                           "top1": top1(model, test_loader, torch)})
            print(json.dumps(epochs[-1]), flush=True)
        result = {"epochs": epochs}
    with open(args.output + ".tmp", "w", encoding="utf-8") as f:
        json.dump(result, f)
    os.replace(args.output + ".tmp", args.output)


if __name__ == "__main__":
    main()
