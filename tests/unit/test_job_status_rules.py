"""The job_status and job_heartbeat folds on hand-built events (SPEC section 5 and the rules in
the module docstring of ``projections.job_status``). No database: the folds are pure."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest

from events.catalog import HEARTBEAT_RECORDED, STATUS_REPORTED, TIMED_OUT, normalise_status
from events.models import RecordedEvent, StreamId
from projections import job_heartbeat, job_status
from projections.job_heartbeat import JobHeartbeat
from projections.job_status import JobStatus

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
REPORTED_TERMINAL = ("succeeded", "failed", "cancelled")
RANK = {"queued": 0, "provisioning": 1, "running": 2}


def rank(status: str) -> int:
    return RANK.get(status, 3)


class Stream:
    """Builds the events of one job's stream: positions and server times always increase."""

    def __init__(self, job_id: str = "j", *, first_position: int = 100) -> None:
        self.job_id = job_id
        self.position = first_position - 7
        self.stream_position = 0

    def _event(self, type_: str, data: dict[str, Any]) -> RecordedEvent:
        # Global positions have gaps (other streams interleave); stream positions do not.
        self.position += 7
        self.stream_position += 1
        return RecordedEvent(
            position=self.position,
            event_id=uuid4(),
            stream_id=StreamId(f"job-{self.job_id}"),
            stream_position=self.stream_position,
            type=type_,
            version=1,
            data={"job_id": self.job_id, **data},
            metadata={"scheme": "standard"},
            received_at=T0 + timedelta(seconds=self.stream_position),
            prev_hash=bytes(32),
            hash=bytes(32),
        )

    def status(self, status: str, **fields: Any) -> RecordedEvent:
        return self._event(STATUS_REPORTED, {"status": status, **fields})

    def heartbeat(self, **fields: Any) -> RecordedEvent:
        return self._event(HEARTBEAT_RECORDED, {"status": "heartbeat", **fields})

    def timed_out(self) -> RecordedEvent:
        return self._event(TIMED_OUT, {"silent_for_s": 900})

    def callback(self, status: str) -> RecordedEvent:
        """A status or heartbeat callback, or the watchdog's event for ``timed_out``."""
        if status == "heartbeat":
            return self.heartbeat()
        if status == "timed_out":
            return self.timed_out()
        return self.status(status)


def fold(events: list[RecordedEvent]) -> JobStatus:
    state: JobStatus | None = None
    for event in events:
        state = job_status.apply(state, event)
    assert state is not None
    return state


def statuses(events: list[RecordedEvent]) -> list[str]:
    """The status after each event."""
    seen: list[str] = []
    state: JobStatus | None = None
    for event in events:
        state = job_status.apply(state, event)
        seen.append(state.status)
    return seen


# --- status order -------------------------------------------------------------------------------


def test_status_moves_forward_through_the_lifecycle() -> None:
    s = Stream()
    events = [s.status("queued"), s.status("provisioning"), s.status("running")]
    events.append(s.status("succeeded"))
    assert statuses(events) == ["queued", "provisioning", "running", "succeeded"]
    job = fold(events)
    assert job.late_event_count == 0
    assert job.event_count == 4


@pytest.mark.parametrize(
    ("sequence", "expected"),
    [
        (["running", "provisioning"], "running"),
        (["running", "queued"], "running"),
        (["provisioning", "queued"], "provisioning"),
        (["running", "provisioning", "queued", "running"], "running"),
        (["queued", "running", "provisioning"], "running"),
    ],
)
def test_out_of_order_callbacks_never_move_a_job_backwards(
    sequence: list[str], expected: str
) -> None:
    s = Stream()
    job = fold([s.status(status) for status in sequence])
    assert job.status == expected
    # Backwards non-terminal callbacks are not "late": only callbacks after the end are.
    assert job.late_event_count == 0
    assert job.event_count == len(sequence)


def test_skipping_steps_is_allowed() -> None:
    s = Stream()
    assert statuses([s.status("queued"), s.status("running")]) == ["queued", "running"]


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("completed", "succeeded"),
        ("success", "succeeded"),
        ("failure", "failed"),
        ("error", "failed"),
    ],
)
def test_status_aliases_are_resolved(alias: str, canonical: str) -> None:
    s = Stream()
    start = s.status("running")
    end = s.status(alias)
    job = fold([start, end])
    assert job.status == canonical
    assert job.finished_at == end.received_at
    assert job.late_event_count == 0


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("succeeded", "failed"),
        ("failed", "succeeded"),
        ("cancelled", "succeeded"),
        ("succeeded", "cancelled"),
        ("failed", "cancelled"),
        ("succeeded", "success"),
        ("failure", "completed"),
    ],
)
def test_first_reported_terminal_status_stays(first: str, second: str) -> None:
    s = Stream()
    events = [s.status("running"), s.status(first, message="first")]
    events.append(s.status(second, message="second", error="late error"))
    job = fold(events)
    assert job.status == normalise_status(first)
    assert job.late_event_count == 1
    assert job.finished_at == events[1].received_at
    # A late callback is otherwise ignored: it does not overwrite what the job reported.
    assert job.message == "first"
    assert job.error is None
    # ... but it is an event of the stream.
    assert job.event_count == 3
    assert job.last_position == events[2].position
    assert job.updated_at == events[2].received_at


@pytest.mark.parametrize("late", ["queued", "provisioning", "running", "heartbeat", "failed"])
@pytest.mark.parametrize("terminal", REPORTED_TERMINAL)
def test_every_callback_after_a_terminal_status_is_late(terminal: str, late: str) -> None:
    s = Stream()
    events = [s.status("provisioning"), s.status(terminal), s.callback(late), s.callback(late)]
    job = fold(events)
    assert job.status == terminal
    assert job.late_event_count == 2
    assert job.event_count == 4
    assert job.finished_at == events[1].received_at


def test_late_heartbeats_are_counted_as_late() -> None:
    s = Stream()
    events = [s.status("running"), s.status("succeeded")]
    events += [s.heartbeat() for _ in range(3)]
    job = fold(events)
    assert (job.status, job.late_event_count, job.event_count) == ("succeeded", 3, 5)


# --- a terminal status as the job's first event -----------------------------------------------


@pytest.mark.parametrize(
    ("reported", "canonical"),
    [
        ("succeeded", "succeeded"),
        ("failed", "failed"),
        ("cancelled", "cancelled"),
        ("success", "succeeded"),
    ],
)
def test_a_job_that_is_first_heard_of_when_it_ends(reported: str, canonical: str) -> None:
    # E.g. the earlier callbacks were lost, or the job failed before it could report. Its own
    # terminal callback is not late, and it finished when that callback arrived.
    s = Stream()
    event = s.status(reported, run_id=7, error="boom" if canonical == "failed" else None)
    job = job_status.apply(None, event)
    assert job.status == canonical
    assert job.late_event_count == 0
    assert job.event_count == 1
    assert job.created_at == job.updated_at == job.finished_at == event.received_at
    assert job.run_id == 7
    if canonical == "failed":
        assert job.error == "boom"


def test_a_callback_after_a_first_heard_terminal_status_is_late() -> None:
    s = Stream()
    job = fold([s.status("failed"), s.status("running")])
    assert job.status == "failed"
    assert job.late_event_count == 1


# --- timed_out --------------------------------------------------------------------------------


@pytest.mark.parametrize("reported", [*REPORTED_TERMINAL, "completed", "error"])
def test_timed_out_yields_to_a_later_reported_terminal_status(reported: str) -> None:
    s = Stream()
    events = [s.status("running"), s.timed_out()]
    assert statuses(events) == ["running", "timed_out"]
    end = s.status(reported, message="done after all", error="e" if reported == "error" else None)
    job = fold([*events, end])
    assert job.status == normalise_status(reported)
    assert job.finished_at == end.received_at
    assert job.message == "done after all"
    assert job.late_event_count == 0
    assert job.event_count == 3


@pytest.mark.parametrize("late", ["queued", "provisioning", "running", "heartbeat"])
def test_a_non_terminal_callback_after_timed_out_is_late(late: str) -> None:
    s = Stream()
    events = [s.status("running"), s.timed_out(), s.callback(late)]
    job = fold(events)
    assert job.status == "timed_out"
    assert job.late_event_count == 1
    assert job.finished_at == events[1].received_at
    assert job.event_count == 3


def test_timed_out_then_terminal_then_another_terminal() -> None:
    s = Stream()
    events = [s.status("running"), s.timed_out(), s.status("failed"), s.status("succeeded")]
    job = fold(events)
    assert job.status == "failed"
    assert job.late_event_count == 1
    assert job.finished_at == events[2].received_at


def test_timed_out_after_a_reported_terminal_status_changes_nothing() -> None:
    s = Stream()
    events = [s.status("running"), s.status("succeeded"), s.timed_out()]
    job = fold(events)
    assert job.status == "succeeded"
    assert job.finished_at == events[1].received_at
    # The watchdog's event is not a callback: it is counted as an event, not as a late one.
    assert job.late_event_count == 0
    assert job.event_count == 3


@pytest.mark.parametrize("live", ["queued", "provisioning", "running"])
def test_timed_out_ends_a_live_job(live: str) -> None:
    s = Stream()
    events = [s.status(live), s.heartbeat(), s.timed_out()]
    job = fold(events)
    assert job.status == "timed_out"
    assert job.finished_at == events[2].received_at
    assert job.late_event_count == 0


# --- heartbeats -------------------------------------------------------------------------------


def test_a_heartbeat_creates_an_unknown_job_as_running() -> None:
    s = Stream()
    beat = s.heartbeat(agent_id="agent-7")
    job = job_status.apply(None, beat)
    assert job.status == "running"
    assert job.job_id == "j"
    assert job.created_at == job.updated_at == job.started_at == beat.received_at
    assert job.finished_at is None
    assert (job.event_count, job.late_event_count, job.last_position) == (1, 0, beat.position)
    assert job.agent_id == "agent-7"


@pytest.mark.parametrize("status", ["queued", "provisioning", "running"])
def test_a_heartbeat_never_changes_the_status(status: str) -> None:
    s = Stream()
    events = [s.status(status), s.heartbeat(), s.heartbeat()]
    assert statuses(events) == [status] * 3
    job = fold(events)
    assert job.event_count == 3
    assert job.late_event_count == 0
    if status == "queued":
        # A heartbeat does not start a queued job either.
        assert job.started_at is None


def test_a_provisioning_callback_after_a_first_heartbeat_does_not_go_back() -> None:
    s = Stream()
    events = [s.heartbeat(), s.status("provisioning"), s.status("running")]
    assert statuses(events) == ["running", "running", "running"]
    assert fold(events).started_at == events[0].received_at


def test_event_count_counts_heartbeats_timeouts_and_late_events() -> None:
    s = Stream()
    events = [
        s.status("provisioning"),
        s.heartbeat(),
        s.heartbeat(),
        s.timed_out(),
        s.heartbeat(),
        s.status("succeeded"),
        s.status("failed"),
    ]
    job = fold(events)
    assert job.status == "succeeded"
    assert job.event_count == 7
    assert job.late_event_count == 2  # the heartbeat after timed_out, and failed
    assert job.last_position == events[-1].position


# --- timestamps and identity --------------------------------------------------------------------


def test_timestamps_and_last_position() -> None:
    s = Stream()
    events = [
        s.status("queued"),
        s.status("provisioning"),
        s.heartbeat(),
        s.status("running"),
        s.heartbeat(),
        s.status("succeeded"),
        s.heartbeat(),
    ]
    after_queued = job_status.apply(None, events[0])
    assert after_queued.started_at is None and after_queued.finished_at is None
    job = fold(events)
    assert job.created_at == events[0].received_at
    assert job.started_at == events[1].received_at  # the first provisioning, not running
    assert job.finished_at == events[5].received_at
    assert job.updated_at == events[-1].received_at
    assert job.last_position == events[-1].position
    assert job.started_at < job.finished_at < job.updated_at


def test_started_at_is_the_first_running_when_there_was_no_provisioning() -> None:
    s = Stream()
    events = [s.status("queued"), s.status("running"), s.status("running")]
    assert fold(events).started_at == events[1].received_at


def test_identity_fields_are_taken_from_callbacks() -> None:
    s = Stream()
    events = [
        s.status("queued", run_id=1001, run_attempt=1),
        s.status("provisioning", agent_id="agent-1", region="eu-west-1", message="booting"),
        s.heartbeat(),  # carries none of them: nothing is erased
        s.status("running", run_attempt=2, message="up"),
        s.status("failed", error="disk full", message="giving up", details={"x": 1}),
    ]
    job = fold(events)
    assert job.job_id == "j"
    assert (job.run_id, job.run_attempt) == (1001, 2)
    assert (job.agent_id, job.region) == ("agent-1", "eu-west-1")
    assert (job.message, job.error) == ("giving up", "disk full")


def test_explicit_nulls_do_not_erase_identity() -> None:
    s = Stream()
    job = fold([s.status("running", agent_id="a-1"), s.status("running", agent_id=None)])
    assert job.agent_id == "a-1"


def test_other_event_types_are_refused() -> None:
    s = Stream()
    odd = s._event("github.ping", {})
    with pytest.raises(ValueError, match=r"github\.ping"):
        job_status.apply(None, odd)


def test_key_of_events() -> None:
    s = Stream("vm-1")
    assert job_status.job_key(s.status("running")) == "vm-1"
    assert job_status.job_key(s.heartbeat()) == "vm-1"
    assert job_status.job_key(s.timed_out()) == "vm-1"
    assert job_status.job_key(s._event("github.ping", {})) is None
    assert job_heartbeat.heartbeat_key(s.heartbeat()) == "vm-1"
    assert job_heartbeat.heartbeat_key(s.status("running")) is None
    assert job_heartbeat.heartbeat_key(s.timed_out()) is None


# --- job_heartbeat -------------------------------------------------------------------------------


def test_heartbeat_projection_counts_and_times() -> None:
    s = Stream()
    beats = [s.heartbeat() for _ in range(4)]
    state: JobHeartbeat | None = None
    for i, beat in enumerate(beats, start=1):
        state = job_heartbeat.apply(state, beat)
        assert state.heartbeat_count == i
        assert state.last_heartbeat_at == beat.received_at
        assert state.first_heartbeat_at == beats[0].received_at
        assert state.job_id == "j"


def test_heartbeats_after_the_end_are_still_recorded_by_the_heartbeat_projection() -> None:
    s = Stream()
    s.status("succeeded")
    late = s.heartbeat()
    beat = job_heartbeat.apply(None, late)
    assert (beat.heartbeat_count, beat.first_heartbeat_at, beat.last_heartbeat_at) == (
        1,
        late.received_at,
        late.received_at,
    )


# --- properties over random sequences ---------------------------------------------------------

CALLBACKS = [
    "queued",
    "provisioning",
    "running",
    "heartbeat",
    "succeeded",
    "failed",
    "cancelled",
    "completed",
    "success",
    "failure",
    "error",
    "timed_out",
]


@pytest.mark.parametrize("seed", [1, 2, 3, 5, 8, 13, 21, 34, 55, 89])
def test_random_sequences_keep_the_rules(seed: int) -> None:
    rng = random.Random(seed)
    s = Stream(f"job-{seed}")
    # Weighted towards live statuses so that sequences spend some time before their end.
    weights = [4, 4, 4, 6, 1, 1, 1, 1, 1, 1, 1, 1]
    chosen = rng.choices(CALLBACKS, weights=weights, k=rng.randint(1, 40))
    # The watchdog only times out a job it knows: a stream never starts with timed_out.
    if chosen[0] == "timed_out":
        chosen[0] = "queued"
    events = [s.callback(c) for c in chosen]

    state: JobStatus | None = None
    expected_late = 0
    for i, event in enumerate(events):
        before = state
        state = job_status.apply(state, event)
        assert state.event_count == i + 1
        assert state.last_position == event.position
        assert state.updated_at == event.received_at
        assert state.created_at == events[0].received_at
        # finished_at is set exactly when the job has ended.
        assert (state.finished_at is not None) == (rank(state.status) == 3)
        if before is None:
            assert state.late_event_count == 0
            continue
        # Never backwards along the order.
        assert rank(state.status) >= rank(before.status), (before.status, state.status)
        # A reported terminal status is final; timed_out only yields to a reported one.
        if before.status in REPORTED_TERMINAL:
            assert state.status == before.status
            assert state.finished_at == before.finished_at
        if before.status == "timed_out":
            assert state.status in (*REPORTED_TERMINAL, "timed_out")
        # Late: a callback (not the watchdog's event) after a terminal status, unless it is the
        # reported terminal status that supersedes timed_out.
        superseding = before.status == "timed_out" and state.status in REPORTED_TERMINAL
        if rank(before.status) == 3 and event.type != TIMED_OUT and not superseding:
            expected_late += 1
        assert state.late_event_count == expected_late
    assert state is not None
    assert state.event_count == len(events)


@pytest.mark.parametrize("seed", [4, 6, 7])
def test_folding_in_chunks_equals_folding_at_once(seed: int) -> None:
    # The projector folds batch by batch, starting from the stored row: the split must not matter.
    rng = random.Random(seed)
    s = Stream()
    events = [s.callback(c) for c in rng.choices(CALLBACKS, k=30)]
    whole = fold(events)
    cut = rng.randint(1, len(events) - 1)
    state: JobStatus | None = fold(events[:cut])
    for event in events[cut:]:
        state = job_status.apply(state, event)
    assert state == whole
