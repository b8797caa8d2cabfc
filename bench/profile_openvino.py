"""Where OpenVINO spends its time on our ONNX models and on timm's: its per-layer performance counters.

    python bench/profile_openvino.py [--checkpoint FAKE_QUANT.ckpt] [--batch_size 1] [--runs 200] [--top 14]

Compiles our int8 model as stored with int8 weights (what runs on a CPU with VNNI) and with
uint8 weights (what the predictors run where the int8 kernels would saturate), our float model
and timm's float model (where torch and timm are installed) with ``PERF_COUNT``, runs each ``--runs`` times on one batch, and
prints, per model, the total time by layer type and kernel (``exec_type``: e.g.
``jit_avx512_amx_I8`` or ``ref_any_FP32``) and the slowest single layers. Without
--checkpoint the weights are random and calibrated on random images (the graph, not the
values, decides where time goes).
"""
import argparse
import os
import sys
import tempfile
from collections import defaultdict

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import src  # noqa: E402,F401  (before MindSpore: sets OMP_WAIT_POLICY)
from bench.bench_deploy import bench_networks  # noqa: E402
from bench.timing import TorchWorker  # noqa: E402


def profile(core, model, images, runs):
    """``[(node name, layer type, exec type, microseconds per run)]`` of ``model`` on ``images``."""
    model.reshape({model.inputs[0]: list(images.shape)})
    compiled = core.compile_model(model, "CPU", {"PERF_COUNT": True})
    request = compiled.create_infer_request()
    request.infer({0: images})  # warm-up, not counted
    totals = defaultdict(float)
    kinds = {}
    for _ in range(runs):
        request.infer({0: images})
        for info in request.profiling_info:
            if info.status.name != "EXECUTED":
                continue
            totals[info.node_name] += info.real_time.total_seconds() * 1e6
            kinds[info.node_name] = (info.node_type, info.exec_type)
    return [(name, *kinds[name], total / runs) for name, total in totals.items()]


def report(title, rows, top):
    total = sum(row[3] for row in rows)
    print(f"\n## {title}: {total / 1000:.2f} ms per batch in {len(rows)} executed layers")
    by_kind = defaultdict(lambda: [0.0, 0])
    for _, node_type, exec_type, us in rows:
        by_kind[(node_type, exec_type)][0] += us
        by_kind[(node_type, exec_type)][1] += 1
    print(f"{'layer type':>22} {'kernel':>28} {'layers':>6} {'ms':>7} {'share':>6}")
    for (node_type, exec_type), (us, count) in sorted(by_kind.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"{node_type:>22} {exec_type:>28} {count:>6} {us / 1000:>7.3f} {us / total:>6.1%}")
    print("slowest layers:")
    for name, node_type, exec_type, us in sorted(rows, key=lambda row: -row[3])[:top // 2]:
        print(f"  {us / 1000:7.3f} ms  {node_type:>16} {exec_type:>24}  {name[:70]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", help="fake-quant checkpoint; default: random weights")
    parser.add_argument("--width", type=float, default=1.0, choices=(0.5, 1.0))
    parser.add_argument("--num_classes", type=int, default=37)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--runs", type=int, default=200, help="inferences counted per model")
    parser.add_argument("--top", type=int, default=14, help="rows per table")
    args = parser.parse_args()
    import openvino as ov
    from src.deploy.onnx_export import ghostnet_to_onnx
    from src.quant import convert

    fake_quant, float_net = bench_networks(args)
    core = ov.Core()
    int8_net = convert(fake_quant)
    models = {"ours, int8 weights": ghostnet_to_onnx(int8_net, args.image_size).SerializeToString(),
              "ours, uint8 weights": ghostnet_to_onnx(int8_net, args.image_size, int8_weights="uint8")
              .SerializeToString(),
              "ours, float": ghostnet_to_onnx(float_net, args.image_size).SerializeToString()}
    images = np.random.default_rng(0).standard_normal(
        (args.batch_size, 3, args.image_size, args.image_size)).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        timm_path = os.path.join(folder, "timm.onnx")
        if TorchWorker.export_onnx(timm_path, args.image_size, args.num_classes, args.width):
            with open(timm_path, "rb") as f:
                models["timm, float"] = f.read()
        print(f"OpenVINO {ov.get_version()}, batch {args.batch_size}, {args.image_size}px, mean of {args.runs} runs")
        for title, data in models.items():
            report(title, profile(core, core.read_model(data, b""), images, args.runs), args.top)


if __name__ == "__main__":
    from bench.timing import recorded

    with recorded("profile_openvino"):
        main()
