"""Writing output safely: folders created with a message instead of a traceback, held by one
run at a time, and files written atomically.

``write_atomically`` is the one way files are written (checkpoints, models, config.json,
class_names.txt): a temporary file in the same folder, renamed into place when complete.

``FolderLock`` holds an exclusive ``fcntl.flock`` on ``FOLDER/.lock`` (Linux, macOS), which
records the holder's pid and host. The kernel drops the lock when its process dies, so the
lock of a killed run is taken over by the next one (and logged); a second live run is refused
with a message naming the holder.
"""
import fcntl
import logging
import os
import socket

from src.errors import ConfigError

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"


def make_folder(path, flag, error=ConfigError, value=None):
    """``os.makedirs(path, exist_ok=True)``, raising ``error`` that names ``flag`` (given as
    ``value``, default ``path``) when a file is in the way or the folder cannot be created."""
    value = path if value is None else value
    try:
        os.makedirs(path, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = os.path.abspath(path)
        while not os.path.isfile(blocker) and os.path.dirname(blocker) != blocker:
            blocker = os.path.dirname(blocker)
        raise error(f"{flag} {value}: {blocker} is a file, not a folder; choose another {flag} "
                    "or move the file away") from None
    except PermissionError:
        raise error(f"{flag} {value}: cannot create the folder {path} (permission denied); "
                    f"choose another {flag}") from None
    return path


def write_atomically(path, write):
    """Call ``write(temporary_path)`` and rename the result to ``path``.

    The temporary file sits in the same folder (a rename within one file system is atomic) and
    keeps ``path``'s suffix, which MindSpore's writers add when it is missing. A crash or an
    error leaves ``path`` as it was: absent, or the previous complete file.
    """
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_text(path, text):
    """Write a text file atomically."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return write_atomically(path, write)


def _read_holder(fd):
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 1024).decode("utf-8", "replace").strip()


class FolderLock:
    """``with FolderLock(folder, flag, error):`` the folder is this process's until the block ends.

    ``flag`` names the folder's option in messages; ``error`` is the exception class raised when
    another live process holds it.
    """

    def __init__(self, folder, flag="--output_dir", error=ConfigError):
        self.folder, self.flag, self.error = folder, flag, error
        self.path = os.path.join(folder, LOCK_FILE)
        self.fd = None

    def acquire(self):
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd) or "another process"
                os.close(fd)
                raise self.error(f"{self.flag} {self.folder} is in use by {holder} (lock file {self.path}); "
                                 f"wait for that run to end or choose another {self.flag}") from None
            # the holder before us may have removed the file between our open and our lock
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_holder(fd)
        if previous:
            logger.warning("%s: taking over the lock of %s, which is no longer running", self.folder, previous)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self):
        if self.fd is None:
            return
        try:
            os.remove(self.path)  # while still locked: the next run creates a fresh file
        except FileNotFoundError:
            pass  # removed by hand meanwhile: nothing left to clean
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
