"""``GET /`` and ``GET /static/{name}``: the dashboard, one page and its ES modules.

The files are package data (``service/static/``), read once when the app is built; nothing is
built at run time. They carry no data, so they are served without a token: the page asks for a
read token and calls the API with it. The page learns the one setting it needs, the stale
threshold, from a ``<meta>`` tag filled in here.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from service.errors import ApiError
from service.keys import assets_key

INDEX = "index.html"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_STATIC_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(js|css|svg)$")
# The page runs only its own scripts and styles and talks only to this origin; payload text
# that slipped into markup could still run nothing.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


Assets = Mapping[str, Asset]


def load_assets(stale_after_s: float) -> Assets:
    """Every file of ``service/static``, with the stale threshold written into the page."""
    assets = {}
    for entry in resources.files("service").joinpath("static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if not entry.is_file() or suffix not in _TYPES:
            continue
        body = entry.read_bytes()
        if entry.name == INDEX:
            body = body.replace(b"{{stale_after_s}}", f"{stale_after_s:g}".encode())
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        assets[entry.name] = Asset(body, _TYPES[suffix], etag)
    return assets


def _serve(request: web.Request, name: str) -> web.Response:
    asset = request.app[assets_key].get(name)
    if asset is None:
        raise ApiError(404, "Not found")
    headers = {**_HEADERS, "ETag": asset.etag}
    if request.headers.get("If-None-Match") == asset.etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, headers={**headers, "Content-Type": asset.content_type})


async def index(request: web.Request) -> web.Response:
    return _serve(request, INDEX)


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not _STATIC_NAME.fullmatch(name):
        raise ApiError(404, "Not found")
    return _serve(request, name)
