"""Inference backends behind one call, ``predict(images) -> logits`` (numpy, NCHW float32).

* ``mindspore``: the network a checkpoint holds (float, fake-quant or int8), through MindSpore;
* ``onnxruntime``: an ``.onnx`` file, or a checkpoint turned into ONNX in memory (a float
  model, or the int8 QDQ model of src/deploy/onnx_export.py), through onnxruntime on the CPU;
* ``openvino``: the same ONNX models through OpenVINO on the CPU (it reads the QDQ pairs as
  its own int8 quantization).

onnxruntime and onnx are optional (``pip install -r requirements-onnx.txt``), and so is
OpenVINO (``pip install openvino``).
"""
import importlib
import logging

import mindspore as ms
import numpy as np

from src.checkpoint import CheckpointKind
from src.cli import BACKENDS
from src.deploy.fold import fold_batchnorm_for_inference
from src.deploy import weight_storage
from src.deploy.onnx_export import onnx_model_from_checkpoint
from src.errors import BackendError
from src.models import load_network

logger = logging.getLogger(__name__)

ONNX_INSTALL_HINT = "pip install -r requirements-onnx.txt (onnx and onnxruntime)"
OPENVINO_INSTALL_HINT = "pip install openvino"


def require_module(name, purpose, install_hint=ONNX_INSTALL_HINT):
    try:
        return importlib.import_module(name)
    except ImportError:
        raise BackendError(f"{purpose} needs the Python package {name!r}, which is not installed: "
                           f"{install_hint}") from None


def _pad_batch(images, size):
    """``images`` with zero images appended up to ``size`` (a compiled or fixed batch)."""
    if images.shape[0] == size:
        return images
    return np.concatenate([images, np.zeros((size - images.shape[0],) + images.shape[1:], images.dtype)])


def in_fixed_batches(run, images, batch_size):
    """``run`` (a batch of exactly ``batch_size`` images -> logits) over ``images`` of any count:
    chunks of ``batch_size``, the last one padded and its padding cut from the logits."""
    outputs = []
    for start in range(0, images.shape[0], batch_size):
        chunk = images[start:start + batch_size]
        outputs.append(np.asarray(run(_pad_batch(chunk, batch_size)))[:chunk.shape[0]])
    return np.concatenate(outputs)


class MindSporePredictor:
    """A MindSpore cell in eval mode; batches are padded to the first batch's size so that a
    smaller last batch reuses the compiled graph."""

    def __init__(self, net, description="network"):
        self.net = net
        self.net.set_train(False)
        self.description = description
        self.batch_size = None

    def __call__(self, images):
        self.batch_size = self.batch_size or images.shape[0]
        return in_fixed_batches(lambda batch: self.net(ms.Tensor(batch)).asnumpy(), images, self.batch_size)


def weights_for_this_cpu(model, runtime, description):
    """``model`` (a path or serialized bytes) with its int8 weights stored as ``runtime`` computes
    them exactly and fastest here (src/deploy/weight_storage.py); unchanged without onnx."""
    try:
        importlib.import_module("onnx")  # optional: only .onnx files from elsewhere need it
    except ImportError:
        logger.warning("onnx is not installed, so %s runs as stored; if it holds int8 weights and this is "
                       "an x86 CPU without VNNI, they are computed wrongly: %s", description, ONNX_INSTALL_HINT)
        return model
    return weight_storage.for_this_cpu(model, runtime, description)


class OnnxRuntimePredictor:
    """An ONNX model in an onnxruntime CPU session (a fixed batch axis is padded to).

    ``adapt_weights``: store int8 weights as this CPU needs first (:func:`weights_for_this_cpu`);
    False runs the model exactly as given.
    """

    def __init__(self, model, description="ONNX model", threads=0, adapt_weights=True):
        ort = require_module("onnxruntime", "the onnxruntime backend")
        if adapt_weights:
            model = weights_for_this_cpu(model, "onnxruntime", description)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own types for unreadable models
            raise BackendError(f"onnxruntime cannot load {description}: {str(err).splitlines()[0]}") from None
        self.description = description
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        batch, _, height, _ = model_input.shape
        self.batch_size = batch if isinstance(batch, int) else None
        self.image_size = height if isinstance(height, int) else None
        self.num_classes = self.session.get_outputs()[0].shape[-1]

    def __call__(self, images):
        if self.batch_size is None:
            return self._run(images)
        return in_fixed_batches(self._run, images, self.batch_size)

    def _run(self, batch):
        return self.session.run(None, {self.input_name: batch})[0]


class OpenVinoPredictor:
    """An ONNX model (a path, serialized bytes, or an ``openvino.Model``) compiled by OpenVINO for
    the CPU. The batch axis is fixed at the first batch's size (a smaller last batch is padded),
    so one compiled model serves every call (an ``openvino.Model`` given is reshaped in place).
    ``adapt_weights`` as for :class:`OnnxRuntimePredictor`, for ONNX models only: an
    ``openvino.Model`` runs as given."""

    def __init__(self, model, description="ONNX model", threads=0, adapt_weights=True):
        ov = require_module("openvino", "the openvino backend", OPENVINO_INSTALL_HINT)
        self.core = ov.Core()
        self.config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
        if adapt_weights and not isinstance(model, ov.Model):
            model = weights_for_this_cpu(model, "openvino", description)
        try:
            if isinstance(model, ov.Model):
                self.model = model
            elif isinstance(model, bytes):
                self.model = self.core.read_model(model, b"")
            else:
                self.model = self.core.read_model(model)
        except Exception as err:  # OpenVINO raises its own types for unreadable models
            raise BackendError(f"OpenVINO cannot load {description}: {str(err).splitlines()[0]}") from None
        self.description = description
        shape = self.model.inputs[0].get_partial_shape()
        self.image_size = shape[2].get_length() if shape[2].is_static else None
        self.batch_size = None
        self.compiled = None

    def __call__(self, images):
        if self.compiled is None:
            self.batch_size = images.shape[0]
            try:
                self.model.reshape({self.model.inputs[0]: list(images.shape)})
                self.compiled = self.core.compile_model(self.model, "CPU", self.config)
            except Exception as err:  # OpenVINO raises its own types
                raise BackendError(f"OpenVINO cannot compile {self.description} for the CPU: "
                                   f"{str(err).splitlines()[0]}") from None
        return in_fixed_batches(lambda batch: self.compiled(batch)[self.compiled.outputs[0]], images,
                                self.batch_size)


def create_predictor(backend, model_path, width=1.0, num_classes=37, image_size=224, quant=False):
    """A predictor (see the module docstring) for a checkpoint (``.ckpt``) or, with onnxruntime or
    OpenVINO, an ``.onnx`` file; its ``description`` says what runs."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if model_path.endswith(".onnx"):
        if backend == "mindspore":
            raise BackendError(f"{model_path} is an ONNX model; evaluate it with --backend onnxruntime "
                               "(or openvino)")
        runner = OnnxRuntimePredictor if backend == "onnxruntime" else OpenVinoPredictor
        predictor = runner(model_path, model_path)
        if predictor.image_size not in (None, image_size):
            raise BackendError(f"{model_path} takes {predictor.image_size}x{predictor.image_size} images but "
                               f"--image_size is {image_size}; pass --image_size {predictor.image_size}")
        return predictor
    if backend == "mindspore":
        net, kind = load_network(model_path, width, num_classes, quant)
        if kind == CheckpointKind.FLOAT:
            fold_batchnorm_for_inference(net)
        return MindSporePredictor(net, f"{model_path} ({kind} network, MindSpore)")
    require_module("onnx", "turning a checkpoint into an ONNX model")
    if backend == "openvino":
        require_module("openvino", "the openvino backend", OPENVINO_INSTALL_HINT)
    else:
        require_module("onnxruntime", "the onnxruntime backend")
    model, kind = onnx_model_from_checkpoint(model_path, width, num_classes, image_size, quant=quant)
    runner = OpenVinoPredictor if backend == "openvino" else OnnxRuntimePredictor
    # int8 weights, re-stored by the predictor where this CPU's int8 kernels would saturate
    return runner(model.SerializeToString(), f"{model_path} ({kind} model, {backend})")
