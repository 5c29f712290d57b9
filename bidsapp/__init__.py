"""cordlesion: spinal cord MS lesion segmentation as a BIDS App."""
from importlib import metadata as _metadata
from pathlib import Path as _Path


def _read_version() -> str:
    # The top-level `version` file is the single source (also COPY'd to /version in the container).
    for candidate in (_Path(__file__).resolve().parent.parent / "version", _Path("/version")):
        if candidate.is_file():
            return candidate.read_text().strip()
    try:
        return _metadata.version("cordlesion")
    except _metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = _read_version()
