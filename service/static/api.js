// The read API with the bearer token kept in sessionStorage (asked for once per tab).

const TOKEN_KEY = "jobtrail.token";

export class Unauthorized extends Error {}

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

// Server time minus browser time, from the Date header, so ages do not depend on the
// browser's clock being right (to the second).
let clockOffsetMs = 0;
export const serverNow = () => Date.now() + clockOffsetMs;

function noteServerClock(response) {
  const date = Date.parse(response.headers.get("Date") || "");
  if (Number.isFinite(date)) clockOffsetMs = date + 500 - Date.now();
}

export function authHeaders(extra = {}) {
  return { Authorization: `Bearer ${token.get()}`, ...extra };
}

export async function getJson(path, { signal } = {}) {
  const response = await fetch(path, { headers: authHeaders(), signal, cache: "no-store" });
  if (response.status === 401) throw new Unauthorized("the read token was refused");
  noteServerClock(response);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(body.error || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

/** Every job, newest first, a page at a time; onPage(jobs, isLast) after each page. */
export async function loadAllJobs(onPage, { pageSize = 500, max = 200000 } = {}) {
  let cursor = null;
  let loaded = 0;
  do {
    const query = `limit=${pageSize}` + (cursor ? `&cursor=${encodeURIComponent(cursor)}` : "");
    const page = await getJson(`/api/jobs?${query}`);
    loaded += page.jobs.length;
    cursor = loaded < max ? page.next_cursor : null;
    onPage(page.jobs, cursor === null);
  } while (cursor);
}

export const jobEvents = (jobId) => getJson(`/api/jobs/${encodeURIComponent(jobId)}/events`);
export const eventDetail = (eventId) => getJson(`/api/events/${encodeURIComponent(eventId)}`);
export const projections = () => getJson("/api/projections");
export const deliveries = (limit) => getJson(`/api/deliveries?limit=${limit}`);
