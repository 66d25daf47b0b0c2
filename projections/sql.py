"""The SQL of the read models: ``projections/queries.sql``, and the checkpoint statements,
which are written for the set of projections they lock."""

import functools

from events.sql import load_queries

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
