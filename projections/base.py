"""What the projector needs to know about a read model, declared once.

A read model is a pure fold, ``apply(state, event) -> state``, over the events that concern one
key (a job id), and a ``NamedTuple`` whose fields are its table's columns, in order: immutable
like a frozen dataclass, and a state is its own row. (A fold makes a new state per event: a
frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``, and was the
largest single cost of a replay.) The SQL that loads and saves its rows is derived from those
fields, so adding a column is a change to the state type plus its migration
(``tests/integration/test_projection_tables.py`` checks that they agree). The live projector,
the replay and ``verify`` run the same fold, which is what makes a rebuild equal to the live
tables.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import types
import typing
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Generic, TypeVar

import asyncpg

from events.models import Foldable

S = TypeVar("S", bound=tuple[Any, ...])

# How a field's Python type is stored; ``X | None`` is stored as X, nullable.
PG_TYPES: dict[type, str] = {str: "text", int: "bigint", datetime: "timestamptz", bool: "boolean"}


def quoted(name: str) -> str:
    if not name.isidentifier():  # names come from dataclass fields; this only guards quoting
        raise ValueError(f"not an SQL identifier: {name!r}")
    return f'"{name}"'


def _field_names(state_type: type[Any]) -> tuple[str, ...]:
    names: tuple[str, ...] = state_type._fields  # a NamedTuple's, in order
    return names


def _columns(state_type: type[Any]) -> tuple[tuple[str, str, bool], ...]:
    """(name, PostgreSQL type, nullable) for each field of ``state_type``, in order."""
    hints = typing.get_type_hints(state_type)
    columns = []
    for name in _field_names(state_type):
        hint, nullable = hints[name], False
        if isinstance(hint, types.UnionType):
            [hint] = [a for a in typing.get_args(hint) if a is not type(None)]
            nullable = True
        columns.append((name, PG_TYPES[hint], nullable))
    return tuple(columns)


def _tuple_getter(indexes: list[int]) -> Callable[[Any], tuple[Any, ...]]:
    if len(indexes) == 1:
        [index] = indexes
        return lambda state: (state[index],)
    getter: Callable[[Any], tuple[Any, ...]] = operator.itemgetter(*indexes)
    return getter


@dataclasses.dataclass(frozen=True)
class Projection(Generic[S]):
    """A read model: its name (also its table and checkpoint), key column, state type and fold.

    ``state_type`` is a ``NamedTuple`` whose first field is the key; its fields are the columns.
    ``metadata_of``: the event types whose ``metadata`` ``key_of`` or ``apply`` read. The
    readers that feed the folds decode no other event's metadata (it arrives empty).
    ``often_changed``: the columns most events change (a heartbeat: when, and how many). The
    projector writes a row whose other columns stay as they were with ``update_into``, which
    sends the key and these columns only: a timestamp is the costliest value to encode.
    """

    name: str
    state_type: type[S]
    key_of: Callable[[Foldable], str | None]
    apply: Callable[[S | None, Foldable], S]
    metadata_of: frozenset[str] = frozenset()
    often_changed: tuple[str, ...] = ()
    schema: tuple[tuple[str, str, bool], ...] = dataclasses.field(init=False)
    load_sql: str = dataclasses.field(init=False)
    upsert_sql: str = dataclasses.field(init=False)
    # The key's and the often-changed columns' indexes in a state.
    hot_columns: tuple[int, ...] = dataclasses.field(init=False)
    # The key and the often-changed columns of a state; and all its other columns.
    often_changed_of: Callable[[S], tuple[Any, ...]] = dataclasses.field(init=False)
    rest_of: Callable[[S], tuple[Any, ...]] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        schema = _columns(self.state_type)
        names = [quoted(name) for name, _, _ in schema]
        key = names[0]
        set_ = object.__setattr__  # frozen: derived fields are set once, here
        set_(self, "schema", schema)
        # One primary-key probe per key: with "= any($1)" a cached generic plan may scan the
        # whole table for every batch instead.
        set_(
            self,
            "load_sql",
            f"{self.select_sql(self.name)} WHERE {key} IN (SELECT unnest($1::text[]))",
        )
        set_(self, "upsert_sql", self.upsert_into(self.name))
        fields = _field_names(self.state_type)
        unknown = set(self.often_changed) - set(fields[1:])
        if unknown:
            raise ValueError(f"{self.name}: often_changed names no column: {sorted(unknown)}")
        hot = [0, *(fields.index(name) for name in self.often_changed)]
        rest = [i for i in range(len(fields)) if i not in hot]
        set_(self, "hot_columns", tuple(hot))
        # itemgetter of one index returns the item, not a 1-tuple: a tuple of them always.
        set_(self, "often_changed_of", _tuple_getter(hot))
        set_(self, "rest_of", _tuple_getter(rest))

    def select_sql(self, table: str) -> str:
        """Every row of ``table`` (this read model's table, or a copy of it)."""
        return f"SELECT {', '.join(quoted(name) for name in self.columns)} FROM {quoted(table)}"

    def upsert_into(self, table: str, *, first: int = 1, only_if: str = "") -> str:
        """Insert or update rows of ``table``; one array argument per column, in order, the
        first numbered ``first``. ``only_if``: a condition on which all of it depends."""
        names = [quoted(name) for name in self.columns]
        arrays = [f"${i}::{t}[]" for i, (_, t, _) in enumerate(self.schema, first)]
        updates = [f"{n} = excluded.{n}" for n in names[1:]]
        return (
            f"INSERT INTO {quoted(table)} ({', '.join(names)})"
            f" SELECT * FROM unnest({', '.join(arrays)})"
            f"{f' WHERE {only_if}' if only_if else ''}"
            f" ON CONFLICT ({names[0]}) DO UPDATE SET {', '.join(updates)}"
        )

    def update_into(self, table: str, *, first: int = 1, only_if: str = "") -> str:
        """Update the often-changed columns of existing rows of ``table``: one array argument
        for the key and one for each of those columns (``often_changed_of``), the first
        numbered ``first``; "" if there are none.

        Each row is found by a primary-key probe, whatever size the table had when the plan
        was made. A generic plan counts ten rows in an array argument, and on a table that
        looked small when it was planned (a new database's first batches) it chose to hash
        the batch and scan the whole table, which it went on doing after the table had grown:
        for 5,000 jobs, ~0.5 ms a batch (bench/README.md, session 20). A LIMIT whose count is
        not a constant makes the planner count a tenth of that, one row, and one probe is
        cheaper than any scan; the count is the array's length, so no row is left out."""
        if not self.often_changed:
            return ""
        names = [quoted(name) for name in self.columns]
        types_ = [self.schema[c][1] for c in self.hot_columns]
        arrays = [f"${i}::{t}[]" for i, t in enumerate(types_, first)]
        aliases = [f"c{c}" for c in self.hot_columns]
        assignments = [
            f"{names[c]} = v.{a}" for c, a in zip(self.hot_columns[1:], aliases[1:], strict=True)
        ]
        return (
            f"UPDATE {quoted(table)} t SET {', '.join(assignments)}"
            f" FROM (SELECT * FROM unnest({', '.join(arrays)})"
            f" LIMIT cardinality({arrays[0]})) AS v({', '.join(aliases)})"
            f" WHERE t.{names[0]} = v.{aliases[0]}{f' AND {only_if}' if only_if else ''}"
        )

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.schema)

    def to_row(self, state: S) -> tuple[Any, ...]:
        return state  # a state is its row

    def from_row(self, row: asyncpg.Record) -> S:
        return self.state_type(*row.values())

    def fold(self, states: dict[str, S], event: Foldable) -> str | None:
        """Apply ``event`` to the state it concerns, in ``states``; return that key, if any."""
        key = self.key_of(event)
        if key is not None:
            states[key] = self.apply(states.get(key), event)
        return key


AnyProjection = Projection[Any]


def metadata_read_by(projections: Iterable[AnyProjection]) -> frozenset[str]:
    """The event types whose metadata any of ``projections`` reads."""
    return frozenset().union(*(p.metadata_of for p in projections))


@functools.cache
def _field_index(state_type: type[Any]) -> dict[str, int]:
    return {name: i for i, name in enumerate(_field_names(state_type))}


def evolve(state: S, **changes: Any) -> S:
    """A copy of ``state`` with ``changes`` (``NamedTuple._replace`` without its generality:
    a fold makes one copy per event, which makes this the replay's inner loop)."""
    cls = type(state)
    index = _field_index(cls)
    row = list(state)
    for name, value in changes.items():
        row[index[name]] = value
    return tuple.__new__(cls, row)
