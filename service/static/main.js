// The dashboard: asks for the read token, loads every job a page at a time, then follows
// /api/stream. Everything from the API is shown as text.

import * as api from "./api.js";
import { JobStore, STATUSES } from "./jobs.js";
import { LiveStream } from "./live.js";
import { renderDeliveries, renderOverview, renderProjections, renderRate } from "./panels.js";
import { JobTable } from "./table.js";
import { Timeline } from "./timeline.js";
import { h, number, throttled } from "./util.js";

const $ = (id) => document.getElementById(id);
const staleAfterS = Number(document.querySelector('meta[name="jobtrail-stale-after-s"]')?.content) || 180;

const CONNECTION_TEXT = {
  connecting: "Connecting…",
  live: "Live",
  waiting: (seconds) => `Reconnecting in ${seconds}s`,
  refused: "Token refused",
};

function setConnection(state, detail) {
  const root = $("connection");
  root.dataset.state = state;
  const text = CONNECTION_TEXT[state];
  root.querySelector(".label").textContent = typeof text === "function" ? text(detail) : text;
}

function askForToken(message = "") {
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("token").value = "";
  $("token").focus();
}

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  api.token.set($("token").value.trim());
  location.reload();
});

$("sign-out").addEventListener("click", () => {
  api.token.clear();
  location.reload();
});

function setUpTabs(onDeliveries) {
  const tabs = [$("tab-jobs"), $("tab-deliveries")];
  const select = (tab) => {
    for (const other of tabs) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
      $(other.getAttribute("aria-controls")).hidden = !selected;
    }
    tab.focus();
    if (tab.id === "tab-deliveries") onDeliveries();
  };
  for (const tab of tabs) {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (event) => {
      if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
        select(tabs[(tabs.indexOf(tab) + 1) % tabs.length]);
      }
    });
  }
}

async function start() {
  if (!api.token.get()) return askForToken();
  $("login").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = false;

  const store = new JobStore(staleAfterS);
  const table = new JobTable($("jobs"), store, { onOpen: (jobId) => timeline.open(jobId) });
  const timeline = new Timeline($("overlay"), store);
  for (const status of STATUSES) $("status-filter").append(h("option", { value: status }, status.replace("_", " ")));

  let loading = true;
  const redraw = throttled(() => {
    store.refilter();
    table.render();
    renderOverview($("overview"), store.counts());
    const shown = store.view.length;
    const total = store.order.length;
    $("count").textContent =
      (shown === total ? `${number.format(total)} jobs` : `${number.format(shown)} of ${number.format(total)} jobs`) +
      (loading ? " (loading…)" : "");
  });
  const onFilter = () => {
    store.filter = { status: $("status-filter").value, stale: $("stale-filter").checked, search: $("search").value };
    redraw();
  };
  $("filters").addEventListener("input", onFilter);
  $("filters").addEventListener("submit", (event) => event.preventDefault());

  const fail = (error) => {
    if (error instanceof api.Unauthorized) {
      api.token.clear();
      askForToken("That token was refused.");
      return true;
    }
    console.warn(error);
    return false;
  };

  let deliveries = [];
  const refreshDeliveries = async () => {
    try {
      deliveries = (await api.deliveries(1000)).deliveries;
    } catch (error) {
      fail(error);
      return;
    }
    renderRate($("rate"), deliveries);
    renderDeliveries($("deliveries"), deliveries, { onOpenJob: (jobId, eventId) => timeline.open(jobId, { eventId }) });
  };
  const refreshProjections = async () => {
    try {
      const { projections } = await api.projections();
      $("projections").hidden = false;
      renderProjections($("projections"), projections);
      return projections;
    } catch (error) {
      fail(error);
      return null;
    }
  };
  setUpTabs(refreshDeliveries);

  // The stream resumes after the job_status checkpoint read before the first page: every
  // change the pages could have missed comes after it.
  const projections = await refreshProjections();
  if (!projections) return;
  const resumeFrom = projections.find((p) => p.name === "job_status")?.position ?? 0;
  let stream = null;
  try {
    await api.loadAllJobs((jobs, last) => {
      store.addPage(jobs);
      loading = !last;
      redraw();
      if (!stream) {
        stream = new LiveStream({
          lastEventId: resumeFrom,
          onJob: (job) => {
            if (store.upsert(job)) {
              redraw();
              timeline.changed(job.job_id);
            }
          },
          onState: (state, detail) => {
            setConnection(state, detail);
            if (state === "refused") fail(new api.Unauthorized());
          },
        });
        stream.start();
      }
    });
  } catch (error) {
    if (!fail(error)) $("count").textContent = `Could not load jobs: ${error.message}`;
    return;
  }
  await refreshDeliveries();
  setInterval(() => table.render(), 1000); // ages count up
  setInterval(() => renderOverview($("overview"), store.counts()), 5000); // jobs go stale
  setInterval(refreshDeliveries, 10000);
  setInterval(refreshProjections, 10000);
}

start();
