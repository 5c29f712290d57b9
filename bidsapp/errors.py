"""Our exception classes. Every message is one line that names the file or value and the reason."""


class CordlesionError(Exception):
    """Base class for every error this app raises on purpose."""


class InputImageError(CordlesionError, ValueError):
    """An input image cannot be used (unreadable, wrong dimensionality, non-finite, ...)."""


class ModelError(CordlesionError):
    """A model folder or file is missing, corrupt, modified or incompatible."""


class NoModelsError(ModelError):
    """Neither installed models nor ``--demo``: tells the user how to get models."""


class ConfigError(CordlesionError, ValueError):
    """A user-supplied JSON (routing config, BIDS filter file) or option is invalid."""


class OutputError(CordlesionError, OSError):
    """An output cannot be written (disk full, permissions, output inside bids_dir, ...)."""
