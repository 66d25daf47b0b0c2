"""What jobtrail reads from GitHub's native ``workflow_run`` and ``workflow_job`` deliveries.

Shapes follow GitHub's published webhook schemas (octokit/webhooks ``common/workflow-run`` and
``common/workflow-job``): a run's id is ``workflow_run.id``, a job's run is
``workflow_job.run_id``; both carry ``run_attempt``, ``status`` and, once ``completed``, a
``conclusion``. A run's ``display_title`` is its ``run-name``; the bundled workflow names runs
and their job ``provision <job_id>``, which is how a delivery finds its job when no callback
with its run id ever arrived (a runner that failed to start).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from events.catalog import JOB_ID

# Conclusions that end a job still live, and the status each ends it with.
ENDING_CONCLUSIONS: Final = {
    "cancelled": "cancelled",
    "failure": "failed",
    "startup_failure": "failed",
    "timed_out": "timed_out",
}
_TITLE = re.compile(rf"provision ({JOB_ID.pattern})")


@dataclass(frozen=True, slots=True)
class RunReport:
    """One native delivery about a run (or one of its jobs), as far as jobs are concerned."""

    run_id: int
    run_attempt: int | None
    status: str | None
    conclusion: str | None
    title: str | None  # workflow_run.display_title, or workflow_job.name

    @property
    def titled_job(self) -> str | None:
        """The job id named by a ``provision <job_id>`` title, if any."""
        match = _TITLE.fullmatch(self.title or "")
        return match.group(1) if match else None

    @property
    def ending_status(self) -> str | None:
        """The job status this report ends a live job with, if it ends one."""
        if self.status != "completed" or self.conclusion is None:
            return None
        return ENDING_CONCLUSIONS.get(self.conclusion)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def run_report(event_name: str, document: Any) -> RunReport | None:
    """The run a ``workflow_run``/``workflow_job`` delivery is about; None for other events or a
    payload without a run id."""
    if event_name not in ("workflow_run", "workflow_job") or not isinstance(document, dict):
        return None
    run = document.get(event_name)
    if not isinstance(run, dict):
        return None
    if event_name == "workflow_run":
        run_id, title = _int(run.get("id")), _str(run.get("display_title"))
    else:
        run_id, title = _int(run.get("run_id")), _str(run.get("name"))
    if run_id is None:
        return None
    return RunReport(
        run_id=run_id,
        run_attempt=_int(run.get("run_attempt")),
        status=_str(run.get("status")),
        conclusion=_str(run.get("conclusion")),
        title=title,
    )
