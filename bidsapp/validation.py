"""BIDS validation with bids-validator-deno (the schema-based validator; runs offline)."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CordlesionError

log = logging.getLogger(__name__)

EXECUTABLE = "bids-validator-deno"


class ValidatorUnavailableError(CordlesionError):
    """bids-validator-deno is not installed or could not run."""


@dataclass(frozen=True)
class ValidationReport:
    """Issues found by the validator, grouped by code."""

    errors: dict[str, list[str]] = field(default_factory=dict)
    """code -> locations (files) with that error."""
    warnings: dict[str, list[str]] = field(default_factory=dict)
    """code -> locations with that warning."""
    messages: dict[str, str] = field(default_factory=dict)
    """code -> the validator's explanation."""

    @property
    def n_errors(self) -> int:
        return sum(len(v) for v in self.errors.values())

    def summary(self, max_codes: int = 8, max_files: int = 3) -> str:
        """Errors as short lines: ``CODE (n): first files ... -- explanation``."""
        lines = []
        for code, places in sorted(self.errors.items(), key=lambda kv: -len(kv[1]))[:max_codes]:
            shown = ", ".join(places[:max_files]) + (" ..." if len(places) > max_files else "")
            hint = self.messages.get(code, "").strip().splitlines()
            lines.append(f"{code} ({len(places)}): {shown}" + (f" -- {hint[0]}" if hint else ""))
        if len(self.errors) > max_codes:
            lines.append(f"... and {len(self.errors) - max_codes} more error codes")
        return "\n".join(lines)


def find_validator() -> str:
    """Path of the bids-validator-deno executable (next to this Python first, then on PATH)."""
    beside = Path(sys.executable).parent / EXECUTABLE
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(EXECUTABLE)
    if found is None:
        raise ValidatorUnavailableError(
            f"{EXECUTABLE} not found on PATH nor next to {sys.executable}: pip install bids-validator-deno")
    return found


def validate(dataset: str | Path, *, work_dir: str | Path | None = None,
             timeout: float = 600) -> ValidationReport:
    """Run the validator on ``dataset`` and return its issues (derivatives/ not included).

    Deno's cache and HOME go to a temp folder in ``work_dir`` (or TMPDIR), so this works with HOME
    read-only, missing or not a folder.
    """
    exe = find_validator()
    with tempfile.TemporaryDirectory(prefix="cordlesion-validator-", dir=work_dir) as tmp:
        out = Path(tmp) / "report.json"
        # Deno reads (and may write) under HOME: give it the temp folder, HOME may be read-only or bogus.
        env = {**os.environ, "DENO_DIR": str(Path(tmp) / "deno"), "HOME": tmp, "NO_COLOR": "1"}
        cmd = [exe, "--format", "json", "--outfile", str(out), str(dataset)]
        log.info("validating %s with %s", dataset, EXECUTABLE)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ValidatorUnavailableError(f"{exe}: could not run ({exc})") from exc
        try:
            report = json.loads(out.read_text())
        except (OSError, ValueError) as exc:
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ValidatorUnavailableError(
                f"{exe}: exit {proc.returncode} without a report ({detail[0]})") from exc
    return parse_report(report)


def parse_report(report: dict[str, Any]) -> ValidationReport:
    """Group a bids-validator-deno JSON report by severity and code."""
    issues = report.get("issues", {})
    errors: dict[str, list[str]] = defaultdict(list)
    warnings: dict[str, list[str]] = defaultdict(list)
    for issue in issues.get("issues", []):
        code = issue.get("code", "UNKNOWN")
        if issue.get("subCode"):
            code = f"{code}[{issue['subCode']}]"
        target = errors if issue.get("severity") == "error" else warnings
        target[code].append(issue.get("location", "?"))
    messages = {code: str(msg) for code, msg in issues.get("codeMessages", {}).items()}
    # Keys with a subCode explain themselves with the base code's message.
    for code in list(errors) + list(warnings):
        base = code.split("[", 1)[0]
        if base in messages:
            messages.setdefault(code, messages[base])
    return ValidationReport(errors=dict(errors), warnings=dict(warnings), messages=messages)
