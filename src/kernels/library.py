"""The compiled CPU kernels: one shared library built from the C++ sources beside this file.

The sources are compiled on first use by the machine's C++ compiler into a cache folder keyed
by the sources, the flags, the compiler and the CPU (``$XDG_CACHE_HOME/ghostnet_pets/kernels``,
default ``~/.cache``), atomically, so concurrent processes are safe. Without a compiler
:func:`build_kernel_library` returns None after one warning and callers keep the framework's
operators.

Kernel threads: ``OMP_NUM_THREADS`` when set (as for MindSpore's oneDNN), else MindSpore's
CPU op thread setting where it can be read, else the process's usable cores (at most
MindSpore's default of 25).
"""
import concurrent.futures
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile

logger = logging.getLogger(__name__)

_HERE = os.path.dirname(os.path.abspath(__file__))
KERNEL_SOURCES = tuple(os.path.join(_HERE, name) for name in ("common.cc", "depthwise_conv.cc", "fake_quant.cc",
                                                             "batchnorm.cc", "channel_scale.cc", "optimizer.cc",
                                                             "depthwise_batchnorm.cc", "qat_depthwise.cc"))
KERNEL_HEADERS = tuple(os.path.join(_HERE, name) for name in ("common.h", "depthwise.h", "batchnorm.h", "qat.h"))
LIBRARY_NAME = "ghostnet_kernels.so"
# -ffp-contract=off: no fused multiply-adds, so the fake-quant kernels round exactly as the
# framework's operators do. -fno-trapping-math -fno-math-errno change no value; they let the
# compiler vectorize floor() (the fake-quant kernels ran 3-5x slower without).
COMPILE_FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-trapping-math", "-fno-math-errno",
                 "-shared", "-fPIC", "-std=c++17", "-pthread")
FRAMEWORK_THREAD_CAP = 25  # MindSpore's default CPU op thread count, when not configured
_library = {}  # "path": built library or None once tried


def cache_folder():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ghostnet_pets", "kernels")


def _compiler():
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    return None


def cpu_flags():
    """This CPU's feature flags (Linux /proc/cpuinfo; empty where unreadable)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            line = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return set()
    return set(line.partition(":")[2].split())


def _cpu_signature():
    """What -march=native depends on: the CPU's flags."""
    return " ".join(sorted(cpu_flags())) or platform.processor()


def _cache_key(compiler, source):
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    digest = hashlib.sha256()
    for part in (source, " ".join(COMPILE_FLAGS), compiler, "".join(version), platform.machine(), _cpu_signature()):
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _read_sources():
    digest = b""
    for path in KERNEL_HEADERS + KERNEL_SOURCES:
        with open(path, "rb") as f:
            digest += os.path.basename(path).encode() + b"\0" + f.read() + b"\0"
    return digest


def build_kernel_library():
    """Path of the compiled kernel library, compiling it if needed; None (one warning) if impossible."""
    if "path" in _library:
        return _library["path"]
    compiler = _compiler()
    path = None
    if compiler is None:
        logger.warning("no C++ compiler (c++, g++ or clang++) found: depthwise convolutions and "
                       "fake-quant arithmetic use MindSpore's CPU operators, several times slower. "
                       "Install one (e.g. `apt install g++`) for the fast CPU path.")
    else:
        target_folder = os.path.join(cache_folder(), _cache_key(compiler, _read_sources()))
        path = os.path.join(target_folder, LIBRARY_NAME)
        if not os.path.isfile(path):
            path = _compile(compiler, target_folder, path)
    if path is not None:
        threads = _omp_num_threads() or _framework_threads()
        ctypes.CDLL(path).KernelsSetThreads(threads)
    _library["path"] = path
    return path


def _omp_num_threads():
    """The first number of ``OMP_NUM_THREADS`` (it may list one per nesting level: "4,2"); 0 if unset or unreadable."""
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(first) if first.isdigit() else 0


def _framework_threads():
    try:  # private API: read only to match MindSpore's own thread count
        from mindspore._c_expression import RuntimeConf
        conf = RuntimeConf.get_instance()
        if conf.is_op_threads_num_configured() and hasattr(conf, "get_op_threads_num"):
            return conf.get_op_threads_num()
    except (ImportError, AttributeError):
        pass
    return min(_usable_cores(), FRAMEWORK_THREAD_CAP)


def _usable_cores():
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return usable or 1


def _compile(compiler, folder, path):
    """Compile each source on its own, all at once on the usable cores (they take 0.5-4.5 s
    each), then link; the library appears at ``path`` atomically, or not at all."""
    os.makedirs(folder, exist_ok=True)
    logger.info("compiling the CPU kernels into %s", folder)
    with tempfile.TemporaryDirectory(dir=folder) as work:
        sources = sorted(KERNEL_SOURCES, key=os.path.getsize, reverse=True)  # the longest compiles first
        objects = [os.path.join(work, os.path.basename(source) + ".o") for source in sources]
        commands = [[compiler, *COMPILE_FLAGS, "-c", source, "-o", target] for source, target in zip(sources, objects)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=_usable_cores()) as pool:
            results = list(pool.map(lambda command: subprocess.run(command, capture_output=True, text=True),
                                    commands))
        partial = os.path.join(work, LIBRARY_NAME)
        commands.append([compiler, *COMPILE_FLAGS, *objects, "-o", partial])
        if all(result.returncode == 0 for result in results):
            results.append(subprocess.run(commands[-1], capture_output=True, text=True))
        failed = next(((command, result) for command, result in zip(commands, results) if result.returncode != 0),
                      None)
        if failed is not None:
            logger.warning("compiling the CPU kernels failed (%s); depthwise convolutions and fake-quant "
                           "arithmetic use MindSpore's CPU operators. Compiler output:\n%s", " ".join(failed[0]),
                           failed[1].stderr.strip()[-2000:])
            return None
        os.replace(partial, path)  # atomic: a concurrent build leaves one complete file
    return path
