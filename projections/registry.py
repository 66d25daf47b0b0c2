"""Every read model the projector maintains, in the order they are applied."""

from projections import job_heartbeat, job_status
from projections.base import AnyProjection

PROJECTIONS: tuple[AnyProjection, ...] = (job_status.PROJECTION, job_heartbeat.PROJECTION)


def by_name(names: list[str] | None = None) -> tuple[AnyProjection, ...]:
    """The projections named (all when ``names`` is empty); ``KeyError`` for an unknown one."""
    if not names:
        return PROJECTIONS
    known = {p.name: p for p in PROJECTIONS}
    return tuple(known[name] for name in names)
