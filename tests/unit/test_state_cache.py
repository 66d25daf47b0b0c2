"""The projector's state cache: what it hands back, and when it forgets."""

from __future__ import annotations

from projections.cache import StateCache


def test_states_are_handed_back_only_at_the_checkpoint_they_were_committed_at() -> None:
    cache = StateCache()
    cache.begin()
    cache.stage("job_status", 0, 10, {"a": 1})
    assert cache.states_at("job_status", 0) == {}  # staged, not committed
    cache.commit()
    assert cache.states_at("job_status", 10) == {"a": 1}
    assert cache.states_at("job_status", 12) == {}  # moved by someone else: forgotten
    assert cache.states_at("job_status", 10) == {}


def test_a_batch_that_never_committed_leaves_nothing_behind() -> None:
    cache = StateCache()
    cache.begin()
    cache.stage("job_status", 0, 10, {"a": 1})
    cache.commit()
    cache.begin()
    cache.stage("job_status", 10, 20, {"a": 2})  # rolled back: commit() never called
    cache.begin()
    cache.stage("job_status", 10, 15, {"b": 3})
    cache.commit()
    assert cache.states_at("job_status", 15) == {"a": 1, "b": 3}


def test_a_batch_based_on_another_checkpoint_drops_what_was_kept() -> None:
    cache = StateCache()
    cache.begin()
    cache.stage("job_status", 0, 10, {"a": 1})
    cache.commit()
    cache.begin()
    cache.stage("job_status", 30, 40, {"b": 2})  # another projector wrote 10..30
    cache.commit()
    assert cache.states_at("job_status", 40) == {"b": 2}


def test_the_least_recently_written_states_go_first() -> None:
    cache = StateCache(limit=2)
    for position, states in enumerate(({"a": 1, "b": 1}, {"a": 2}, {"c": 3}), start=1):
        cache.begin()
        cache.stage("job_status", position - 1, position, states)
        cache.commit()
    assert cache.states_at("job_status", 3) == {"a": 2, "c": 3}
