"""Deployment speed on the CPU: onnxruntime int8 / float, MindSpore float / fake-quant, PyTorch eager,
and what a user would do without us: timm's ghostnet exported to ONNX and quantized by
onnxruntime's own ``quantize_static``.

    python bench/bench_deploy.py [--checkpoint INT8_OR_QAT.ckpt] [--batch_sizes 1 16] [--rounds 5]

Without --checkpoint the weights are random (seeded), calibrated on random images: speed does
not depend on the values. The backends take turns, in alternating rounds of
--seconds each; the table gives the median images/s over the rounds, the ratio to PyTorch
eager (timm's ghostnet, where torch and timm are installed; in a worker process with its
own OpenMP settings), to our float ONNX model and to the peer int8 model (timm_int8), and the
size of each model file. The peer is quantized as is correct on this CPU: QDQ, per channel,
uint8 activations, int8 weights where the CPU has VNNI and uint8 weights where it has not.
"""
import argparse
import importlib.util
import os
import sys
import tempfile
from functools import partial

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import src  # noqa: E402,F401  (before MindSpore: sets OMP_WAIT_POLICY)
from bench.timing import TorchWorker, alternating_medians, print_table  # noqa: E402
from src.deploy.weight_storage import int8_instruction_set, storage_for_this_cpu  # noqa: E402


BACKENDS = ("ort_int8", "ort_int8_u8", "ort_int8_ref", "ort_float", "timm_int8", "timm_float", "ov_int8",
            "ov_float", "ms_float", "ms_fake_quant", "torch")


class _RandomBatches:
    def __init__(self, shape, count):
        self.batches = [np.random.default_rng(i).standard_normal(shape).astype(np.float32) for i in range(count)]

    def create_tuple_iterator(self, num_epochs=1):
        import mindspore as ms
        return iter([(ms.Tensor(b), None) for b in self.batches])


def ort_quantize(float_path, path, image_size):
    """onnxruntime's ``quantize_static`` of ``float_path`` into ``path``, as is correct on this CPU
    (see the module docstring), calibrated on 4 random images; None without onnxruntime's tools."""
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    except ImportError:
        return None

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(_RandomBatches((1, 3, image_size, image_size), 4).batches)

        def get_next(self):
            return {"image": batch} if (batch := next(self.batches, None)) is not None else None

    weight_type = QuantType.QInt8 if storage_for_this_cpu() == "int8" else QuantType.QUInt8
    quantize_static(float_path, path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=weight_type)
    return path


def build_networks(args):
    """``({name: predictor maker}, {name: model file bytes})``."""
    import mindspore as ms
    from src.checkpoint import save_params
    from src.ghostnet import GhostNet
    from src.kernels.fast_cpu import enable_fast_cpu_path
    from src.checkpoint import CheckpointKind
    from src.deploy.fold import fold_batchnorm_for_inference
    from src.deploy.predictors import MindSporePredictor, OnnxRuntimePredictor, OpenVinoPredictor
    from src.models import load_network
    from src.deploy.onnx_export import ghostnet_to_onnx
    from src.quant import calibrate, convert, prepare

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    folder = tempfile.mkdtemp(prefix="bench_deploy_")
    if args.checkpoint:
        fake_quant, kind = load_network(args.checkpoint, args.width, args.num_classes)
        if kind != CheckpointKind.FAKE_QUANT:
            sys.exit(f"{args.checkpoint} is a {kind} checkpoint; pass the fake-quant state "
                     "(OUTPUT_DIR/ghostnet-final.ckpt of train.py --quant) so every form can be built")
        float_net = GhostNet(width=args.width, num_classes=args.num_classes)  # speed only: random weights
    else:
        ms.set_seed(0)
        float_net = GhostNet(width=args.width, num_classes=args.num_classes)
        fake_quant = prepare(GhostNet(width=args.width, num_classes=args.num_classes))
        calibrate(fake_quant, _RandomBatches((8, 3, args.image_size, args.image_size), 2), 2)
    float_net.set_train(False)
    int8_net = convert(fake_quant)
    sizes = {}
    float_ckpt = os.path.join(folder, "float.ckpt")
    save_params({n: p.asnumpy() for n, p in float_net.parameters_and_names()}, float_ckpt)
    # MindSpore as eval.py runs it: the fast CPU path, and BatchNorm folded for float
    fold_batchnorm_for_inference(enable_fast_cpu_path(float_net))
    enable_fast_cpu_path(fake_quant)
    int8_ckpt = os.path.join(folder, "int8.ckpt")
    save_params({n: p.asnumpy() for n, p in int8_net.parameters_and_names()}, int8_ckpt)
    onnx_float = ghostnet_to_onnx(float_net, args.image_size).SerializeToString()
    onnx_int8 = ghostnet_to_onnx(int8_net, args.image_size).SerializeToString()  # weights as this CPU needs
    onnx_int8_u8 = ghostnet_to_onnx(int8_net, args.image_size, int8_weights="uint8").SerializeToString()
    float_path = os.path.join(folder, "float.onnx")
    with open(float_path, "wb") as f:
        f.write(onnx_float)
    # references: onnxruntime's own static quantizer on our float model, and on timm's
    reference_path = ort_quantize(float_path, os.path.join(folder, "ort_int8.onnx"), args.image_size)
    if reference_path:
        sizes["ort_int8_ref"] = os.path.getsize(reference_path)
    timm_float = os.path.join(folder, "timm_float.onnx")
    timm_int8 = None
    if {"timm_int8", "timm_float"} & set(args.backends) and \
            TorchWorker.export_onnx(timm_float, args.image_size, args.num_classes, args.width):
        timm_int8 = ort_quantize(timm_float, os.path.join(folder, "timm_int8.onnx"), args.image_size)
        if timm_int8:
            sizes.update(timm_float=os.path.getsize(timm_float), timm_int8=os.path.getsize(timm_int8))
    sizes.update(ort_int8=len(onnx_int8), ort_int8_u8=len(onnx_int8_u8), ort_float=len(onnx_float),
                 ms_float=os.path.getsize(float_ckpt), ms_fake_quant=os.path.getsize(float_ckpt),
                 ms_int8=os.path.getsize(int8_ckpt))
    # made anew for each batch size: MindSpore and OpenVINO fix their batch at the first call
    makers = {
        "ort_int8": partial(OnnxRuntimePredictor, onnx_int8, "int8 QDQ ONNX"),
        "ort_int8_u8": partial(OnnxRuntimePredictor, onnx_int8_u8, "int8 QDQ ONNX, weights stored as uint8",
                               adapt_weights=False),
        "ort_float": partial(OnnxRuntimePredictor, onnx_float, "float ONNX"),
        "ms_float": partial(MindSporePredictor, float_net),
        "ms_fake_quant": partial(MindSporePredictor, fake_quant),
    }
    if reference_path:
        makers["ort_int8_ref"] = partial(OnnxRuntimePredictor, reference_path, "onnxruntime-quantized ONNX",
                                         adapt_weights=False)
    if importlib.util.find_spec("openvino"):  # OpenVINO on the same two ONNX models
        makers["ov_int8"] = partial(OpenVinoPredictor, onnx_int8, "int8 QDQ ONNX, OpenVINO")
        makers["ov_float"] = partial(OpenVinoPredictor, onnx_float, "float ONNX, OpenVINO")
        sizes.update(ov_int8=len(onnx_int8), ov_float=len(onnx_float))
    else:
        print("(OpenVINO: not installed here; skipped)")
    if timm_int8:
        makers["timm_int8"] = partial(OnnxRuntimePredictor, timm_int8, "timm's ONNX, quantize_static",
                                      adapt_weights=False)
        makers["timm_float"] = partial(OnnxRuntimePredictor, timm_float, "timm's ONNX", adapt_weights=False)
    return {name: makers[name] for name in args.backends if name in makers}, sizes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", help="fake-quant checkpoint (train.py --quant output); default: random")
    parser.add_argument("--width", type=float, default=1.0, choices=(0.5, 1.0), help="GhostNet width")
    parser.add_argument("--num_classes", type=int, default=37, help="classes of the classifier")
    parser.add_argument("--image_size", type=int, default=224, help="side of the input images")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 16], help="batch sizes to time")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS,
                        help="what to time (ort_int8: ours, weights stored as this CPU needs; ort_int8_u8: "
                             "weights stored as uint8; ort_int8_ref: onnxruntime's own quantizer on our "
                             "float model, uint8 weights where the CPU lacks VNNI)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; the median is reported")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one backend's turn in a round")
    args = parser.parse_args()

    makers, sizes = build_networks(args)
    print(f"GhostNet width {args.width}, {args.num_classes} classes, {args.image_size}px, CPU "
          f"({os.cpu_count()} cores); median of {args.rounds} alternating rounds of {args.seconds:g} s")
    print(f"int8 instructions: {int8_instruction_set()}")
    for batch in args.batch_sizes:
        images = np.random.default_rng(batch).standard_normal(
            (batch, 3, args.image_size, args.image_size)).astype(np.float32)
        timed = {name: (lambda p=make(): p(images)) for name, make in makers.items()}
        worker = TorchWorker.start("infer", batch, args.image_size, args.num_classes, args.width) \
            if "torch" in args.backends else None
        if worker is not None:
            timed["torch"] = worker
        medians = alternating_medians(timed, batch, args.rounds, args.seconds)
        print(f"\nbatch {batch} ({int8_instruction_set()})")
        print_table(medians, ("torch", "ort_float", "timm_int8"),
                    {name: {"file MB": f"{sizes.get(name, 0) / 2**20:.1f}"} for name in medians})
    print(f"\nint8 checkpoint: {sizes['ms_int8'] / 2**20:.1f} MB")


if __name__ == "__main__":
    from bench.timing import recorded

    with recorded("bench_deploy"):
        main()
