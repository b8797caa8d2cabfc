"""ONNX from our checkpoints (float, and int8 as a QDQ model), onnxruntime as a backend, classify.py."""
import re
import sys

import mindspore as ms
import numpy as np
import pytest
from PIL import Image

from conftest import SMALL_NET, run
from src.checkpoint import CheckpointError, load_strict, save_params
from src.dataset import create_dataset
from src.evaluation import predict_logits
from src.ghostnet import GhostNet
from src.deploy import weight_storage
from src.deploy.onnx_export import ghostnet_to_onnx
from src.deploy.predictors import (BackendError, MindSporePredictor, OnnxRuntimePredictor, OpenVinoPredictor,
                                   create_predictor, weights_for_this_cpu)
from src.models import load_network
from src.quant import build_int8_network, calibrate, convert, prepare

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")



def randn(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


class _Batches:
    """The two methods of a dataset calibrate() uses, over fixed arrays."""

    def __init__(self, *batches):
        self.batches = batches

    def create_tuple_iterator(self, num_epochs=1):
        return iter([(ms.Tensor(b), None) for b in self.batches])


@pytest.fixture(scope="module")
def int8_net():
    """A calibrated width-0.5 int8 network with BatchNorm statistics that are not the identity."""
    ms.set_seed(21)
    net = GhostNet(width=0.5, num_classes=4)
    rng = np.random.default_rng(4)
    for name, param in net.parameters_and_names():
        if name.endswith(("moving_variance", "gamma")):
            param.set_data(ms.Tensor(rng.uniform(0.5, 2.0, param.shape).astype(np.float32)))
        elif name.endswith(("moving_mean", "beta")):
            param.set_data(ms.Tensor(rng.normal(0, 0.2, param.shape).astype(np.float32)))
    fake_quant = prepare(net)
    calibrate(fake_quant, _Batches(randn(4, 3, 32, 32, seed=1), randn(4, 3, 32, 32, seed=2)), 2)
    return convert(fake_quant)


def session(model):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def test_a_predictor_takes_more_images_than_its_first_batch(int8_net):
    predictor = MindSporePredictor(int8_net)  # its batch is fixed at the first call's 2
    x = randn(5, 3, 32, 32, seed=11)
    assert predictor(x[:2]).shape == (2, 4)
    np.testing.assert_allclose(predictor(x), int8_net(ms.Tensor(x)).asnumpy(), atol=1e-5)


def test_int8_weights_scales_and_biases_reach_onnx_exactly(int8_net):
    # quantized at each layer's input only, the ONNX model is the int8 network's arithmetic
    x = randn(3, 3, 32, 32, seed=3)
    (logits,) = session(ghostnet_to_onnx(int8_net, 32, requantize=False)).run(None, {"image": x})
    expected = int8_net(ms.Tensor(x)).asnumpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("storage", weight_storage.WEIGHT_STORAGES)
def test_the_qdq_model_holds_int8_weights_and_runs_on_int8_kernels(int8_net, tmp_path, storage):
    model = ghostnet_to_onnx(int8_net, 32, int8_weights=storage)
    initializers = {init.name: init for init in model.graph.initializer}
    ops = [node.op_type for node in model.graph.node]
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    assert len(convs) == 96 and "BatchNormalization" not in ops and "Gemm" not in ops  # the classifier: 1x1
    assert ops.count("QuantizeLinear") >= 95
    producers = {out: node for node in model.graph.node for out in node.output}
    for conv in convs:
        weight = producers[conv.input[1]]
        assert weight.op_type == "DequantizeLinear"
        assert initializers[weight.input[0]].data_type == onnx.helper.np_dtype_to_tensor_dtype(np.dtype(storage))
        assert initializers[producers[conv.input[2]].input[0]].data_type == onnx.TensorProto.INT32
    assert {p.key: p.value for p in model.metadata_props}[weight_storage.METADATA_KEY] == storage
    # what onnxruntime makes of it: every convolution on its int8 kernel but the classifier, whose
    # float output (the logits) is not requantized: it runs on the dequantized weights
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(tmp_path / "optimized.onnx")).graph
    optimized = [node.op_type for node in graph.node]
    assert optimized.count("QLinearConv") == 95
    assert [node.name for node in graph.node if node.op_type in ("Conv", "FusedConv")] == ["classifier"]
    # each ghost module's concatenation is a copy: its halves come in its own quantization
    values = {init.name: onnx.numpy_helper.to_array(init).item() for init in graph.initializer if not init.dims}
    concats = [node for node in graph.node if node.op_type == "QLinearConcat"]
    assert len(concats) == 32
    for node in concats:  # inputs: Y scale, Y zero point, then (X, X scale, X zero point) per part
        output = (values[node.input[0]], values[node.input[1]])
        parts = [(values[node.input[i]], values[node.input[i + 1]]) for i in range(3, len(node.input), 3)]
        assert parts == [output] * 2, node.name


def probe_runs_on_int8_kernels(tmp_path):
    """The operators onnxruntime runs the probe with."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "probe.onnx")
    ort.InferenceSession(weight_storage.probe_model("int8"), options, providers=["CPUExecutionProvider"])
    return [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]


@pytest.mark.parametrize("runtime", weight_storage.RUNTIMES)
def test_the_probe_tells_whether_int8_weights_are_exact_in_each_runtime(runtime, tmp_path):
    pytest.importorskip(runtime)
    exact = [float(weight_storage.PROBE_EXACT)] * len(weight_storage.PROBE_CONVS)
    assert weight_storage.run_probe(runtime, "uint8") == exact  # uint8 x uint8: exact on every CPU
    int8 = weight_storage.run_probe(runtime, "int8")
    # exact, or the saturated pair sums of an x86 CPU without VNNI: about half, in the 1x1 convolution
    assert int8 == exact or int8[0] < 0.75 * weight_storage.PROBE_EXACT, int8
    assert weight_storage.int8_weights_exact(runtime) == (int8 == exact)
    assert weight_storage.storage_for(runtime) == ("int8" if int8 == exact else "uint8")
    if runtime == "onnxruntime":  # the probe measures the int8 kernels, not a float fallback
        assert probe_runs_on_int8_kernels(tmp_path).count("QLinearConv") == len(weight_storage.PROBE_CONVS)


def dequantized_initializers(model, types):
    """The initializers of ``types`` that DequantizeLinear nodes read as their first input."""
    initializers = {t.name: t for t in model.graph.initializer}
    return [initializers[n.input[0]] for n in model.graph.node if n.op_type == "DequantizeLinear"
            and n.input[0] in initializers and initializers[n.input[0]].data_type in types]


def test_restoring_weights_keeps_shared_zero_points_consistent():
    # two convolutions whose weights share one scale and zero point, as onnxsim leaves them
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    w1, w2 = (rng.integers(-128, 128, (3, 3, 3, 3)).astype(np.int8) for _ in range(2))
    constants = {"w1": w1, "w2": w2, "scale": np.full(3, 0.01, np.float32), "zero": np.zeros(3, np.int8)}
    nodes = [helper.make_node("DequantizeLinear", [w, "scale", "zero"], [f"{w}d"], axis=0) for w in ("w1", "w2")]
    nodes += [helper.make_node("Conv", ["x", "w1d"], ["h"], pads=[1, 1, 1, 1]),
              helper.make_node("Conv", ["h", "w2d"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 5, 5])],
                              [numpy_helper.from_array(v, k) for k, v in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    x = randn(1, 3, 5, 5, seed=9)
    expected = session(model).run(None, {"x": x})[0]
    assert weight_storage.restore_weights(model, "uint8") == 2
    onnx.checker.check_model(model)
    assert len(dequantized_initializers(model, {TensorProto.UINT8})) == 2
    assert not dequantized_initializers(model, {TensorProto.INT8})
    np.testing.assert_allclose(session(model).run(None, {"x": x})[0], expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("runtime", weight_storage.RUNTIMES)
@pytest.mark.parametrize("stored", weight_storage.WEIGHT_STORAGES)
def test_weights_are_restored_as_the_probe_says_and_compute_the_same(monkeypatch, int8_net, runtime, stored):
    pytest.importorskip(runtime)
    model = ghostnet_to_onnx(int8_net, 32, int8_weights=stored).SerializeToString()
    x = randn(2, 3, 32, 32, seed=5)
    exact_here = {"uint8", weight_storage.storage_for(runtime)}
    expected = OnnxRuntimePredictor(ghostnet_to_onnx(int8_net, 32, int8_weights="uint8").SerializeToString(),
                                    adapt_weights=False)(x)
    for storage in weight_storage.WEIGHT_STORAGES:
        monkeypatch.setattr(weight_storage, "int8_weights_exact", lambda runtime, s=storage: s == "int8")
        adapted = weights_for_this_cpu(model, runtime, "model")
        proto = onnx.load_from_string(adapted)
        weights = dequantized_initializers(proto, {onnx.TensorProto.INT8, onnx.TensorProto.UINT8})
        dtype = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(storage))
        assert len(weights) == 96 and all(t.data_type == dtype for t in weights)
        assert {p.key: p.value for p in proto.metadata_props}[weight_storage.METADATA_KEY] == storage
        assert (adapted is model) == (storage == stored)  # nothing to change: the caller's bytes
        # the same numbers, stored otherwise: bit for bit in onnxruntime (OpenVINO runs uint8
        # weights on another path than its int8 kernels: within rounding, checked under emulation)
        if storage in exact_here and runtime == "onnxruntime":
            np.testing.assert_array_equal(predictor_class(runtime)(adapted, adapt_weights=False)(x), expected)


def runtime_weight_types(runtime, predictor):
    """The element types of the 4-d 8-bit weight constants the runtime was handed."""
    if runtime == "onnxruntime":
        return {t.data_type for t in dequantized_initializers(onnx.load_from_string(predictor.handed),
                                                              {onnx.TensorProto.INT8, onnx.TensorProto.UINT8})}
    return {op.get_element_type().get_type_name() for op in predictor.model.get_ops()
            if op.get_type_name() == "Constant" and op.get_element_type().get_type_name() in ("i8", "u8")
            and len(op.get_output_shape(0)) == 4}


@pytest.mark.parametrize("runtime", weight_storage.RUNTIMES)
def test_both_predictors_hand_the_runtime_the_weights_this_cpu_needs(monkeypatch, int8_net, runtime):
    pytest.importorskip(runtime)
    real_session = ort.InferenceSession

    def recording_session(model, *args, **kwargs):
        session = real_session(model, *args, **kwargs)
        recording_session.handed = model
        return session
    monkeypatch.setattr(ort, "InferenceSession", recording_session)
    model = ghostnet_to_onnx(int8_net, 32).SerializeToString()  # int8 weights
    expected = {"onnxruntime": {onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8"},
                "openvino": {"i8": "int8", "u8": "uint8"}}[runtime]
    for saturates, adapt, stored in ((True, True, "uint8"), (False, True, "int8"), (True, False, "int8")):
        monkeypatch.setattr(weight_storage, "int8_weights_exact", lambda runtime, s=saturates: not s)
        predictor = predictor_class(runtime)(model, adapt_weights=adapt)
        predictor.handed = getattr(recording_session, "handed", None)
        assert {expected[t] for t in runtime_weight_types(runtime, predictor)} == {stored}, (saturates, adapt)


def test_for_this_cpu_probes_only_models_with_8bit_weights(monkeypatch, int8_net, tmp_path):
    from src.ghostnet import GhostNet

    float_net = GhostNet(width=0.5, num_classes=4)
    float_net.set_train(False)
    float_model = ghostnet_to_onnx(float_net, 32)
    monkeypatch.setattr(weight_storage, "int8_weights_exact", lambda runtime: pytest.fail("probed a float model"))
    path = tmp_path / "float.onnx"
    path.write_bytes(float_model.SerializeToString())
    assert weight_storage.for_this_cpu(str(path)) == str(path)
    assert weight_storage.for_this_cpu(float_model) == float_model.SerializeToString()  # what a runtime takes
    (tmp_path / "notes.txt").write_text("not a model")
    assert weight_storage.for_this_cpu(str(tmp_path / "notes.txt")) == str(tmp_path / "notes.txt")
    monkeypatch.setattr(weight_storage, "int8_weights_exact", lambda runtime: False)
    restored = onnx.load_from_string(weight_storage.for_this_cpu(ghostnet_to_onnx(int8_net, 32)))
    assert {p.key: p.value for p in restored.metadata_props}[weight_storage.METADATA_KEY] == "uint8"


def test_the_metadata_names_a_helper_that_exists(int8_net):
    import importlib

    model = ghostnet_to_onnx(int8_net, 32)
    text = {p.key: p.value for p in model.metadata_props}["ghostnet.exact_on"]
    dotted = re.search(r"src(?:\.\w+)+", text).group(0)
    module, _, name = dotted.rpartition(".")
    assert callable(getattr(importlib.import_module(module), name))


def predictor_class(runtime):
    return OnnxRuntimePredictor if runtime == "onnxruntime" else OpenVinoPredictor


def test_int8_checkpoints_of_earlier_releases_are_refused_with_the_fix(int8_net, tmp_path):
    # the first release recorded no output ranges, and until each ghost module had one
    # quantization, the layer reading its output had its own
    params = {name: param.asnumpy() for name, param in int8_net.parameters_and_names()
              if not name.endswith(("output_min", "output_max"))}
    reader = "blocks.0.ghost2.primary_conv.conv"
    params.update({f"{reader}.act_scale": np.ones(1, np.float32), f"{reader}.act_zero_point": np.zeros(1, np.int32)})
    save_params(params, str(tmp_path / "old_int8.ckpt"))
    with pytest.raises(CheckpointError, match=r"old_int8\.ckpt was written before .* one int8 scale.*train\.py --quant"):
        load_network(str(tmp_path / "old_int8.ckpt"), width=0.5, num_classes=4)


def test_an_int8_network_without_output_ranges_exports_its_own_arithmetic(int8_net, caplog):
    net = build_int8_network(width=0.5, num_classes=4)
    load_strict(net, {name: np.zeros(1, np.float32) if name.endswith(("output_min", "output_max")) else param.asnumpy()
                      for name, param in int8_net.parameters_and_names()})
    net.set_train(False)
    x = randn(2, 3, 32, 32, seed=8)
    with caplog.at_level("WARNING"):
        model = ghostnet_to_onnx(net, 32)
    assert "95 convolutions have no observed output range" in caplog.text
    (logits,) = session(model).run(None, {"image": x})
    np.testing.assert_allclose(logits, net(ms.Tensor(x)).asnumpy(), atol=1e-4)


def test_a_missing_onnxruntime_is_named_with_the_install_command(monkeypatch, checkpoint_4_classes):
    weight_storage.int8_weights_exact.cache_clear()  # an earlier test's probe would hide the import
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendError, match=r"'onnxruntime'.*pip install -r requirements-onnx.txt"):
        create_predictor("onnxruntime", str(checkpoint_4_classes), width=0.5, num_classes=4, image_size=32)


def test_an_onnx_file_for_another_image_size_is_refused(checkpoint_4_classes, tmp_path, subprocess_env):
    result = run(subprocess_env, "export.py", "--checkpoint_path", checkpoint_4_classes, "--file_format", "ONNX",
                 "--file_name", tmp_path / "net.onnx", *SMALL_NET)
    assert result.returncode == 0, result.stderr
    with pytest.raises(BackendError, match=r"takes 32x32 images but --image_size is 64; pass --image_size 32"):
        create_predictor("onnxruntime", str(tmp_path / "net.onnx"), image_size=64)
    with pytest.raises(BackendError, match="evaluate it with --backend onnxruntime"):
        create_predictor("mindspore", str(tmp_path / "net.onnx"), image_size=32)


# --- on the trained int8 recipe (tests/conftest.py: int8_recipe) ----------------------------

def recipe_logits(root, checkpoint, backend):
    """Logits of the recipe's 100 test images, ``checkpoint`` run by ``backend`` (batches of 16)."""
    dataset = create_dataset(str(root / "data" / "test.mindrecord"), train=False, image_size=32,
                             batch_size=16, num_workers=1)
    predictor = create_predictor(backend, str(checkpoint), width=0.5, num_classes=4, image_size=32)
    return np.concatenate([logits for logits, _ in predict_logits(predictor, dataset, log_progress=False)])


def test_int8_onnxruntime_agrees_with_the_fake_quant_network(int8_recipe):
    root, _ = int8_recipe
    checkpoint = root / "qat" / "ghostnet-final.ckpt"  # the fake-quant fine-tuning state
    fake_quant, onnx_int8 = (recipe_logits(root, checkpoint, backend) for backend in ("mindspore", "onnxruntime"))
    assert len(fake_quant) == 100
    agreement = (fake_quant.argmax(1) == onnx_int8.argmax(1)).mean()
    assert agreement >= 0.99
    # The ONNX model requantizes tensors the fake-quant network leaves in float (convolution
    # outputs, concatenations), so a few logits move more than the rest. Five runs of the
    # recipe, relative to the spread: mean 0.006-0.015, max 0.047-0.118 (training drifts from
    # run to run; the old bound, max < 0.1, failed one run in five).
    spread = fake_quant.max() - fake_quant.min()
    difference = np.abs(fake_quant - onnx_int8)
    assert difference.mean() < 0.03 * spread
    assert difference.max() < 0.2 * spread


def test_openvino_agrees_with_the_mindspore_int8_network(int8_recipe):
    pytest.importorskip("openvino")
    root, _ = int8_recipe
    checkpoint = root / "qat" / "ghostnet-int8.ckpt"
    int8, openvino = (recipe_logits(root, checkpoint, backend) for backend in ("mindspore", "openvino"))
    assert len(openvino) == 100  # the last batch of 4 padded to the compiled 16, and cut back
    assert (int8.argmax(1) == openvino.argmax(1)).mean() >= 0.99


def test_a_missing_openvino_is_named_with_the_install_command(monkeypatch, checkpoint_4_classes):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(BackendError, match=r"'openvino'.*pip install openvino"):
        create_predictor("openvino", str(checkpoint_4_classes), width=0.5, num_classes=4, image_size=32)


@pytest.mark.slow
def test_eval_py_runs_onnxruntime_on_checkpoints_and_onnx_files(int8_recipe, tmp_path):
    root, env = int8_recipe
    int8 = root / "qat" / "ghostnet-int8.ckpt"
    result = run(env, "export.py", "--checkpoint_path", int8, "--file_format", "ONNX",
                 "--file_name", tmp_path / "int8.onnx", *SMALL_NET)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "class_names.txt").read_text().split() == (root / "data" / "class_names.txt").read_text().split()
    accuracies = {}
    for name, model, backend in (("mindspore", int8, "mindspore"), ("ort_ckpt", int8, "onnxruntime"),
                                 ("ort_file", tmp_path / "int8.onnx", "onnxruntime")):
        result = run(env, "eval.py", "--dataset_path", root / "data" / "test.mindrecord", "--checkpoint_path",
                     model, "--backend", backend, *SMALL_NET, "--num_workers", 1)
        assert result.returncode == 0, result.stderr
        line = re.search(r"^result: \{'acc': (\d\.\d{4})\} ckpt= (.+)$", result.stdout, re.M)
        assert line and line.group(2) == str(model)
        assert re.search(r"^top5: 1\.0000 samples: 100$", result.stdout, re.M)
        accuracies[name] = float(line.group(1))
    assert accuracies["ort_ckpt"] == accuracies["ort_file"]
    assert abs(accuracies["ort_ckpt"] - accuracies["mindspore"]) <= 0.01


@pytest.mark.parametrize("backend", ["mindspore", "onnxruntime"])
def test_classify_prints_breed_names_for_jpeg_and_png(int8_recipe, tmp_path, backend):
    root, env = int8_recipe
    names = (root / "data" / "class_names.txt").read_text().split()
    test_images = sorted((root / "pets" / "images").glob("*.jpg"))
    jpeg = test_images[0]
    png = tmp_path / "picture.png"
    Image.open(jpeg).save(png)
    result = run(env, "classify.py", "--checkpoint_path", root / "qat" / "ghostnet-int8.ckpt",
                 "--backend", backend, "--top_k", 3, *SMALL_NET, jpeg, png)
    assert result.returncode == 0, result.stderr
    blocks = result.stdout.split(str(png) + "\n")
    assert blocks[0].startswith(str(jpeg) + "\n")
    for block in blocks:
        rows = re.findall(r"^  (\d\.\d{4})  (\S+)$", block, re.M)
        assert len(rows) == 3
        probabilities = [float(p) for p, _ in rows]
        assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1.0001
        assert all(name in names for _, name in rows)
    # the JPEG's breed, from the file name as in the official layout, comes first
    breed = jpeg.stem.rsplit("_", 1)[0]
    assert re.search(rf"^  \d\.\d{{4}}  {breed}$", blocks[0], re.M).start() == blocks[0].index("\n") + 1


def test_classify_names_a_file_that_is_not_an_image(int8_recipe, tmp_path):
    root, env = int8_recipe
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    result = run(env, "classify.py", "--checkpoint_path", root / "qat" / "ghostnet-int8.ckpt", *SMALL_NET, text)
    assert result.returncode == 2
    assert f"{text} is not an image file PIL can read" in result.stderr
    assert "Traceback" not in result.stderr


# --- an x86 CPU without VNNI, emulated (qemu-x86_64 -cpu Haswell: AVX2 int8 kernels) -------------

NO_VNNI_CHILD = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from src.deploy import weight_storage
from src.deploy.predictors import OnnxRuntimePredictor, OpenVinoPredictor

folder = sys.argv[2]
images = np.load(folder + "/images.npy")
runners = {"onnxruntime": OnnxRuntimePredictor, "openvino": OpenVinoPredictor}
found = {}
for runtime in json.loads(sys.argv[3]):
    found[runtime + ".exact"] = np.array(weight_storage.int8_weights_exact(runtime))
    for storage in weight_storage.WEIGHT_STORAGES:
        path = f"{folder}/{storage}.onnx"
        found[f"{runtime}.{storage}.predictor"] = runners[runtime](path, path)(images)
        found[f"{runtime}.{storage}.as_stored"] = runners[runtime](path, path, adapt_weights=False)(images)
np.savez(folder + "/found.npz", **found)
"""


@pytest.mark.slow
def test_on_an_x86_cpu_without_vnni_the_predictors_stay_exact(int8_recipe, tmp_path):
    import importlib.util
    import json
    import shutil
    import subprocess

    from conftest import REPO
    from src.deploy.onnx_export import onnx_model_from_checkpoint

    qemu = shutil.which("qemu-x86_64")
    if qemu is None or not weight_storage.is_x86():
        pytest.skip("needs an x86 machine with qemu-x86_64 (apt-get install qemu-user; .ci/run installs it)")
    version = re.search(r"version (\d+)\.(\d+)", subprocess.run([qemu, "--version"], capture_output=True,
                                                                 text=True).stdout)
    if not version or tuple(map(int, version.groups())) < (7, 2):
        pytest.skip("qemu before 7.2 emulates no AVX2, so -cpu Haswell would not run the AVX2 int8 kernels")
    root, env = int8_recipe
    checkpoint = root / "qat" / "ghostnet-int8.ckpt"
    dataset = create_dataset(str(root / "data" / "test.mindrecord"), train=False, image_size=32, batch_size=50,
                             num_workers=1)
    images = next(dataset.create_tuple_iterator(output_numpy=True, num_epochs=1))[0]
    np.save(tmp_path / "images.npy", images)
    for storage in weight_storage.WEIGHT_STORAGES:
        model, _ = onnx_model_from_checkpoint(str(checkpoint), 0.5, 4, 32, int8_weights=storage)
        (tmp_path / f"{storage}.onnx").write_bytes(model.SerializeToString())
    runtimes = [r for r in weight_storage.RUNTIMES if importlib.util.find_spec(r)]
    (tmp_path / "child.py").write_text(NO_VNNI_CHILD)
    child = subprocess.run([qemu, "-cpu", "Haswell", sys.executable, str(tmp_path / "child.py"), str(REPO),
                            str(tmp_path), json.dumps(runtimes)], capture_output=True, text=True, env=env, timeout=900)
    assert child.returncode == 0, child.stderr[-3000:]
    found = np.load(tmp_path / "found.npz")
    int8_net = MindSporePredictor(load_network(str(checkpoint), 0.5, 4)[0])(images)
    exact_ort = OnnxRuntimePredictor(str(tmp_path / "uint8.onnx"), adapt_weights=False)(images)  # natively
    for runtime in runtimes:
        # the probe sees the emulated CPU's kernels (its /proc/cpuinfo still shows this host's VNNI)
        assert not found[f"{runtime}.exact"], runtime
        for storage in weight_storage.WEIGHT_STORAGES:
            logits = found[f"{runtime}.{storage}.predictor"]
            assert (logits.argmax(1) == int8_net.argmax(1)).mean() >= 0.98, (runtime, storage)
            if runtime == "onnxruntime":  # exactly what the uint8 kernels compute on any CPU
                np.testing.assert_allclose(logits, exact_ort, rtol=1e-5, atol=1e-5)
        if runtime == "openvino":  # the int8 file re-stored computes what the uint8 file does
            np.testing.assert_allclose(found["openvino.int8.predictor"], found["openvino.uint8.as_stored"],
                                       rtol=1e-5, atol=1e-5)
    # what a user's own session computes from the int8 file here, without the re-storing
    assert not np.allclose(found["onnxruntime.int8.as_stored"], exact_ort, rtol=1e-5, atol=1e-5)
