"""The errors a user can cause, under one base class.

Each message names the bad thing (a file, a flag, a value) and the fix. The entry scripts
(src/cli.py ``run_script``) print such an error as one line and exit with code 2; any other
exception is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input or an unusable environment; the message says what to do."""


class CheckpointError(UserError):
    """A checkpoint cannot be read or does not fit the network."""


class DatasetError(UserError):
    """A data set, annotation file or image cannot be used."""


class BackendError(UserError):
    """An inference backend cannot be used for this input."""


class DeviceError(UserError):
    """The requested device cannot be used in this process."""


class ConfigError(UserError):
    """Command-line values that cannot work together or cannot train."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


class OutputError(UserError):
    """A file or folder cannot be written: no space, a read-only file system, no permission."""


class MissingPackageError(UserError, RuntimeError):
    """An optional Python package this step needs is not installed."""
