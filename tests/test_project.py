"""The set-up promises of the README: one pin list, mirrored for conda."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        match = re.match(r"^\s*-?\s*([A-Za-z0-9_.\-]+)==([^\s#]+)", line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_requirements_are_exact_pins_mirrored_in_environment_yml() -> None:
    requirements = (ROOT / "requirements.txt").read_text().splitlines()
    listed = [ln for ln in requirements if ln.strip() and not ln.startswith("#")]
    pins = _pins(requirements)
    assert len(pins) == len(listed), "every requirement must be pinned with =="
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    assert _pins((ROOT / "environment.yml").read_text().splitlines()) == pins
