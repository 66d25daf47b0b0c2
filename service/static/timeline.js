// A job's timeline in a drawer: its summary, the heartbeat intervals, and every event with its
// payload (as text) and, on demand, the exact request it was received as (request.js). Esc or
// the close button closes it and gives focus back.

import { jobEvents, serverNow } from "./api.js";
import { heartbeatIntervals } from "./charts.js";
import { isLive } from "./jobs.js";
import { requestSection } from "./request.js";
import { statusBadge } from "./table.js";
import { clear, dateTime, duration, h, parseTime } from "./util.js";

const HEARTBEAT = "job.heartbeat_recorded";

function field(label, value) {
  return [h("dt", {}, label), h("dd", {}, value ?? "—")];
}

function intervalsOf(events, job) {
  const beats = events.filter((e) => e.type === HEARTBEAT).map((e) => parseTime(e.received_at));
  const intervals = [];
  for (let i = 1; i < beats.length; i++) intervals.push((beats[i] - beats[i - 1]) / 1000);
  const ongoing = isLive(job) && beats.length > 0;
  if (ongoing) intervals.push((serverNow() - beats[beats.length - 1]) / 1000);
  return { intervals, ongoing, count: beats.length };
}

function eventCard(event, highlight, requests) {
  const status = typeof event.data?.status === "string" ? event.data.status : null;
  const scheme = event.metadata?.scheme;
  return h(
    "li",
    { class: `event${highlight ? " highlight" : ""}`, id: `event-${event.event_id}` },
    h(
      "div",
      { class: "event-head" },
      h("time", { datetime: event.received_at, title: event.received_at }, dateTime(event.received_at)),
      h("span", { class: `badge type ${event.type.replace(/\W/g, "-")}` }, event.type),
      status ? h("span", { class: "badge plain" }, status) : null,
      h("span", { class: "muted" }, `#${event.stream_position} · position ${event.position}${scheme ? ` · ${scheme}` : ""}`),
    ),
    h("pre", { class: "payload", tabindex: 0, "aria-label": "payload" }, JSON.stringify(event.data, null, 2)),
    h(
      "details",
      { class: "metadata" },
      h("summary", {}, "metadata"),
      h("pre", { class: "payload" }, JSON.stringify(event.metadata, null, 2)),
    ),
    requestSection(event.event_id, requests),
  );
}

export class Timeline {
  constructor(root, store) {
    this.store = store;
    this.jobId = null;
    this.returnFocus = null;
    this.highlight = null;
    this.requests = { open: new Set(), details: new Map() };
    this.title = h("h2", { id: "timeline-title" });
    this.closeButton = h("button", { type: "button", class: "icon-button", "aria-label": "Close timeline" }, "✕");
    this.content = h("div", { class: "drawer-content" });
    this.drawer = h(
      "aside",
      { class: "drawer", role: "dialog", "aria-modal": "true", "aria-labelledby": "timeline-title", hidden: true },
      h("header", { class: "drawer-head" }, this.title, this.closeButton),
      this.content,
    );
    this.backdrop = h("div", { class: "backdrop", hidden: true });
    root.append(this.backdrop, this.drawer);
    this.closeButton.addEventListener("click", () => this.close());
    this.backdrop.addEventListener("click", () => this.close());
    this.drawer.addEventListener("keydown", (event) => {
      if (event.key === "Escape") this.close();
    });
    this.refreshTimer = null;
  }

  get isOpen() {
    return this.jobId !== null;
  }

  async open(jobId, { eventId = null } = {}) {
    this.returnFocus = this.isOpen ? this.returnFocus : document.activeElement;
    if (jobId !== this.jobId) this.requests = { open: new Set(), details: new Map() };
    this.jobId = jobId;
    this.highlight = eventId;
    // Opened from a delivery: show the request it was.
    if (eventId) this.requests.open.add(eventId);
    this.title.textContent = jobId;
    this.drawer.hidden = false;
    this.backdrop.hidden = false;
    document.body.classList.add("drawer-open");
    clear(this.content).append(h("p", { class: "muted" }, "Loading events…"));
    this.closeButton.focus();
    await this.load();
  }

  close() {
    if (!this.isOpen) return;
    this.jobId = null;
    this.drawer.hidden = true;
    this.backdrop.hidden = true;
    document.body.classList.remove("drawer-open");
    this.returnFocus?.focus?.();
  }

  /** The job changed on the stream: reload its events soon (several changes, one reload). */
  changed(jobId) {
    if (jobId !== this.jobId || this.refreshTimer) return;
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = null;
      this.load();
    }, 300);
  }

  async load() {
    const jobId = this.jobId;
    let events;
    try {
      events = (await jobEvents(jobId)).events;
    } catch (error) {
      if (jobId === this.jobId) clear(this.content).append(h("p", { class: "error-text" }, `Could not load events: ${error.message}`));
      return;
    }
    if (jobId !== this.jobId) return;
    this.render(events);
  }

  render(events) {
    const job = this.store.byId.get(this.jobId);
    const staleAfterS = this.store.staleAfterS;
    const parts = [];
    if (job) {
      parts.push(
        h("div", { class: "drawer-status" }, statusBadge(job, staleAfterS)),
        h(
          "dl",
          { class: "facts" },
          field("created", dateTime(job.created_at)),
          field("started", job.started_at ? dateTime(job.started_at) : null),
          field("finished", job.finished_at ? dateTime(job.finished_at) : null),
          field("run", job.run_id == null ? null : `${job.run_id} attempt ${job.run_attempt ?? 1}`),
          field("agent", job.agent_id),
          field("region", job.region),
          field("events", `${job.event_count}${job.late_event_count ? ` (${job.late_event_count} late)` : ""}`),
          field("heartbeats", String(job.heartbeat_count)),
          field("message", job.message),
          field("error", job.error),
        ),
      );
    }
    const { intervals, ongoing, count } = intervalsOf(events, job || {});
    parts.push(
      h(
        "section",
        { class: "hb-section" },
        h("h3", {}, "Heartbeat intervals"),
        h("p", { class: "muted small" }, `${count} heartbeats; bars over the dashed line are gaps longer than ${duration(staleAfterS)}${ongoing ? "; the last bar is the silence since the last one" : ""}.`),
        heartbeatIntervals(intervals, staleAfterS, { ongoing }),
      ),
      h("h3", {}, `Events (${events.length})`),
      h("ol", { class: "events" }, events.map((e) => eventCard(e, e.event_id === this.highlight, this.requests))),
    );
    clear(this.content).append(...parts);
    if (this.highlight) document.getElementById(`event-${this.highlight}`)?.scrollIntoView({ block: "center" });
  }
}
