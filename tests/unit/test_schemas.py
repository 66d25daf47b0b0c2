"""The API's models describe what the handlers send: a job is its ``job_status`` columns plus
the heartbeat fields, an event is what ``RecordedEvent.to_json`` gives."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

from events.models import RecordedEvent, StreamId
from projections.job_status import JobStatus
from service import schemas


def test_a_job_is_the_job_status_row_plus_its_heartbeat() -> None:
    columns = list(JobStatus._fields)
    assert list(schemas.Job.model_fields) == [
        *columns,
        "last_heartbeat_at",
        "heartbeat_count",
        "stale",
    ]


def test_an_event_is_what_the_log_shows() -> None:
    event = RecordedEvent(
        position=1,
        event_id=uuid4(),
        stream_id=StreamId("job-x"),
        stream_position=1,
        type="job.status_reported",
        version=1,
        data={"job_id": "x"},
        metadata={},
        received_at=datetime.now(UTC),
        prev_hash=b"",
        hash=b"",
    )
    shown = event.to_json()
    assert set(shown) == set(schemas.Event.model_fields)
    schemas.Event.model_validate(shown)
