"""Errors that name the bad input and the fix. The CLI prints them without a stack trace."""


class RecsysError(Exception):
    """Base class: a user-facing error whose message says what is wrong and how to fix it."""


class DataError(RecsysError):
    """Bad input data: a file, line, column or field that cannot be used as it is."""


class ConfigError(RecsysError):
    """A config file or override that does not map onto the typed config."""


class CheckpointError(RecsysError):
    """A checkpoint that is missing, partial, corrupted or incompatible."""


class EnvironmentMismatch(RecsysError):
    """Installed torch / fbgemm / torchrec / triton versions that do not belong together."""
