"""Checking archive and export files without the log: ``jobtrail verify --file``.

Every line is parsed as ``import`` parses it (``events.transfer``), and every event's hash,
data and link to the previous event of its stream are checked by the auditor ``verify`` uses
(``events.audit``), across the files in the order given. A stream whose first event in a file
follows a gap (a stream position past the next one expected: the chain goes on from a file not
given, such as an earlier month's archive) is listed as continuing, not reported as broken; only
its own hash and data can be checked. Inside a file a gap is a break, unless the file's archive
record says a run of that stream starts there (its events straddle a month's end out of clock
order).

When the database is reachable and ``archived_partitions`` names the file, the file must also be
what was archived: its SHA-256, event count, position range and every stream's runs. That also
catches what no chain can show in a file alone: lines removed at the start or end of a stream.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from events.archive import Runs
from events.audit import ChainAuditor, Problem
from events.partitions import Archived, format_month
from events.transfer import ImportRefused, parse_line


@dataclass
class FileReport:
    """One file checked: what it holds, which chains it continues, and how it compares with
    its archive record (``record``, when the database has one)."""

    path: Path
    events: int = 0
    sha256: str = ""
    runs: Runs = field(default_factory=Runs)
    first_position: int | None = None
    last_position: int | None = None
    continued: list[dict[str, Any]] = field(default_factory=list)
    record: Archived | None = None

    def to_json(self, database: str) -> dict[str, Any]:
        record = None
        if self.record is not None:
            record = {"month": format_month(self.record.month), "file": self.record.file}
        return {
            "file": str(self.path),
            "events": self.events,
            "streams": len(self.runs.streams),
            "sha256": self.sha256,
            "first_position": self.first_position,
            "last_position": self.last_position,
            "continued": self.continued,
            "archive": record,
            "database": database if self.record is None else "compared",
        }


def _at(problem: Problem, path: Path, line: int) -> Problem:
    return dataclasses.replace(problem, extra={**problem.extra, "file": str(path), "line": line})


def _record_starts(record: Archived | None) -> set[tuple[str, int]]:
    return set() if record is None else {(s.stream_id, s.first) for s in record.segments}


def check_files(
    paths: Sequence[Path], records: Mapping[str, Archived]
) -> tuple[list[FileReport], list[Problem]]:
    """Check ``paths`` in order (``records``: archive records by file name; empty offline).
    Raises ``OSError`` for a file that cannot be read."""
    auditor = ChainAuditor()
    reports: list[FileReport] = []
    problems: list[Problem] = []
    for path in paths:
        report = FileReport(path, record=records.get(path.name))
        starts = _record_starts(report.record)
        seen: set[str] = set()
        digest = hashlib.sha256()
        with path.open("rb") as file:
            for number, raw in enumerate(file, 1):
                digest.update(raw)
                found = _check_line(auditor, report, number, raw, seen, starts)
                problems += [_at(p, path, number) for p in found]
        report.sha256 = digest.hexdigest()
        if report.record is not None:
            problems += _compare(report, report.record)
        reports.append(report)
    return reports, problems


def _check_line(
    auditor: ChainAuditor,
    report: FileReport,
    number: int,
    raw: bytes,
    seen: set[str],
    starts: set[tuple[str, int]],
) -> list[Problem]:
    if not raw.strip():
        return []
    try:
        event, _key = parse_line(number, raw.decode("utf-8"))
    except (ImportRefused, UnicodeDecodeError) as error:
        reason = error.reason if isinstance(error, ImportRefused) else "not UTF-8"
        return [Problem("line", None, None, "line", detail=reason)]
    report.events += 1
    if report.first_position is None:
        report.first_position = event.position
    report.last_position = event.position
    report.runs.add(event)
    may_continue = event.stream_id not in seen or (event.stream_id, event.stream_position) in starts
    seen.add(event.stream_id)
    continued = len(auditor.continued)
    found = auditor.check(event, may_continue=may_continue)
    if len(auditor.continued) > continued:
        report.continued.append(
            {
                "stream_id": event.stream_id,
                "stream_position": event.stream_position,
                "position": event.position,
                "line": number,
            }
        )
    return found


def _compare(report: FileReport, record: Archived) -> list[Problem]:
    """How the file differs from what was archived as it (nothing if it is that file)."""
    month = format_month(record.month)
    recorded_runs: dict[str, list[list[Any]]] = {}
    for segment in record.segments:
        recorded_runs.setdefault(segment.stream_id, []).append(segment.to_json())
    differing = sorted(
        stream
        for stream in recorded_runs.keys() | report.runs.streams.keys()
        if recorded_runs.get(stream) != report.runs.streams.get(stream)
    )
    fields: list[tuple[str, Any, Any]] = [
        ("sha256", record.sha256.hex(), report.sha256),
        ("events", record.events, report.events),
        ("first_position", record.first_position, report.first_position),
        ("last_position", record.last_position, report.last_position),
    ]
    if differing:
        shown = ", ".join(differing[:10]) + (", …" if len(differing) > 10 else "")
        actual = f"{len(differing)} streams with other stream positions or hashes: {shown}"
        fields.append(("streams", "each stream's runs as archived", actual))
    return [
        Problem(
            "archive",
            None,
            None,
            name,
            expected,
            actual,
            detail=f"the file is not what was archived for {month} (archived_partitions)",
            extra={"file": str(report.path), "month": month},
        )
        for name, expected, actual in fields
        if expected != actual
    ]
