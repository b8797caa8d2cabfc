"""Process set-up shared by the entry scripts: logging and the MindSpore device."""
import logging
import sys

DEVICE_TARGETS = ("CPU", "GPU", "Ascend")


class DeviceError(ValueError):
    """The requested device cannot be used in this process."""


def setup_logging(rank=0):
    prefix = f"[rank {rank}] " if rank else ""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format=f"%(asctime)s {prefix}%(levelname)s %(message)s", datefmt="%H:%M:%S")


def run_script(main, parser, known_errors, logger):
    """Parse the command line and run ``main(args)``. One of ``known_errors`` (bad input, whose
    message names the fix) is logged as one line and exits with code 2, not a traceback."""
    args = parser.parse_args()
    setup_logging()
    try:
        main(args)
    except known_errors as err:
        logger.error("%s", err)
        sys.exit(2)


def set_device(device_target, graph_mode=True):
    import mindspore as ms

    if device_target not in DEVICE_TARGETS:
        raise ValueError(f"device_target must be one of {DEVICE_TARGETS}, got {device_target!r}")
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


def add_network_arguments(parser):
    """--num_classes and --width, for the scripts that build a network for a checkpoint."""
    parser.add_argument("--num_classes", type=int, default=37, help="classes of the classifier")
    parser.add_argument("--width", type=float, default=1.0, choices=(0.5, 1.0, 1.3),
                        help="GhostNet width multiplier")
