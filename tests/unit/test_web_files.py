"""The web page's static files (swarm/apps/web/) ship in the package and fetch nothing from elsewhere."""

from __future__ import annotations

import fnmatch
import re
import tomllib

from swarm.apps.web_page import FILES, page_file
from tests.helpers import REPO

WEB = REPO / "swarm" / "apps" / "web"


def test_every_page_file_is_package_data() -> None:
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["swarm.apps"]
    names = sorted(name for name, _ in FILES.values())
    assert sorted(p.name for p in WEB.iterdir()) == names  # nothing in the folder that is not served
    for name in names:
        assert any(fnmatch.fnmatch(f"web/{name}", g) for g in globs), f"{name} would not ship in a wheel"
        assert page_file(name)  # readable through the package's resources, as an installed copy reads it


def test_the_page_needs_nothing_from_the_internet() -> None:
    for path in WEB.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://|//cdn|@import url", text), f"{path.name} reaches outside the server"
        references = re.findall(r'(?:src|href)="([^"]+)"', text)
        assert all(r.startswith("/") or r.startswith("data:") for r in references), references
