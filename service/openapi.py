"""``GET /api/openapi.json``: OpenAPI 3.1 for every route, schemas from ``service.schemas``.

``OPERATIONS`` says what each route takes and answers; the JSON Schemas come from the pydantic
models, so the document describes exactly the shapes the tests hold the handlers to.
``tests/http/test_openapi.py`` checks that every registered route is here and the other way
round, and runs schemathesis against the document.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from events.catalog import JOB_ID, JOB_STATUSES
from service import deliveries, schemas
from service.deliveries import INGEST_PATH
from service.jsonio import dumps
from service.keys import openapi_key
from service.payloads import Callback
from service.read_api import MAX_LIMIT
from service.schemas import (
    DeliveryList,
    EventDetail,
    EventList,
    HeartbeatList,
    Job,
    JobPage,
    ProjectionList,
)

ModelOrMedia = type[BaseModel] | Mapping[str, str]  # a JSON model, or {media type: description}
Responses = Mapping[int, tuple[str, ModelOrMedia]]  # status: (description, shape)


@dataclass(frozen=True)
class Param:
    name: str
    where: Literal["query", "path", "header"]
    schema: Mapping[str, Any]
    description: str = ""


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    responses: Responses
    params: tuple[Param, ...] = ()
    public: bool = False
    body: type[BaseModel] | None = None


def _errors(*statuses: int) -> Responses:
    text = {
        400: "invalid parameters",
        401: "no valid bearer token",
        404: "not found",
        503: "PostgreSQL unreachable (with Retry-After)",
    }
    return {status: (text[status], schemas.Error) for status in statuses}


def _read(
    path: str,
    summary: str,
    model: type[BaseModel],
    errors: tuple[int, ...],
    params: tuple[Param, ...] = (),
    more: Responses | None = None,
) -> Operation:
    """A read route: its model on 200, the listed errors, and ``more`` answers."""
    responses = {200: (summary, model), **_errors(*errors), **(more or {})}
    return Operation("get", path, summary, responses, params)


_JOB_ID = Param("job_id", "path", {"type": "string", "pattern": f"^{JOB_ID.pattern}$"})
_EVENT_ID = Param("event_id", "path", {"type": "string", "format": "uuid"})
_STALE = Param("stale", "query", {"type": "boolean"}, "only stale (true) or fresh (false) jobs")
_SIGNED = tuple(
    Param(name, "header", {"type": "string"}, description)
    for name, description in (
        ("webhook-id", "Standard Webhooks: message id, the idempotency key"),
        ("webhook-timestamp", "Standard Webhooks: unix seconds"),
        ("webhook-signature", "Standard Webhooks: space-separated v1,<base64>"),
        ("X-Hub-Signature-256", "GitHub: sha256=<hex>"),
        ("X-GitHub-Event", "GitHub: event name"),
        ("X-GitHub-Delivery", "GitHub: delivery id, the idempotency key"),
        ("X-Signature", "legacy: <hex> or sha256=<hex>, HMAC-SHA256 of the body"),
    )
)
_LIMIT = Param(
    "limit",
    "query",
    {"type": "integer", "minimum": 1, "maximum": deliveries.CAPACITY},
    f"default {deliveries.DEFAULT_LIMIT}",
)
_PAGE = {"text/html": "the dashboard page"}
_ASSET = {
    "text/javascript": "an ES module",
    "text/css": "a style sheet",
    "image/svg+xml": "an icon",
}

_INGESTED: Responses = {
    200: ("committed (or a duplicate of a committed one)", schemas.Accepted),
    400: ("signature fine, payload not", schemas.InvalidPayload),
    401: ("missing, malformed or wrong signature, stale timestamp", schemas.Error),
    408: ("the body took more than 10 s to arrive", schemas.Error),
    413: ("body over JOBTRAIL_MAX_BODY_BYTES", schemas.Error),
    415: ("content type missing or not JSON", schemas.Error),
    503: ("PostgreSQL unreachable; nothing acknowledged", schemas.Error),
}
_PAGE_PARAMS = (
    Param("status", "query", {"type": "string", "enum": sorted(JOB_STATUSES)}),
    _STALE,
    Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}),
    Param("cursor", "query", {"type": "string"}, "next_cursor of the previous page"),
)
_AFTER_POSITION = Param(
    "after_position",
    "query",
    {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
    "wait up to 5 s until the projections have applied this position",
)
_ONE_JOB = (_JOB_ID, _AFTER_POSITION)
_TIMED_OUT: Responses = {
    504: ("the projections did not reach after_position within 5 s", schemas.Error)
}
_STREAMED: Responses = {
    200: (
        "`event: job`, `data:` the job as GET /api/jobs/{job_id} shows it (schema Job), "
        "`id:` its last_position; `: keep-alive` comments every 15 s",
        {"text/event-stream": "the event stream"},
    ),
    **_errors(400, 401),
}
_RESUME = Param(
    "Last-Event-ID",
    "header",
    {"type": "string", "pattern": "^[0-9]{1,18}$"},
    "first send every job changed after this position, then go live",
)
_DOCUMENT: Responses = {200: ("OpenAPI 3.1", {"application/json": "the document"})}
_METRICS: Responses = {200: ("Prometheus text format 0.0.4", {"text/plain": "the metrics"})}
_DASHBOARD: Responses = {200: ("the page", _PAGE), 304: ("not modified (If-None-Match)", _PAGE)}
_FILE: Responses = {
    200: ("the file", _ASSET),
    304: ("not modified (If-None-Match)", _ASSET),
    404: ("no such file", schemas.Error),
}
_NAME = (Param("name", "path", {"type": "string"}),)
_READY: Responses = {200: ("ready", schemas.Readiness), 503: ("not ready", schemas.Readiness)}

OPERATIONS: tuple[Operation, ...] = (
    Operation("post", INGEST_PATH, "Ingest a signed callback", _INGESTED, _SIGNED, True, Callback),
    _read("/api/jobs", "Jobs, newest created first", JobPage, (400, 401, 503), _PAGE_PARAMS),
    _read("/api/jobs/{job_id}", "One job", Job, (400, 401, 404, 503), _ONE_JOB, _TIMED_OUT),
    _read("/api/jobs/{job_id}/events", "A job's events", EventList, (401, 404, 503), (_JOB_ID,)),
    _read(
        "/api/events/{event_id}",
        "One event with its evidence",
        EventDetail,
        (400, 401, 404, 503),
        (_EVENT_ID,),
    ),
    _read("/api/heartbeats", "Last heartbeats", HeartbeatList, (400, 401, 503), (_STALE,)),
    _read("/api/projections", "Projection lag", ProjectionList, (401, 503)),
    _read("/api/deliveries", "Recent ingest attempts", DeliveryList, (400, 401), (_LIMIT,)),
    Operation("get", "/api/stream", "Job changes as Server-Sent Events", _STREAMED, (_RESUME,)),
    Operation("get", "/api/openapi.json", "This document", _DOCUMENT, public=True),
    Operation("get", "/", "The dashboard", _DASHBOARD, public=True),
    Operation("get", "/static/{name}", "The dashboard's files", _FILE, _NAME, public=True),
    Operation("get", "/healthz", "The process is up", {200: ("up", schemas.Health)}, public=True),
    Operation("get", "/readyz", "The database is reachable and migrated", _READY, public=True),
    Operation("get", "/metrics", "Prometheus metrics", _METRICS, public=True),
)


def _content(shape: ModelOrMedia, refs: Mapping[type[BaseModel], Any]) -> dict[str, Any]:
    if isinstance(shape, type):
        return {"application/json": {"schema": refs[shape]}}
    return {media: {"schema": {"type": "string"}} for media in shape}


def build_document() -> dict[str, Any]:
    models = {m for op in OPERATIONS for _, m in op.responses.values() if isinstance(m, type)}
    ordered = sorted(models, key=lambda m: m.__name__)
    keys, top = models_json_schema(
        [(m, "serialization") for m in ordered] + [(Callback, "validation")],
        ref_template="#/components/schemas/{model}",
    )
    refs: dict[type[BaseModel], Any] = {m: keys[(m, "serialization")] for m in ordered}
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        operation: dict[str, Any] = {
            "summary": op.summary,
            "operationId": op.method + op.path.replace("/", "_").replace("{", "").replace("}", ""),
            "responses": {
                str(status): {"description": text, "content": _content(shape, refs)}
                for status, (text, shape) in sorted(op.responses.items())
            },
        }
        if op.params:
            operation["parameters"] = [
                {
                    "name": p.name,
                    "in": p.where,
                    "required": p.where == "path",
                    "schema": dict(p.schema),
                    **({"description": p.description} if p.description else {}),
                }
                for p in op.params
            ]
        if op.body is not None:
            schema = keys[(op.body, "validation")]
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schema}},
            }
        if op.public:
            operation["security"] = []
        paths.setdefault(op.path, {})[op.method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "jobtrail",
            "version": "1",
            "description": "Signed CI job callbacks into an append-only event log, and the read "
            "models built from it. Read routes need `Authorization: Bearer <token>`.",
        },
        "paths": paths,
        "components": {
            "schemas": top.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def document_bytes() -> bytes:
    """The document as served: built once, when the app is (it takes milliseconds)."""
    return dumps(build_document()).encode()


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[openapi_key], content_type="application/json")
