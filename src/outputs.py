"""Writing output safely: folders created with a message instead of a traceback, held by one
run at a time, and files written atomically.

``write_atomically`` is the one way files are written (checkpoints, models, config.json,
class_names.txt, pictures): a temporary file in the same folder, renamed into place when
complete. It is also the one error path of writing: an ``OSError`` (no space, a read-only file
system, no permission) becomes an :class:`~src.errors.OutputError` naming the file and the
cause, and every temporary file of the write is removed, whatever name the writer gave it.

``FolderLock`` holds an exclusive ``fcntl.flock`` on ``FOLDER/.lock`` (Linux, macOS), which
records the holder's pid and host. The kernel drops the lock when its process dies, so the
lock of a killed run is taken over by the next one (and logged); a second live run is refused
with a message naming the holder.
"""
import contextlib
import errno
import fcntl
import glob
import logging
import os
import shutil
import socket

from src.errors import ConfigError, OutputError

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"
# what the system says when a write cannot be done: no space, a quota, read-only, no permission
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


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
    except OSError as err:
        raise error(f"{flag} {value}: cannot create the folder {path} ({why_not_written(err)}); "
                    f"choose another {flag}") from None
    return path


@contextlib.contextmanager
def output_folder(path, flag, error=ConfigError, value=None):
    """:func:`make_folder` for the block's output: where the block fails, a folder it made is
    removed again if it is still empty (a failed run leaves no empty folder behind)."""
    created = not os.path.isdir(path)
    make_folder(path, flag, error, value)
    try:
        yield path
    except BaseException:
        if created:
            with contextlib.suppress(OSError):  # not empty: what is there stays
                os.rmdir(path)
        raise


def _megabytes(count):
    return f"{count / 2**20:.1f} MB"


def _existing_folder(path):
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    return folder


def why_not_written(err, path=None, needed=None):
    """The cause of a failed write, in words: no space (with the free and the needed bytes,
    where known), a read-only file system, no permission, else the system's own words."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        words = "no space left on the device"
        if path:
            folder = _existing_folder(path)
            words += f": {_megabytes(shutil.disk_usage(folder).free)} free in {folder}"
            if needed:
                words += f", about {_megabytes(needed)} needed"
        return words
    if err.errno == errno.EROFS:
        return "a read-only file system"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return err.strerror or str(err)


def _temporary_prefix(path):
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".tmp-{os.getpid()}-{os.path.splitext(name)[0]}")


def write_atomically(path, write, needed=None):
    """Call ``write(temporary_path)`` and rename the result to ``path``.

    The temporary file sits in the same folder (a rename within one file system is atomic) and
    keeps ``path``'s suffix, which MindSpore's writers add when it is missing. A crash or an
    error leaves ``path`` as it was: absent, or the previous complete file. An ``OSError``
    becomes an :class:`OutputError` naming ``path`` and the cause (``needed``: the bytes the
    file takes, for the message where the disk is full). Every file the write left under the
    temporary name is removed, also where the writer changed its suffix (MindSpore's checkpoint
    writer keeps its own ``.tmp`` file), also on an exception such as a signal's.
    """
    tmp = _temporary_prefix(path) + os.path.splitext(path)[1]
    failure = None
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        failure = err
    finally:
        for leftover in glob.glob(glob.escape(_temporary_prefix(path)) + "*"):
            try:
                os.remove(leftover)
            except OSError:
                pass
    if failure is not None:  # said after the clean-up, so that the free space is what is left
        cause = why_not_written(failure, path, needed)
        advice = ("free some space or choose another folder, then run the command again"
                  if failure.errno in (errno.ENOSPC, errno.EDQUOT) else "choose another folder")
        raise OutputError(f"cannot write {path}: {cause}; {advice}") from None
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
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise self.error(f"{self.flag} {self.folder}: cannot write there ({why_not_written(err)}); "
                                 f"choose another {self.flag}") from None
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
