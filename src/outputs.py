"""Writing output safely: files written atomically.

``write_atomically`` is the one way files are written (checkpoints, models, config.json,
class_names.txt): a temporary file in the same folder, renamed into place when complete.
"""
import os


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
