"""Every read model the projector maintains, in the order they are applied."""

from projections import job_heartbeat, job_status
from projections.base import AnyProjection

PROJECTIONS: tuple[AnyProjection, ...] = (job_status.PROJECTION, job_heartbeat.PROJECTION)
