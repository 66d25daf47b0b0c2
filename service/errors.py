"""HTTP errors as JSON.

ApiError(status, message, **extra)   raised by handlers, rendered by the error middleware as
                                     ``{"error": message, **extra}``
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from service.jsonio import encode


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.extra = extra

    def response(self) -> web.Response:
        return json_response(
            {"error": self.message, **self.extra}, status=self.status, headers=self.headers
        )


def json_response(
    body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """``body`` as JSON. A string that UTF-8 cannot carry (a lone surrogate from hostile input)
    is sent with that character replaced: a response must render whatever the request was."""
    return web.Response(
        body=encode(body), status=status, headers=headers, content_type="application/json"
    )
