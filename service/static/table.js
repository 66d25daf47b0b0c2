// The jobs grid: only the rows in view exist in the DOM, so 10 000 jobs scroll smoothly.
// Keyboard: arrows, Page Up/Down, Home/End move; Enter or Space opens the job's timeline.

import { isLive, isStale, silenceOf } from "./jobs.js";
import { serverNow } from "./api.js";
import { clear, duration, h, number, parseTime } from "./util.js";

const ROW_H = 40;
const OVERSCAN = 8;

export const COLUMNS = [
  { key: "job", title: "Job" },
  { key: "status", title: "Status" },
  { key: "heartbeat", title: "Last heartbeat" },
  { key: "updated", title: "Updated" },
  { key: "events", title: "Events" },
  { key: "run", title: "Run" },
  { key: "agent", title: "Agent · region" },
  { key: "message", title: "Message" },
];

export function statusBadge(job, staleAfterS) {
  return h(
    "span",
    { class: "marks" },
    h("span", { class: `badge status-${job.status}` }, job.status.replace("_", " ")),
    isStale(job, staleAfterS) ? h("span", { class: "badge stale", title: "no heartbeat for longer than the stale threshold" }, "stale") : null,
    job.late_event_count > 0
      ? h("span", { class: "badge late", title: "callbacks after the job ended" }, `late ×${job.late_event_count}`)
      : null,
  );
}

function heartbeatText(job) {
  if (!job.last_heartbeat_at) return job.heartbeat_count ? "—" : "none";
  return `${duration(silenceOf(job))} ago`;
}

function ageText(text) {
  return `${duration((serverNow() - parseTime(text)) / 1000)} ago`;
}

export class JobTable {
  constructor(root, store, { onOpen }) {
    this.store = store;
    this.onOpen = onOpen;
    this.active = 0;
    this.rows = new Map(); // index -> row element
    this.header = h(
      "div",
      { class: "grid-row grid-head", role: "row" },
      COLUMNS.map((c) => h("div", { class: `cell col-${c.key}`, role: "columnheader" }, c.title)),
    );
    this.spacer = h("div", { class: "grid-spacer" });
    this.body = h("div", { class: "grid-body", role: "rowgroup" }, this.spacer);
    this.empty = h("p", { class: "grid-empty", hidden: true });
    this.grid = h(
      "div",
      { class: "grid", role: "grid", tabindex: 0, "aria-label": "Jobs", "aria-rowcount": 1 },
      h("div", { role: "rowgroup" }, this.header),
      this.body,
    );
    root.append(this.grid, this.empty);
    this.body.addEventListener("scroll", () => this.render());
    this.grid.addEventListener("keydown", (event) => this.onKey(event));
    this.body.addEventListener("click", (event) => {
      const row = event.target.closest(".grid-row");
      if (!row) return;
      this.setActive(Number(row.dataset.index));
      this.open();
    });
    new ResizeObserver(() => this.render()).observe(this.body);
  }

  /** Redraw the rows in view (after a change to the data or the filter). */
  render(force = false) {
    const view = this.store.view;
    this.grid.setAttribute("aria-rowcount", String(view.length + 1));
    this.spacer.style.height = `${view.length * ROW_H}px`;
    this.active = Math.min(this.active, Math.max(0, view.length - 1));
    const first = Math.max(0, Math.floor(this.body.scrollTop / ROW_H) - OVERSCAN);
    const last = Math.min(view.length, Math.ceil((this.body.scrollTop + this.body.clientHeight) / ROW_H) + OVERSCAN);
    for (const [index, row] of this.rows) {
      if (index < first || index >= last || force) {
        row.remove();
        this.rows.delete(index);
      }
    }
    for (let index = first; index < last; index++) {
      const job = view[index];
      let row = this.rows.get(index);
      if (row && row.dataset.key === `${job.job_id}@${job.last_position}`) {
        this.refreshTimes(row, job);
      } else {
        row?.remove();
        row = this.makeRow(job, index);
        this.rows.set(index, row);
        this.body.append(row);
      }
      row.classList.toggle("active", index === this.active);
    }
    if (view.length) this.grid.setAttribute("aria-activedescendant", `job-row-${this.active}`);
    else this.grid.removeAttribute("aria-activedescendant");
    this.empty.hidden = view.length > 0;
    this.empty.textContent = this.store.order.length ? "No job matches the filter." : "No jobs yet.";
  }

  makeRow(job, index) {
    const live = isLive(job);
    const stale = isStale(job, this.store.staleAfterS);
    const row = h(
      "div",
      {
        class: `grid-row${stale ? " is-stale" : ""}`,
        role: "row",
        id: `job-row-${index}`,
        "aria-rowindex": index + 2,
        dataset: { index: String(index), key: `${job.job_id}@${job.last_position}`, job: job.job_id },
      },
      h("div", { class: "cell col-job mono", role: "gridcell", title: job.job_id }, job.job_id),
      h("div", { class: "cell col-status", role: "gridcell" }, statusBadge(job, this.store.staleAfterS)),
      h("div", { class: `cell col-heartbeat num${stale ? " warn" : ""}`, role: "gridcell" }, live ? heartbeatText(job) : "—"),
      h("div", { class: "cell col-updated num", role: "gridcell", title: job.updated_at }, ageText(job.updated_at)),
      h("div", { class: "cell col-events num", role: "gridcell" }, number.format(job.event_count)),
      h("div", { class: "cell col-run mono", role: "gridcell" }, job.run_id == null ? "—" : `${job.run_id}#${job.run_attempt ?? 1}`),
      h("div", { class: "cell col-agent", role: "gridcell" }, [job.agent_id, job.region].filter(Boolean).join(" · ") || "—"),
      h("div", { class: `cell col-message${job.error ? " error-text" : ""}`, role: "gridcell", title: job.error || job.message || "" }, job.error || job.message || ""),
    );
    row.style.transform = `translateY(${index * ROW_H}px)`;
    return row;
  }

  refreshTimes(row, job) {
    const stale = isStale(job, this.store.staleAfterS);
    const heartbeat = row.querySelector(".col-heartbeat");
    heartbeat.textContent = isLive(job) ? heartbeatText(job) : "—";
    heartbeat.classList.toggle("warn", stale);
    row.querySelector(".col-updated").textContent = ageText(job.updated_at);
    if (stale !== row.classList.contains("is-stale")) {
      row.classList.toggle("is-stale", stale);
      const status = row.querySelector(".col-status");
      clear(status).append(statusBadge(job, this.store.staleAfterS));
    }
  }

  setActive(index) {
    const count = this.store.view.length;
    if (!count) return;
    this.active = Math.max(0, Math.min(count - 1, index));
    const top = this.active * ROW_H;
    if (top < this.body.scrollTop) this.body.scrollTop = top;
    else if (top + ROW_H > this.body.scrollTop + this.body.clientHeight) {
      this.body.scrollTop = top + ROW_H - this.body.clientHeight;
    }
    this.render();
  }

  open() {
    const job = this.store.view[this.active];
    if (job) this.onOpen(job.job_id);
  }

  onKey(event) {
    const page = Math.max(1, Math.floor(this.body.clientHeight / ROW_H) - 1);
    const moves = {
      ArrowDown: 1,
      ArrowUp: -1,
      PageDown: page,
      PageUp: -page,
      Home: -Infinity,
      End: Infinity,
    };
    if (event.key in moves) {
      event.preventDefault();
      const step = moves[event.key];
      this.setActive(Number.isFinite(step) ? this.active + step : step > 0 ? Infinity : 0);
    } else if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      this.open();
    }
  }

  focus() {
    this.grid.focus();
  }
}
