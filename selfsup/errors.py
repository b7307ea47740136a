"""The errors a user can fix, in one leaf module that every layer may import.

Each is raised with a message that names the file, key or value and what was expected; the
command line prints it as one `selfsup: error: ...` line and exits with status 2
(`USER_ERRORS`), or 1 for a run that diverged (`NonFiniteLossError`). The same classes reach a
driver from inside Ray workers, which is why they live here and not beside the code that raises
them: `selfsup.cluster` and the command line both need them without importing each other.
"""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset folder, shard, index or conversion input is missing or malformed."""


class DamagedSamplesError(DatasetError):
    """Samples inside a shard that cannot be decoded or whose `.cls` is not a class index
    (`selfsup.pipeline.damaged`); `samples` lists them (`DamagedSample`s), the message names the
    first one's shard and key."""

    def __init__(self, message: str, samples=()):
        super().__init__(message, tuple(samples))
        self.samples = tuple(samples)

    def __str__(self) -> str:
        return str(self.args[0])


class ConfigError(ValueError):
    """A config value or key that cannot be used; the message names the key and what is valid."""


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or does not fit this run; the message names the path."""


class RecipeError(ValueError):
    """A recipe that cannot be built: names the recipe, the field and what was expected."""


class FolderLockedError(RuntimeError):
    """Another process holds a folder's lock (`selfsup.locks`); the message names the folder and
    the holder (purpose, pid, host, since when). `holder` is a `selfsup.locks.LockHolder`, or None
    when the holder had not written its record."""

    def __init__(self, message: str, *, folder=None, holder=None):
        super().__init__(message)
        self.folder, self.holder = folder, holder


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the loss terms."""


# The errors the command line turns into one line and exit status 2.
USER_ERRORS = (DatasetError, ConfigError, CheckpointError, RecipeError, FolderLockedError, FileNotFoundError)
