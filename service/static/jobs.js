// Every job the page knows, in the API's order (newest created first), and the filtered view.

import { serverNow } from "./api.js";
import { parseTime } from "./util.js";

export const STATUSES = [
  "queued",
  "provisioning",
  "running",
  "succeeded",
  "failed",
  "cancelled",
  "timed_out",
];
const TERMINAL = new Set(["succeeded", "failed", "cancelled", "timed_out"]);

export const isLive = (job) => !TERMINAL.has(job.status);

/** Seconds since the job's last heartbeat or, without one, its last event. */
export function silenceOf(job) {
  return (serverNow() - parseTime(job.last_heartbeat_at || job.updated_at)) / 1000;
}

export function isStale(job, staleAfterS) {
  return isLive(job) && silenceOf(job) > staleAfterS;
}

// (created_at, job_id) descending, as GET /api/jobs pages them. Timestamps are fixed-width
// UTC strings, so comparing the strings compares the times.
function before(a, b) {
  if (a.created_at !== b.created_at) return a.created_at > b.created_at;
  return a.job_id > b.job_id;
}

export class JobStore {
  constructor(staleAfterS) {
    this.staleAfterS = staleAfterS;
    this.byId = new Map();
    this.order = []; // jobs, newest created first
    this.filter = { status: "", stale: false, search: "" };
    this.view = [];
  }

  /** Add or update a job; an older state than the one known is ignored. */
  upsert(job) {
    const known = this.byId.get(job.job_id);
    if (known) {
      if (known.last_position > job.last_position) return false;
      Object.assign(known, job);
      return true;
    }
    this.byId.set(job.job_id, job);
    let low = 0;
    let high = this.order.length;
    while (low < high) {
      const mid = (low + high) >> 1;
      if (before(this.order[mid], job)) low = mid + 1;
      else high = mid;
    }
    this.order.splice(low, 0, job);
    return true;
  }

  /** A page from GET /api/jobs, already in order: appended when it extends the list. */
  addPage(jobs) {
    for (const job of jobs) this.upsert(job);
  }

  refilter() {
    const { status, stale, search } = this.filter;
    const needle = search.trim().toLowerCase();
    this.view = this.order.filter(
      (job) =>
        (!status || job.status === status) &&
        (!stale || isStale(job, this.staleAfterS)) &&
        (!needle || job.job_id.toLowerCase().includes(needle)),
    );
  }

  counts() {
    const counts = Object.fromEntries(STATUSES.map((status) => [status, 0]));
    let stale = 0;
    for (const job of this.order) {
      counts[job.status] = (counts[job.status] || 0) + 1;
      if (isStale(job, this.staleAfterS)) stale += 1;
    }
    return { counts, stale, total: this.order.length };
  }
}
