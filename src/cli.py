"""Command-line plumbing shared by every entry point: logging, the device, the common flags and
one error path (:func:`run_script`)."""
import logging
import signal
import sys

import mindspore as ms

from src.errors import DeviceError, UserError
from src.outputs import WRITE_ERRNOS, why_not_written
from src.ghostnet import WIDTH_CHOICES

DEVICE_TARGETS = ("CPU", "GPU", "Ascend")
BACKENDS = ("mindspore", "onnxruntime", "openvino")


def setup_logging(rank=0):
    prefix = f"[rank {rank}] " if rank else ""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format=f"%(asctime)s {prefix}%(levelname)s %(message)s", datefmt="%H:%M:%S")


def run_script(main, parser, logger, argv=None, known_args=False):
    """Parse the command line and run ``main(args)``.

    A :class:`~src.errors.UserError` (bad input, whose message names the fix) is logged as
    one line and exits with code 2 (or the error's ``exit_code``), and so is a write the system
    refused. SIGTERM raises :class:`Terminated` where the script is, so that its writers remove
    their temporary files on the way out (exit code 143); Ctrl-C likewise (130). Every other
    exception keeps its traceback. With
    ``known_args`` the options the parser does not know are passed on as ``args.extra``.
    ``main`` may return an exit code (an int); anything else means success.
    """
    if known_args:
        args, extra = parser.parse_known_args(argv)
        args.extra = extra
    else:
        args = parser.parse_args(argv)
    setup_logging()
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        result = main(args)
    except UserError as err:
        logger.error("%s", err)
        sys.exit(getattr(err, "exit_code", 2))
    except Terminated:
        logger.error("stopped by SIGTERM; nothing half-written was left")
        sys.exit(128 + signal.SIGTERM)
    except KeyboardInterrupt:
        logger.error("interrupted; nothing half-written was left")
        sys.exit(128 + signal.SIGINT)
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        # a file no writer or reader of ours wrapped (a framework's own): the path and the cause
        where = f"{err.filename}: " if err.filename else ""
        logger.error("%s%s", where, why_not_written(err, err.filename))
        sys.exit(2)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if isinstance(result, int) and not isinstance(result, bool) and result:
        sys.exit(result)


class Terminated(BaseException):
    """SIGTERM arrived (:func:`run_script`); a BaseException, as KeyboardInterrupt, so that no
    ``except Exception`` takes it for an ordinary error."""


def _terminate(signum, frame):
    raise Terminated()


def set_device(device_target, graph_mode=True):
    if device_target not in DEVICE_TARGETS:
        raise DeviceError(f"device_target must be one of {DEVICE_TARGETS}, got {device_target!r}")
    ms.set_context(mode=ms.GRAPH_MODE if graph_mode else ms.PYNATIVE_MODE)
    try:
        ms.set_device(device_target)
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[0]
        raise DeviceError(f"MindSpore cannot run on {device_target} here ({first_line[:200]}). "
                          f"Install MindSpore's {device_target} support (drivers and libraries), or "
                          "pass --device_target CPU.") from None


def add_device_argument(parser):
    parser.add_argument("--device_target", "--platform", dest="device_target", default="CPU",
                        choices=DEVICE_TARGETS,
                        help="where to run (--platform is the original package's name for it)")


def add_width_argument(parser, help="GhostNet width multiplier"):
    parser.add_argument("--width", type=float, default=1.0, choices=WIDTH_CHOICES, help=help)


def add_network_arguments(parser):
    """--num_classes and --width, for the scripts that build a network for a checkpoint."""
    parser.add_argument("--num_classes", type=int, default=37, help="classes of the classifier")
    add_width_argument(parser)


def add_backend_argument(parser):
    parser.add_argument("--backend", default="mindspore", choices=BACKENDS,
                        help="what runs the network: MindSpore on --device_target, or onnxruntime or OpenVINO "
                             "(pip install openvino) on the CPU")
