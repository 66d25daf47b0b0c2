"""Request context, JSON errors and bearer-token auth, outermost first."""

from __future__ import annotations

import hmac
import os
import re
import time

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from events.errors import StorageUnavailable
from service.errors import ApiError, json_response
from service.keys import metrics_key, read_tokens_key, request_id_key

log = structlog.get_logger(component="http")

# Routes that answer without a token: ops endpoints, the API description, the dashboard page
# and its static files (which carry no data), and the webhook receiver (which checks
# signatures instead).
PUBLIC_PATHS = frozenset(
    {"/healthz", "/readyz", "/metrics", "/api/webhooks/github", "/api/openapi.json", "/"}
)
PUBLIC_PREFIX = "/static/"  # one level below: /static/<name>, nothing deeper
# Seconds a client should wait before retrying while PostgreSQL is unreachable.
RETRY_AFTER_S = "5"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}").fullmatch


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind a request id to every log line of the request; log the request once at the end."""
    offered = request.headers.get("X-Request-ID")
    # A fresh id needs only be unique, not a UUID object: the same 32 hex digits, cheaper.
    request_id = offered if offered and _REQUEST_ID(offered) else os.urandom(16).hex()
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    request[request_id_key] = request_id
    started = time.perf_counter()
    response = await handler(request)
    response.headers["X-Request-ID"] = request_id
    # The route's pattern, not the path: one label value per route, not per job id.
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    status = response.status
    request.app[metrics_key].count_request(route, status)
    log.info(  # job_id and scheme come from the context, where ingest binds them
        "request",
        method=request.method,
        route=route,
        path=request.path,
        status=status,
        duration_ms=round((time.perf_counter() - started) * 1000, 2),
        remote=request.remote,
    )
    return response


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error is JSON: 503 with Retry-After while PostgreSQL is unreachable, and an
    unexpected error is a 500 with the request id and no trace."""
    try:
        return await handler(request)
    except ApiError as error:
        return error.response()
    except StorageUnavailable:
        log.warning("request.storage_unavailable")
        return json_response(
            {"error": "Storage unavailable"},
            status=503,
            headers={"Retry-After": RETRY_AFTER_S},
        )
    except web.HTTPException as error:
        if error.status < 400:
            raise
        headers = {k: v for k, v in error.headers.items() if k in ("Allow", "Retry-After")}
        message = "Payload too large" if error.status == 413 else error.reason
        return json_response({"error": message}, status=error.status, headers=headers)
    except Exception:
        log.exception("request.failed")
        request_id = structlog.contextvars.get_contextvars().get("request_id")
        return json_response(
            {"error": "Internal server error", "request_id": request_id}, status=500
        )


@web.middleware
async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Everything but ``PUBLIC_PATHS`` and the static files needs
    ``Authorization: Bearer <read token>``."""
    path = request.path
    static = path.startswith(PUBLIC_PREFIX) and "/" not in path[len(PUBLIC_PREFIX) :]
    if path not in PUBLIC_PATHS and not static:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        offered = token.strip().encode("utf-8", "surrogateescape")
        valid = [hmac.compare_digest(offered, t) for t in request.app[read_tokens_key]]
        if scheme.lower() != "bearer" or not offered or not any(valid):
            raise ApiError(401, "Unauthorized", headers={"WWW-Authenticate": "Bearer"})
    return await handler(request)
