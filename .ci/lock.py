"""Write requirements.lock and requirements-test.lock from the environment this Python runs in.

`make lock` runs it in a fresh venv where requirements.txt and requirements-test.txt were installed by
pip. Each lock is the whole dependency tree of its requirements file, every package pinned (==) to the
version pip chose, except EXCLUDED: timm (and with it torchvision) arrives through
dynamic-network-architectures, whose modules we import (unet) never import it, and PyPI's torchvision
does not load beside the CPU torch wheel ("operator torchvision::nms does not exist");
openvino-telemetry arrives through openvino: with it, ``openvino.convert_model`` sends usage events to
Intel unless a consent file in HOME says no (and writes HOME); without it, openvino's converter uses its
own no-op stub. The locks are therefore installed with `pip install --no-deps -r ...` (Makefile,
Dockerfile), which installs exactly the listed tree. Local version labels are dropped (torch 2.13.0+cpu ->
torch==2.13.0) so a CUDA build of the same release satisfies the lock too.
"""
from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # pragma: no cover - pip always carries a copy
    from pip._vendor.packaging.requirements import Requirement

EXCLUDED = {"timm", "torchvision", "openvino-telemetry"}
ROOT = Path(__file__).resolve().parent.parent


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def roots(path: Path) -> list[Requirement]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def closure(requirements: list[Requirement]) -> dict[str, metadata.Distribution]:
    """Installed distributions reachable from ``requirements`` (markers evaluated here, extras followed)."""
    found: dict[str, metadata.Distribution] = {}
    extras_seen: dict[str, set[str]] = {}
    stack = [(canonical(r.name), set(r.extras)) for r in requirements]
    while stack:
        name, extras = stack.pop()
        if name in EXCLUDED or (name in found and extras <= extras_seen[name]):
            continue
        extras_seen[name] = extras_seen.get(name, set()) | extras
        dist = found.setdefault(name, metadata.distribution(name))
        for text in dist.requires or []:
            req = Requirement(text)
            wanted = {""} | extras_seen[name]
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in wanted):
                stack.append((canonical(req.name), set(req.extras)))
    return found


def render(dists: dict[str, metadata.Distribution], source: str) -> str:
    pins = sorted((f"{d.metadata['Name']}=={d.version.split('+')[0]}" for d in dists.values()), key=str.lower)
    header = (f"# The whole dependency tree of {source}, pinned; made by `make lock` (.ci/lock.py).\n"
              f"# Install with pip install --no-deps -r. Left out on purpose: {', '.join(sorted(EXCLUDED))}"
              " (see .ci/lock.py).\n")
    return header + "\n".join(pins) + "\n"


def main() -> int:
    runtime = closure(roots(ROOT / "requirements.txt"))
    test = {k: v for k, v in closure(roots(ROOT / "requirements-test.txt")).items() if k not in runtime}
    (ROOT / "requirements.lock").write_text(render(runtime, "requirements.txt"))
    (ROOT / "requirements-test.lock").write_text(render(test, "requirements-test.txt (less the runtime)"))
    print(f"requirements.lock: {len(runtime)} packages; requirements-test.lock: {len(test)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
