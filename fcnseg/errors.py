"""Errors a user can cause and fix. The CLI prints them as one line and exits with code 2."""


class FcnsegError(Exception):
    """Base class: the message names the file or value at fault and how to fix it."""


class ConfigError(FcnsegError):
    """A bad argument or config value (unknown model, conflicting options, ...)."""


class DataError(FcnsegError):
    """A dataset problem: missing root, unreadable file, bad mask values, size mismatch."""


class WeightsError(FcnsegError):
    """Weights that cannot be fetched, verified or loaded into the model."""


class OutputError(FcnsegError):
    """An output that cannot be written: disk full, read-only folder, a file in the way."""


class TrainingDiverged(FcnsegError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""
