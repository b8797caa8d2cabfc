"""Input pipeline speed: images/s of the train and eval pipelines on 375x500 JPEGs.

    python bench/bench_data.py [--images 400] [--image_size 224] [--workers 1 2]
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--images", type=int, default=400, help="synthetic 375x500 JPEGs to read")
    parser.add_argument("--image_size", type=int, default=224, help="side of the pipeline's output")
    parser.add_argument("--batch_size", type=int, default=32, help="images per batch")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to time")
    parser.add_argument("--epochs", type=int, default=2, help="passes timed after one warm-up pass")
    args = parser.parse_args()

    from src.dataset import convert_pets, create_dataset
    from src.sample_data import make_sample_pets

    with tempfile.TemporaryDirectory() as tmp:
        per_class = max(1, args.images // 8)
        make_sample_pets(os.path.join(tmp, "pets"), num_classes=4, train_per_class=per_class,
                         test_per_class=per_class, size=(375, 500), awkward_files=False)
        convert_pets(os.path.join(tmp, "pets"), os.path.join(tmp, "mr"))
        print(f"synthetic 375x500 JPEGs, {args.image_size}px output, batch {args.batch_size}")
        print(f"{'pipeline':>8} {'workers':>7} {'images/s':>9}")
        for split, train in (("train", True), ("test", False)):
            for workers in args.workers:
                data = create_dataset(os.path.join(tmp, "mr", f"{split}.mindrecord"), train=train,
                                      image_size=args.image_size, batch_size=args.batch_size,
                                      num_workers=workers)
                iterator = data.create_tuple_iterator(output_numpy=True, num_epochs=args.epochs + 1)
                for _ in iterator:  # warm-up pass
                    pass
                count, start = 0, time.perf_counter()
                for _ in range(args.epochs):
                    for images, _ in iterator:
                        count += images.shape[0]
                print(f"{split:>8} {workers:>7} {count / (time.perf_counter() - start):>9.1f}")


if __name__ == "__main__":
    from bench.timing import recorded

    with recorded("bench_data"):
        main()
