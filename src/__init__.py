"""GhostNet on Oxford-IIIT Pet for MindSpore: network, data, training, int8."""
import os

# MindSpore's oneDNN runs on OpenMP, whose idle threads spin by default and take the cores
# from MindSpore's own threads between two kernels: on CPU, GhostNet ran 2x slower. libgomp
# reads this once, when MindSpore first loads it, so entry scripts import src first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _prefer_compiled_protobuf():
    """MindSpore sets protobuf's pure-Python implementation where none is set (a guard for
    checkpoints of gigabytes); on ours (15 MB at most) it made each checkpoint read and write
    and each MINDIR export a second or two slower than protobuf's compiled one (``upb``, where
    the installed protobuf has it). protobuf reads the choice when it first loads: where
    MindSpore or protobuf is imported before src, this changes nothing."""
    from importlib import util

    try:
        compiled = util.find_spec("google._upb._message") is not None
    except ImportError:  # no google package
        return
    if compiled:
        os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "upb")


def _require_numpy_1():
    """MindSpore 2.10 is compiled against numpy 1.x and fails deep inside under numpy 2 (which
    pip installs when another package asks for it): say so at once, without importing MindSpore."""
    import sys
    from importlib import util

    if util.find_spec("mindspore") is None:  # a deploy-only install (for_this_cpu): any numpy
        return
    try:
        import numpy
    except ImportError:
        return  # the import that needs it names it
    version = str(getattr(numpy, "__version__", "0"))
    major = version.split(".")[0]
    if major.isdigit() and int(major) >= 2:
        sys.stderr.write(f"ERROR numpy {version} is installed, but MindSpore 2.10 needs numpy 1.x: "
                         'run pip install "numpy<2"\n')
        raise SystemExit(2)


_require_numpy_1()
_prefer_compiled_protobuf()
