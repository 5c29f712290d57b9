"""The README documents every option of both command lines, and its links to the docs resolve."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from bidsapp import cli, segment

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("parser", [cli.build_parser(), segment.build_parser()], ids=["run.py", "segment"])
def test_every_option_is_documented(parser):
    missing = [a.option_strings for a in parser._actions if a.option_strings and a.dest != "help"
               and not any(re.search(rf"`{re.escape(o)}[` \\[=]", README) for o in a.option_strings)]
    assert not missing, f"options not in README.md: {missing}"


def test_the_manual_starts_with_the_two_commands_and_links_resolve():
    headings = re.findall(r"^## (.+)$", README, flags=re.M)
    assert headings[:3] == ["The two commands", "Running it", "Which images, which models"]
    for target in re.findall(r"\]\(((?:docs|bench)/[^)#]+)", README):
        assert (ROOT / target).is_file(), target
