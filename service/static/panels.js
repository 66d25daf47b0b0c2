// The overview (jobs by status, events per minute), the projections' lag, and the recent
// deliveries panel.

import { serverNow } from "./api.js";
import { sparkline, statusBars } from "./charts.js";
import { STATUSES } from "./jobs.js";
import { clear, clockTime, duration, h, number, parseTime } from "./util.js";

const MINUTES = 30;

export function renderOverview(root, summary) {
  const { counts, stale, total } = summary;
  const live = counts.queued + counts.provisioning + counts.running;
  clear(root).append(
    h("h2", { class: "card-title" }, "Jobs by status"),
    h(
      "p",
      { class: "card-figures" },
      h("strong", {}, number.format(total)),
      " jobs · ",
      h("strong", {}, number.format(live)),
      " live · ",
      h("strong", { class: stale ? "warn" : "" }, number.format(stale)),
      " stale",
    ),
    // Drawn at the card's width, so that its text keeps the page's size on a phone.
    statusBars(counts, STATUSES, Math.round(Math.min(460, Math.max(240, root.clientWidth - 34)))),
  );
}

/** Accepted callbacks per minute over the last MINUTES minutes, oldest first. */
export function perMinute(deliveries) {
  const now = serverNow();
  const buckets = new Array(MINUTES).fill(0);
  for (const d of deliveries) {
    if (d.outcome !== "accepted") continue;
    const age = Math.floor((now - parseTime(d.received_at)) / 60000);
    if (age >= 0 && age < MINUTES) buckets[MINUTES - 1 - age] += 1;
  }
  return buckets;
}

export function renderRate(root, deliveries) {
  const buckets = perMinute(deliveries);
  clear(root).append(
    h("h2", { class: "card-title" }, "Events per minute"),
    h(
      "p",
      { class: "card-figures" },
      h("strong", {}, number.format(buckets[buckets.length - 1])),
      " this minute · ",
      h("strong", {}, number.format(buckets.reduce((a, b) => a + b, 0))),
      ` in ${MINUTES} min`,
    ),
    sparkline(buckets, { label: `Accepted callbacks per minute, last ${MINUTES} minutes` }),
    h("div", { class: "axis-labels muted small" }, h("span", {}, `${MINUTES} min ago`), h("span", {}, "now")),
    h("p", { class: "muted small" }, "accepted callbacks received by this server process"),
  );
}

export function renderProjections(root, projections) {
  const worst =
    projections.find((p) => p.state === "stalled") ||
    projections.find((p) => p.state === "catching_up") ||
    projections[0];
  if (!worst) return;
  const text =
    worst.state === "live"
      ? `projections live · position ${number.format(worst.position)}`
      : `${worst.name} ${worst.state.replace("_", " ")}: ${number.format(worst.lag_events)} events, ${duration(worst.lag_s)} behind`;
  root.className = `chip projection-${worst.state}`;
  root.textContent = text;
  root.title = projections.map((p) => `${p.name}: ${p.state}, ${p.lag_events} behind`).join("\n");
}

export function renderDeliveries(root, deliveries, { onOpenJob }) {
  const rows = deliveries.slice(0, 200).map((d) => {
    const accepted = d.outcome === "accepted" || d.outcome === "duplicate";
    return h(
      "tr",
      {},
      h("td", { class: "num", title: d.received_at }, clockTime(d.received_at)),
      h("td", {}, d.scheme || "—"),
      h("td", {}, h("span", { class: `badge outcome ${accepted ? "ok" : "refused"}` }, d.outcome.replaceAll("_", " "))),
      h("td", { class: "num" }, String(d.status_code)),
      h("td", { class: "reason" }, d.reason || ""),
      h(
        "td",
        { class: "mono" },
        d.job_id ? h("button", { type: "button", class: "link", dataset: { job: d.job_id } }, d.job_id) : "—",
      ),
      h(
        "td",
        {},
        accepted && d.event_id && d.job_id
          ? h("button", { type: "button", class: "link", dataset: { job: d.job_id, event: d.event_id }, title: d.event_id }, "event")
          : "",
      ),
    );
  });
  const table = h(
    "table",
    { class: "deliveries" },
    h("caption", { class: "muted small" }, `The last ${rows.length} ingest attempts seen by this server process, newest first.`),
    h(
      "thead",
      {},
      h("tr", {}, ["Time", "Scheme", "Outcome", "HTTP", "Reason", "Job", "Event"].map((t) => h("th", { scope: "col" }, t))),
    ),
    h("tbody", {}, rows),
  );
  table.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-job]");
    if (button) onOpenJob(button.dataset.job, button.dataset.event || null);
  });
  clear(root).append(rows.length ? table : h("p", { class: "muted" }, "No callbacks received by this process yet."));
}
