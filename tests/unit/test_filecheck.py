"""``verify --file`` without a database (``events.filecheck``): chains followed across files,
a chain that starts in a file not given listed rather than reported, a removed or edited line
named, and a file compared with its archive record."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from uuid import uuid4

from events.archive import Runs
from events.filecheck import check_files
from events.hashing import GENESIS_HASH, body_digest, chain_hash
from events.models import RecordedEvent, StreamId
from events.partitions import Archived, segments_from_json
from events.transfer import encode_line, to_line

T0 = datetime(2026, 1, 30, 12, 0, tzinfo=UTC)


def chain(stream_id: str, count: int) -> list[RecordedEvent]:
    """One stream's events 1..count (global positions the same), version 1, chained."""
    events: list[RecordedEvent] = []
    prev = GENESIS_HASH
    for i in range(1, count + 1):
        event = RecordedEvent(
            position=i,
            event_id=uuid4(),
            stream_id=StreamId(stream_id),
            stream_position=i,
            type="job.heartbeat_recorded",
            version=1,
            data={"job_id": stream_id, "status": "heartbeat", "n": i},
            metadata={"scheme": "standard"},
            received_at=T0 + timedelta(days=i),
            prev_hash=prev,
            hash=b"",
        )
        digest = body_digest(
            event_id=event.event_id,
            stream_id=stream_id,
            type=event.type,
            version=event.version,
            data=event.data,
            metadata=event.metadata,
            received_at=event.received_at,
        )
        prev = chain_hash(prev, i, digest)
        events.append(event._replace(hash=prev))
    return events


def write(path: Path, events: list[RecordedEvent]) -> Path:
    path.write_text("".join(encode_line(to_line(e, None)) for e in events))
    return path


def test_chains_go_on_across_files_and_a_file_alone_continues_them(tmp_path: Path) -> None:
    events = chain("job-a", 5)
    january = write(tmp_path / "events_2026_01.jsonl", events[:2])
    february = write(tmp_path / "events_2026_02.jsonl", events[2:])

    reports, problems = check_files([january, february], {})
    assert problems == [] and [r.continued for r in reports] == [[], []]

    [alone], problems = check_files([february], {})
    assert problems == []
    assert alone.continued == [
        {"stream_id": "job-a", "stream_position": 3, "position": 3, "line": 1}
    ]


def test_a_removed_or_edited_line_is_named(tmp_path: Path) -> None:
    events = chain("job-a", 4)
    gap = write(tmp_path / "gap.jsonl", [events[0], events[1], events[3]])
    _, problems = check_files([gap], {})
    assert {(p.field, p.extra["line"]) for p in problems} == {
        ("stream_position", 3),
        ("prev_hash", 3),
    }

    edited = tmp_path / "edited.jsonl"
    edited.write_text(write(edited, events).read_text().replace('"n":2', '"n":7'))
    _, problems = check_files([edited], {})
    assert [(p.kind, p.field, p.extra["line"]) for p in problems] == [("event", "hash", 2)]

    broken = tmp_path / "broken.jsonl"
    broken.write_text(write(broken, events).read_text().replace('"n":3}', '"n":3'))
    _, problems = check_files([broken], {})
    assert (problems[0].kind, problems[0].extra["line"]) == ("line", 3)


def test_a_file_is_compared_with_its_archive_record(tmp_path: Path) -> None:
    events = chain("job-a", 3)
    runs = Runs()
    for event in events:
        runs.add(event)
    path = write(tmp_path / "events_2026_01.jsonl", events)
    [report], _ = check_files([path], {})
    month = date(2026, 1, 1)
    record = Archived(
        month=month,
        partition="events_2026_01",
        file=path.name,
        sha256=bytes.fromhex(report.sha256),
        events=3,
        first_position=1,
        last_position=3,
        first_received_at=None,
        last_received_at=None,
        archived_at=T0,
        segments=segments_from_json(runs.streams, month, path.name),
    )
    [same], problems = check_files([path], {path.name: record})
    assert problems == [] and same.record is record

    write(path, events[1:])  # the first line gone: offline, a chain continued from elsewhere
    [_], offline = check_files([path], {})
    assert offline == []
    _, problems = check_files([path], {path.name: record})
    assert {p.field for p in problems} == {"sha256", "events", "first_position", "streams"}
