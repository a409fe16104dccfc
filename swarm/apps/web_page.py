"""The web page `swarm-client serve` shows at `/`: a chat and a live map of the swarm.

Three static files shipped inside the package (swarm/apps/web/: no build step, nothing fetched
from a CDN, so the page works offline). They are open to anyone who can reach the server: the
page holds no data. What it shows comes from the API, behind the API key when there is one:
`/v1/models`, `/v1/chat/completions` (streamed) and `/v1/swarm` (swarm/apps/swarm_view.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources

from fastapi import FastAPI
from fastapi.responses import Response

FILES = {  # URL path -> (file in swarm/apps/web, media type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/web/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/web/style.css": ("style.css", "text/css; charset=utf-8"),
}


def page_file(name: str) -> bytes:
    return resources.files("swarm.apps").joinpath("web", name).read_bytes()


def add_page(app: FastAPI) -> None:
    """The page's routes on `app` (outside the API, so the page loads before anyone gives a key)."""
    for path, (name, media_type) in FILES.items():
        # read once: a missing file fails the server's start, not a request
        app.add_api_route(path, _sender(page_file(name), media_type), methods=["GET"], include_in_schema=False)


def _sender(body: bytes, media_type: str) -> Callable[[], Awaitable[Response]]:
    async def send() -> Response:
        return Response(body, media_type=media_type, headers={"Cache-Control": "no-cache"})

    return send
