"""The read models as they were at a point of the log, without touching the live ones.

The log is folded in memory up to a position (inclusive) or a time (events received at or
before it); the jobs are then read with the very queries the API and ``jobtrail jobs`` use
(``projections.reads``), so the objects are the same: the states are copied into temporary
tables named like the read models, which this transaction alone sees in front of the live ones
(``pg_temp`` first in its ``search_path``), and which vanish at its end.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from events.models import Foldable
from events.store import Connection
from events.upcasters import UPCASTERS, Upcasters
from projections.base import AnyProjection, quoted
from projections.folding import Fold, Progress
from projections.reads import Job, all_jobs
from projections.registry import PROJECTIONS


async def fold_until(
    conn: Connection,
    projections: Sequence[AnyProjection] = PROJECTIONS,
    *,
    position: int | None = None,
    moment: datetime | None = None,
    upcasters: Upcasters = UPCASTERS,
    progress: Progress | None = None,
) -> tuple[Fold, datetime]:
    """Fold the events up to ``position`` (inclusive) and/or received at or before ``moment``.

    Returns the fold and the moment it stands for: ``moment`` when given, else when the last
    event taken was received (now, for an empty log).
    """
    latest: datetime | None = None

    def keep(event: Foldable) -> bool:
        nonlocal latest
        if moment is not None and event.received_at > moment:
            return False
        if latest is None or event.received_at > latest:
            latest = event.received_at
        return True

    fold = Fold(projections)
    await fold.run(conn, until=position, keep=keep, upcasters=upcasters, progress=progress)
    return fold, moment or latest or datetime.now(UTC)


async def jobs_of(
    conn: Connection, fold: Fold, *, now: datetime, stale_after_s: float
) -> list[Job]:
    """The jobs as ``reads.all_jobs`` shows them, read from ``fold``'s states (``now`` decides
    what is stale)."""
    async with conn.transaction():
        for projection in fold.projections:
            table = quoted(projection.name)
            await conn.execute(f"CREATE TEMP TABLE {table} (LIKE {table}) ON COMMIT DROP")
            await conn.copy_records_to_table(
                projection.name,
                records=fold.rows(projection),
                columns=projection.columns,
                schema_name="pg_temp",
            )
        # Explicitly first: a changed search_path also makes PostgreSQL re-plan any statement
        # this connection prepared before against the live tables.
        await conn.execute(
            "SELECT set_config('search_path', 'pg_temp, ' || current_setting('search_path'), true)"
        )
        return await all_jobs(conn, now=now, stale_after_s=stale_after_s)
