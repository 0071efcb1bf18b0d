"""Headless Chromium for the tests of HTML pages: a screenshot, and the DOM after the page's own scripts ran.

Shared by the single-report test (tests/unit/test_report_formats.py) and the fleet page's
(tests/unit/test_fleet_page.py), so both open pages alike. Tests skip when Chromium is not installed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_S = 120
"""A cold Chromium start on a busy 2-core machine takes seconds; a hang must still end the test."""
ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage")
"""No sandbox (containers lack the namespaces it needs), no GPU, /tmp instead of a small /dev/shm."""


def require_chromium() -> None:
    """Skip the calling test when Chromium is not installed."""
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not installed (apt-get install chromium)")


def _base(width: int, height: int) -> list[str]:
    return [CHROMIUM, *ARGS, f"--window-size={width},{height}"]


def screenshot(url: str, shot: Path, *, width: int = 1280, height: int = 4000) -> Path:
    """Load ``url`` and save a PNG of the window to ``shot``."""
    require_chromium()
    subprocess.run([*_base(width, height), f"--screenshot={shot}", url], check=True, capture_output=True,
                   timeout=TIMEOUT_S)
    return shot


def dump_dom(url: str, *, width: int = 1280, height: int = 4000) -> str:
    """The page's DOM serialised after load, scripts run (a page whose script failed shows its initial DOM)."""
    require_chromium()
    return subprocess.run([*_base(width, height), "--dump-dom", url], check=True, capture_output=True, text=True,
                          timeout=TIMEOUT_S).stdout


def distinct_colours(shot: Path, *, limit: int = 1 << 16) -> int:
    """How many colours the screenshot has: a blank or failed page has one or two, a rendered one many."""
    from PIL import Image

    with Image.open(shot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=limit)
    return limit if colours is None else len(colours)
