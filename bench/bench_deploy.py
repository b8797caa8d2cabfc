"""Deployment speed on the CPU, ours against what a user would ship without us, per runtime.

    python bench/bench_deploy.py [--checkpoint FAKE_QUANT.ckpt] [--batch_sizes 1 16] [--rounds 5]
    python bench/bench_deploy.py --checkpoint FAKE_QUANT.ckpt --agreement IMAGES [--emulate haswell]

Speed (images/s, the median of alternating rounds of --seconds each):

* onnxruntime: our int8 QDQ file as export.py writes it (``ort_int8``: int8 weights; ``ort_int8_u8``:
  the portable uint8-weight file, run as stored), our float file, and the peer: timm's ghostnet
  exported to ONNX, then ``quant_pre_process`` and ``quantize_static`` (QDQ, per channel, uint8
  activations; int8 weights where this runtime's int8 kernels are exact, else uint8), as
  onnxruntime's documentation does it;
* OpenVINO: the same files of ours, and the peers: timm's ONNX quantized by NNCF
  (``nncf.quantize``, its defaults), and timm's float model at OpenVINO's default precision
  (bf16 on CPUs with AMX), whose precision the table shows;
* PyTorch eager (timm's ghostnet, in a worker process with its own OpenMP settings).

Every row gives the ratio to the best peer in its runtime and to PyTorch eager. Without
--checkpoint the weights are random (seeded) and calibrated on random images: speed does
not depend on the values. Every table names the CPU's int8 instructions and what the probe of
src/deploy/weight_storage.py (three int8 convolutions) says about each runtime's int8 kernels.

``--agreement IMAGES`` (a folder of pictures, or a MindRecord file) instead measures top-1
agreement of the exported file with the MindSpore int8 network, per runtime and per
storage, through our predictors (as eval.py and classify.py run it) and run as stored (as a
user's own session would); ``--emulate haswell`` repeats it under ``qemu-x86_64 -cpu Haswell``,
an x86 CPU without VNNI (apt-get install qemu-user; 10-15x slower: a few hundred pictures).
"""
import argparse
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from functools import partial

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import src  # noqa: E402,F401  (before MindSpore: sets OMP_WAIT_POLICY)
from bench.timing import TorchWorker, alternating_medians  # noqa: E402
from src.deploy import weight_storage  # noqa: E402

ROWS_BY_RUNTIME = {"onnxruntime": ("ort_int8", "ort_int8_u8", "ort_float", "timm_int8", "timm_float"),
            "openvino": ("ov_int8", "ov_int8_u8", "ov_float", "ov_timm_nncf", "ov_timm_float")}
PEERS = {"onnxruntime": ("timm_int8",), "openvino": ("ov_timm_nncf", "ov_timm_float")}
BACKENDS = ROWS_BY_RUNTIME["onnxruntime"] + ROWS_BY_RUNTIME["openvino"] + ("ms_float", "ms_int8", "torch")
EMULATED_CPUS = {"haswell": "Haswell"}


def random_batches(shape, count):
    return [np.random.default_rng(i).standard_normal(shape).astype(np.float32) for i in range(count)]


class RandomDataset:
    def __init__(self, shape, count):
        self.batches = random_batches(shape, count)

    def create_tuple_iterator(self, num_epochs=1):
        import mindspore as ms
        return iter([(ms.Tensor(b), None) for b in self.batches])


def ort_peer(float_path, folder, calibration):
    """timm's float ONNX through onnxruntime's documented static quantization: ``quant_pre_process``
    (shape inference, BatchNorm folding), then ``quantize_static``; None without its tools."""
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        return None

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self):
            return {"image": batch} if (batch := next(self.batches, None)) is not None else None

    prepared = os.path.join(folder, "timm_prepared.onnx")
    quant_pre_process(float_path, prepared)
    exact = weight_storage.storage_for("onnxruntime") == "int8"
    path = os.path.join(folder, "timm_int8.onnx")
    quantize_static(prepared, path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8 if exact else QuantType.QUInt8)
    return path


def nncf_peer(float_path, calibration):
    """timm's float ONNX read by OpenVINO and quantized by ``nncf.quantize`` with its defaults (its
    documented post-training flow); None without NNCF."""
    try:
        import nncf
        import openvino as ov
    except ImportError:
        return None
    model = ov.Core().read_model(float_path)
    return nncf.quantize(model, nncf.Dataset(calibration), subset_size=len(calibration))


def bench_networks(args):
    """``(fake-quant network, float network in eval mode)``: --checkpoint's fake-quant state and
    a float network of random weights (speed only), or both random (seeded), calibrated on
    random images."""
    import mindspore as ms
    from src.checkpoint import CheckpointKind
    from src.ghostnet import GhostNet
    from src.models import load_network
    from src.quant import calibrate, prepare

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    if args.checkpoint:
        fake_quant, kind = load_network(args.checkpoint, args.width, args.num_classes, fast_cpu=False)
        if kind != CheckpointKind.FAKE_QUANT:
            sys.exit(f"{args.checkpoint} is a {kind} checkpoint; pass the fake-quant state "
                     "(OUTPUT_DIR/ghostnet-final.ckpt of train.py --quant) so every form can be built")
    else:
        ms.set_seed(0)
        fake_quant = prepare(GhostNet(width=args.width, num_classes=args.num_classes))
        calibrate(fake_quant, RandomDataset((8, 3, args.image_size, args.image_size), 2), 2)
    float_net = GhostNet(width=args.width, num_classes=args.num_classes)
    float_net.set_train(False)
    return fake_quant, float_net


def build_networks(args, folder):
    """``({name: predictor maker}, {name: model file bytes})``."""
    from src.deploy.fold import fold_batchnorm_for_inference
    from src.deploy.onnx_export import ghostnet_to_onnx
    from src.deploy.predictors import MindSporePredictor, OnnxRuntimePredictor, OpenVinoPredictor
    from src.kernels.fast_cpu import enable_fast_cpu_path
    from src.quant import convert

    fake_quant, float_net = bench_networks(args)
    int8_net = convert(fake_quant)
    files = {"ort_float": ghostnet_to_onnx(float_net, args.image_size).SerializeToString(),
             "ort_int8": ghostnet_to_onnx(int8_net, args.image_size, int8_weights="int8").SerializeToString(),
             "ort_int8_u8": ghostnet_to_onnx(int8_net, args.image_size, int8_weights="uint8").SerializeToString()}
    files.update(ov_float=files["ort_float"], ov_int8=files["ort_int8"], ov_int8_u8=files["ort_int8_u8"])
    # MindSpore as eval.py runs it: the fast CPU path, and BatchNorm folded for float
    makers = {"ms_float": partial(MindSporePredictor, fold_batchnorm_for_inference(enable_fast_cpu_path(float_net))),
              "ms_int8": partial(MindSporePredictor, enable_fast_cpu_path(int8_net)),  # after its export
              "ort_int8": partial(OnnxRuntimePredictor, files["ort_int8"], "ours, int8 weights"),
              "ort_int8_u8": partial(OnnxRuntimePredictor, files["ort_int8_u8"], "ours, uint8 weights",
                                     adapt_weights=False),
              "ort_float": partial(OnnxRuntimePredictor, files["ort_float"], "ours, float")}
    if importlib.util.find_spec("openvino"):
        makers.update(ov_int8=partial(OpenVinoPredictor, files["ov_int8"], "ours, int8 weights"),
                      ov_int8_u8=partial(OpenVinoPredictor, files["ov_int8_u8"], "ours, uint8 weights",
                                         adapt_weights=False),
                      ov_float=partial(OpenVinoPredictor, files["ov_float"], "ours, float"))
    else:
        print("(OpenVINO: not installed here; its rows are skipped)")
    timm_float = os.path.join(folder, "timm_float.onnx")
    peers_wanted = {"timm_int8", "timm_float", "ov_timm_nncf", "ov_timm_float"} & set(args.backends)
    if peers_wanted and TorchWorker.export_onnx(timm_float, args.image_size, args.num_classes, args.width):
        calibration = random_batches((1, 3, args.image_size, args.image_size), args.calibration_images)
        with open(timm_float, "rb") as f:
            files["timm_float"] = files["ov_timm_float"] = f.read()
        makers["timm_float"] = partial(OnnxRuntimePredictor, timm_float, "timm's ONNX", adapt_weights=False)
        if "timm_int8" in args.backends and (peer := ort_peer(timm_float, folder, calibration)):
            with open(peer, "rb") as f:
                files["timm_int8"] = f.read()
            makers["timm_int8"] = partial(OnnxRuntimePredictor, peer, "timm's ONNX, quantize_static",
                                          adapt_weights=False)
        if "openvino" in sys.modules or importlib.util.find_spec("openvino"):
            makers["ov_timm_float"] = partial(OpenVinoPredictor, timm_float, "timm's ONNX", adapt_weights=False)
            if "ov_timm_nncf" in args.backends:
                quantized = nncf_peer(timm_float, calibration)
                if quantized is None:
                    print("(NNCF: not installed here; ov_timm_nncf skipped: pip install nncf)")
                else:
                    makers["ov_timm_nncf"] = partial(OpenVinoPredictor, quantized, "timm, NNCF int8",
                                                     adapt_weights=False)
    return {name: makers[name] for name in args.backends if name in makers}, files


def precision(predictor):
    """OpenVINO's inference precision of a compiled predictor; '' for other runtimes."""
    compiled = getattr(predictor, "compiled", None)
    if compiled is None:
        return ""
    return str(compiled.get_property("INFERENCE_PRECISION_HINT")).lower().replace("<type: '", "").rstrip("'>")


def print_runtime_table(runtime, medians, precisions, files):
    rows = [name for name in ROWS_BY_RUNTIME.get(runtime, ()) if name in medians]
    if not rows:
        return
    peers = [name for name in PEERS.get(runtime, ()) if name in medians]
    best = max(peers, key=medians.get) if peers else None
    print(f"\n{runtime} (int8 kernels: {weight_storage.probe_summary(runtime)})")
    header = f"{'':>14} {'images/s':>9} {'vs best peer':>13} {'vs torch':>9} {'precision':>9} {'file MB':>8}"
    print(header)
    for name in rows:
        value = medians[name]
        versus = f"{value / medians[best]:.2f}x" if best else "-"
        torch = f"{value / medians['torch']:.2f}x" if "torch" in medians else "-"
        size = f"{len(files[name]) / 2**20:.1f}" if isinstance(files.get(name), bytes) else "-"
        print(f"{name:>14} {value:>9.1f} {versus:>13} {torch:>9} {precisions.get(name, '') or '-':>9} {size:>8}")
    if best:
        print(f"(best peer here: {best})")


def time_speeds(args, makers, files):
    for batch in args.batch_sizes:
        images = np.random.default_rng(batch).standard_normal(
            (batch, 3, args.image_size, args.image_size)).astype(np.float32)
        predictors = {name: make() for name, make in makers.items()}
        timed = {name: (lambda p=p: p(images)) for name, p in predictors.items()}
        worker = TorchWorker.start("infer", batch, args.image_size, args.num_classes, args.width) \
            if "torch" in args.backends else None
        if worker is not None:
            timed["torch"] = worker
        medians = alternating_medians(timed, batch, args.rounds, args.seconds)
        precisions = {name: precision(p) for name, p in predictors.items()}
        print(f"\n## batch {batch}: {weight_storage.int8_instruction_set()}")
        for runtime in ROWS_BY_RUNTIME:
            print_runtime_table(runtime, medians, precisions, files)
        others = {name: value for name, value in medians.items()
                  if not any(name in rows for rows in ROWS_BY_RUNTIME.values())}
        print("\nother: " + ", ".join(f"{name} {value:.1f} images/s" for name, value in others.items()))


# --- agreement --------------------------------------------------------------------------------

def load_pictures(source, image_size, limit):
    """``(images NCHW float32, names)`` as eval.py's pipeline makes them, from a folder of pictures
    (classify.py's loader) or a MindRecord file."""
    if source.endswith(".mindrecord"):
        from src.dataset import create_dataset
        data = create_dataset(source, train=False, image_size=image_size, batch_size=1, num_workers=1)
        images = [img for img, _ in data.create_tuple_iterator(output_numpy=True, num_epochs=1)][:limit]
        return np.concatenate(images), [f"{source}#{i}" for i in range(len(images))]
    from classify import image_files
    from src.dataset import load_image
    paths = image_files([source])[:limit]
    return np.stack([load_image(p, image_size) for p in paths]), paths


def agreement(args):
    import mindspore as ms
    from src.checkpoint import CheckpointKind
    from src.deploy.onnx_export import onnx_model_from_checkpoint
    from src.models import load_network
    from src.quant import convert
    from src.deploy.predictors import MindSporePredictor

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    images, _ = load_pictures(args.agreement, args.image_size, args.limit)
    net, kind = load_network(args.checkpoint, args.width, args.num_classes, fast_cpu=False)
    if kind == CheckpointKind.FLOAT:
        sys.exit(f"{args.checkpoint} is a float checkpoint; pass an int8 or fake-quant one")
    reference = MindSporePredictor(convert(net) if kind == CheckpointKind.FAKE_QUANT else net)
    expected = reference(images).argmax(1)
    folder = tempfile.mkdtemp(prefix="bench_agreement_")
    try:
        np.save(os.path.join(folder, "images.npy"), images)
        for storage in weight_storage.WEIGHT_STORAGES:
            model, _ = onnx_model_from_checkpoint(args.checkpoint, args.width, args.num_classes, args.image_size,
                                                  int8_weights=storage)
            with open(os.path.join(folder, f"{storage}.onnx"), "wb") as f:
                f.write(model.SerializeToString())
        cpus = [("this CPU", [])]
        if args.emulate:
            qemu = shutil.which("qemu-x86_64")
            if qemu is None:
                sys.exit("--emulate needs qemu-x86_64: apt-get install qemu-user")
            cpus.append((f"emulated {EMULATED_CPUS[args.emulate]} (no VNNI)",
                         [qemu, "-cpu", EMULATED_CPUS[args.emulate]]))
        print(f"top-1 agreement with the MindSpore int8 network, {len(images)} pictures of {args.agreement}")
        print(f"{'CPU':>30} {'runtime':>12} {'file':>6} {'probe':>16} {'our predictor':>14} {'as stored':>10}")
        for cpu, prefix in cpus:
            child = subprocess.run(prefix + [sys.executable, os.path.abspath(__file__), "--child", folder],
                                   capture_output=True, text=True, cwd=REPO)
            if child.returncode != 0:
                sys.exit(f"the agreement run on {cpu} failed:\n{child.stderr[-2000:]}")
            for row in json.loads(child.stdout.strip().splitlines()[-1]):
                predicted = {way: np.asarray(top1) for way, top1 in row["top1"].items()}
                share = {way: f"{(p == expected).mean():.2%}" for way, p in predicted.items()}
                print(f"{cpu:>30} {row['runtime']:>12} {row['storage']:>6} {row['probe']:>16} "
                      f"{share['predictor']:>14} {share['as_stored']:>10}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def agreement_child(folder):
    """In the process (native or emulated) whose CPU is measured: top-1 of each file per runtime,
    through our predictors and as stored. Prints one JSON line."""
    from src.deploy.predictors import OnnxRuntimePredictor, OpenVinoPredictor

    images = np.load(os.path.join(folder, "images.npy"))
    rows = []
    runners = {"onnxruntime": OnnxRuntimePredictor}
    if importlib.util.find_spec("openvino"):
        runners["openvino"] = OpenVinoPredictor
    for runtime, runner in runners.items():
        for path in sorted(glob.glob(os.path.join(folder, "*.onnx"))):
            top1 = {way: runner(path, path, adapt_weights=adapt)(images).argmax(1).tolist()
                    for way, adapt in (("predictor", True), ("as_stored", False))}
            rows.append({"runtime": runtime, "storage": os.path.basename(path)[:-5],
                         "probe": weight_storage.probe_summary(runtime).split(" (")[0], "top1": top1})
    print(json.dumps(rows))


def main():
    if "--child" in sys.argv:
        return agreement_child(sys.argv[sys.argv.index("--child") + 1])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", help="fake-quant checkpoint (train.py --quant output); default: random")
    parser.add_argument("--width", type=float, default=1.0, choices=(0.5, 1.0), help="GhostNet width")
    parser.add_argument("--num_classes", type=int, default=37, help="classes of the classifier")
    parser.add_argument("--image_size", type=int, default=224, help="side of the input images")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 16], help="batch sizes to time")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS, help="what to time")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; the median is reported")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one backend's turn in a round")
    parser.add_argument("--calibration_images", type=int, default=8, help="random images the peers calibrate on")
    parser.add_argument("--agreement", metavar="IMAGES",
                        help="measure top-1 agreement on these pictures (folder or MindRecord) instead of speed")
    parser.add_argument("--limit", type=int, default=1000, help="--agreement: at most this many pictures")
    parser.add_argument("--emulate", choices=tuple(EMULATED_CPUS),
                        help="--agreement: also under qemu-x86_64 -cpu NAME (an x86 CPU without VNNI)")
    args = parser.parse_args()
    if args.agreement:
        if not args.checkpoint:
            parser.error("--agreement needs --checkpoint (a trained int8 or fake-quant checkpoint)")
        return agreement(args)
    print(f"GhostNet width {args.width}, {args.num_classes} classes, {args.image_size}px, CPU "
          f"({os.cpu_count()} cores); median of {args.rounds} alternating rounds of {args.seconds:g} s")
    folder = tempfile.mkdtemp(prefix="bench_deploy_")
    try:
        makers, files = build_networks(args, folder)
        time_speeds(args, makers, files)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    from bench.timing import recorded

    with recorded("bench_deploy"):
        main()
