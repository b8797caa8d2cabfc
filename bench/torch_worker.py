"""timm's ghostnet in PyTorch eager, timed on request: the PyTorch side of the bench scripts.

Runs in its own process with PyTorch's default OpenMP settings (this package sets
OMP_WAIT_POLICY=PASSIVE for MindSpore, which would slow PyTorch down). Prints "ready",
then for each line "SECONDS" on stdin runs for that long and prints images/s. With
``--mode export`` it writes the model as ONNX to ``--output`` instead and prints "exported".
"""
import argparse

import numpy as np

from timing import serve  # this folder is on the path of a script run from it


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("infer", "train", "export"), required=True)
    parser.add_argument("--model", default="ghostnet_100")
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, required=True)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--output", help="--mode export: the ONNX file to write")
    args = parser.parse_args()
    import timm
    import torch

    model = timm.create_model(args.model, num_classes=args.num_classes)
    rng = np.random.default_rng(args.batch_size)
    images = torch.from_numpy(rng.standard_normal(
        (args.batch_size, 3, args.image_size, args.image_size)).astype(np.float32))
    if args.mode == "export":  # what a user would hand onnxruntime: batch axis dynamic, opset 13
        model.eval()
        torch.onnx.export(model, images, args.output, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=13,
                          dynamo=False)
        print("exported", flush=True)
        return
    if args.mode == "infer":
        model.eval()

        def run():
            with torch.inference_mode():
                model(images)
    else:
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
        labels = torch.from_numpy(rng.integers(0, args.num_classes, args.batch_size))

        def run():
            optimizer.zero_grad()
            loss_fn(model(images), labels).backward()
            optimizer.step()
    serve(run, args.batch_size)


if __name__ == "__main__":
    main()
