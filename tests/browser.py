"""A headless Chromium driven by selenium, for the web page of `swarm-client serve`
(tests/integration/test_web_page.py, scripts/web_screenshot.py).

Debian's `chromium` and `chromium-driver` (scripts/test installs them as root): no browser is
ever downloaded, and selenium is pointed at both binaries so its driver manager stays idle.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# as root (CI) Chromium needs --no-sandbox; the rest keeps it from reaching for the network
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars"]  # fmt: skip


def missing() -> list[str]:
    """The browser's binaries that are not installed."""
    return [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]


@contextmanager
def chromium(width: int = 1400, height: int = 900) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with a fresh profile, quit (and the profile removed) at the end."""
    profile = tempfile.mkdtemp(prefix="swarm-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]:
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
        try:
            yield driver
        finally:
            driver.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
