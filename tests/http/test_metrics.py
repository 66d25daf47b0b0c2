"""``GET /metrics``: Prometheus text format, read back with prometheus-client's own parser."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import AUTH, body_of, standard_headers, wait_for_projection

Client = TestClient[web.Request, web.Application]
URL = "/api/webhooks/github"
SPEC_NAMES = {
    "jobtrail_http_requests",
    "jobtrail_ingest",
    "jobtrail_append_seconds",
    "jobtrail_append_batch_size",
    "jobtrail_projector_position",
    "jobtrail_head_position",
    "jobtrail_projector_lag_events",
    "jobtrail_projector_lag_seconds",
    "jobtrail_watchdog_timeouts",
    "jobtrail_sse_clients",
}


async def scrape(client: Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics")  # no token: an ops endpoint
    assert response.status == 200
    assert response.content_type == "text/plain"
    families = list(text_string_to_metric_families(await response.text()))
    assert SPEC_NAMES.issubset(f.name for f in families)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


async def test_metrics_count_requests_outcomes_batches_and_positions(
    client: Client, pool: asyncpg.Pool[Any]
) -> None:
    body = body_of({"job_id": "m-1", "status": "running"})
    headers = standard_headers(body)
    for _ in range(2):  # accepted, then a duplicate
        assert (await client.post(URL, data=body, headers=headers)).status == 200
    bad = {**standard_headers(body), "webhook-signature": "v1,AAAA"}
    assert (await client.post(URL, data=body, headers=bad)).status == 401
    await wait_for_projection(pool)
    assert (await client.get("/api/jobs/m-1", headers=AUTH)).status == 200
    samples = await scrape(client)
    assert samples[("jobtrail_ingest_total", (("outcome", "accepted"), ("scheme", "standard")))]
    assert samples[("jobtrail_ingest_total", (("outcome", "duplicate"), ("scheme", "standard")))]
    refused = ("jobtrail_ingest_total", (("outcome", "invalid_signature"), ("scheme", "none")))
    assert samples[refused] == 1
    ingest_200 = ("jobtrail_http_requests_total", (("code", "200"), ("route", URL)))
    assert samples[ingest_200] == 2
    one_job = ("jobtrail_http_requests_total", (("code", "200"), ("route", "/api/jobs/{job_id}")))
    assert samples[one_job] == 1  # the route's pattern, not the path
    assert samples[("jobtrail_append_batch_size_count", ())] >= 1
    assert samples[("jobtrail_head_position", ())] == 1
    for projection in ("job_status", "job_heartbeat"):
        assert samples[("jobtrail_projector_position", (("projection", projection),))] == 1
        assert samples[("jobtrail_projector_lag_events", (("projection", projection),))] == 0
    assert samples[("jobtrail_sse_clients", ())] == 0
