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


#: The one exit-code table of every command line (run.py, bidsapp.segment, the group level): the BIDS
#: execution spec draft's codes plus sysexits (64 usage, 65 bad input data, 66 missing input, 73 cannot
#: create output).
EXIT: dict[str, int] = {"ok": 0, "failed": 1, "invalid_bids": 16, "unknown_level": 17, "no_match": 18,
                        "usage": 64, "data": 65, "no_input": 66, "cant_create": 73, "interrupted": 130,
                        "terminated": 143}
