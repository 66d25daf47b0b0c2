"""The SQL of the read models: ``projections/queries.sql``, and the statements written for the
set of projections they lock: the checkpoints' lock and move, and a projector batch's write."""

import functools
from typing import NamedTuple

from events.sql import load_queries
from projections.base import AnyProjection

Q = load_queries("projections")


def _literal(name: str) -> str:
    # Projection names are table names, plain identifiers: nothing in one needs escaping.
    if not (name.isidentifier() and name.isascii()):
        raise ValueError(f"not a projection name: {name!r}")
    return f"'{name}'"


@functools.lru_cache(maxsize=32)
def checkpoint_sql(names: tuple[str, ...]) -> tuple[str, str]:
    """The statements that lock and that move the checkpoints of ``names`` (one position
    parameter each, in order).

    The lock is taken first in every projector batch and every rebuild: two projectors (or a
    projector and a replay) never apply the same events, and each sees the other's committed
    checkpoint. The names are spelled in the text, and each position is a parameter of its own:
    with arrays, PostgreSQL costed the generic plans for ten elements and kept planning both
    statements afresh for the two they got, 70-90 µs each in every projector batch
    (bench/README.md, session 19)."""
    listed = ", ".join(_literal(name) for name in names)
    lock = (
        "SELECT name, position FROM projection_checkpoints"
        f" WHERE name IN ({listed}) ORDER BY name FOR UPDATE"
    )
    values = ", ".join(f"({_literal(name)}, ${i}::bigint)" for i, name in enumerate(names, 1))
    save = (
        "UPDATE projection_checkpoints c SET position = v.position, updated_at = now()"
        f" FROM (VALUES {values}) AS v(name, position) WHERE c.name = v.name"
    )
    return lock, save


class BatchSql(NamedTuple):
    """The statements of a projector batch over a set of projections."""

    # Where each checkpoint is, without a lock: (name, position) rows.
    read_checkpoints: str
    # The batch's whole write, applied only if every checkpoint is still where the batch
    # started from; returns that condition. Its arguments, in order: each checkpoint's expected
    # position, then each one's new position, then per projection the column arrays of its
    # whole rows (``upsert_into``) and, if it has often-changed columns, of its narrow ones
    # (``update_into``).
    write: str


@functools.lru_cache(maxsize=32)
def batch_sql(projections: tuple[AnyProjection, ...]) -> BatchSql:
    """A projector batch's statements: a compare-and-set of the checkpoints and every row the
    batch writes, in one statement and one round trip.

    The checkpoint rows are locked (in name order, as ``checkpoint_sql`` and a rebuild's swap
    lock them) and compared with the positions the batch folded from; only if every one is
    unchanged are the rows written and the checkpoints moved. So two projectors, or a
    projector and a rebuild, never both apply an event, and a batch folded onto states that
    someone else has changed since writes nothing and says so."""
    names = [p.name for p in projections]
    listed = ", ".join(_literal(name) for name in names)
    count = len(names)

    def values(first: int) -> str:
        return ", ".join(f"({_literal(name)}, ${i}::bigint)" for i, name in enumerate(names, first))

    free = "(SELECT free FROM unchanged)"
    parts = [
        f"expected (name, position) AS (VALUES {values(1)})",
        f"locked AS (SELECT name, position FROM projection_checkpoints"
        f" WHERE name IN ({listed}) ORDER BY name FOR UPDATE)",
        f"unchanged AS (SELECT count(*) = {count} AND coalesce(bool_and(l.position ="
        f" e.position), false) AS free FROM locked l JOIN expected e USING (name))",
        f"moved AS (UPDATE projection_checkpoints c SET position = v.position,"
        f" updated_at = now() FROM (VALUES {values(count + 1)}) AS v(name, position)"
        f" WHERE c.name = v.name AND {free})",
    ]
    first = 2 * count + 1
    for i, projection in enumerate(projections):
        parts.append(
            f"whole{i} AS ({projection.upsert_into(projection.name, first=first, only_if=free)})"
        )
        first += len(projection.schema)
        if projection.often_changed:
            update = projection.update_into(projection.name, first=first, only_if=free)
            parts.append(f"narrow{i} AS ({update})")
            first += len(projection.hot_columns)
    return BatchSql(
        read_checkpoints=(
            f"SELECT name, position FROM projection_checkpoints WHERE name IN ({listed})"
        ),
        write=f"WITH {', '.join(parts)} SELECT free FROM unchanged",
    )
