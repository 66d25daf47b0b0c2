// GET /api/stream read with fetch(), not EventSource: EventSource cannot send the
// Authorization header, and a token in the URL would end up in logs and history.
// Reconnects with Last-Event-ID (the highest id seen), so no change is lost in between.

import { authHeaders, Unauthorized } from "./api.js";

const SILENCE_MS = 45000; // the server sends a keep-alive every 15 s
const MAX_BACKOFF_MS = 15000;

export class LiveStream {
  /**
   * onJob(job) for each change; onState(state, detail) with state one of
   * "connecting", "live", "waiting" (detail: seconds until the next try), "refused".
   */
  constructor({ lastEventId, onJob, onState }) {
    this.lastEventId = lastEventId;
    this.onJob = onJob;
    this.onState = onState;
    this.stopped = false;
    this.controller = null;
  }

  start() {
    this.loop();
  }

  stop() {
    this.stopped = true;
    this.controller?.abort();
  }

  async loop() {
    let backoff = 1000;
    while (!this.stopped) {
      this.onState("connecting");
      try {
        await this.connect(() => {
          backoff = 1000;
          this.onState("live");
        });
      } catch (error) {
        if (error instanceof Unauthorized) {
          this.onState("refused");
          return;
        }
      }
      if (this.stopped) return;
      for (let left = backoff; left > 0 && !this.stopped; left -= 1000) {
        this.onState("waiting", Math.ceil(left / 1000));
        await new Promise((resolve) => setTimeout(resolve, Math.min(1000, left)));
      }
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
    }
  }

  async connect(onOpen) {
    this.controller = new AbortController();
    const headers = authHeaders({ Accept: "text/event-stream" });
    if (this.lastEventId !== null) headers["Last-Event-ID"] = String(this.lastEventId);
    const response = await fetch("/api/stream", {
      headers,
      signal: this.controller.signal,
      cache: "no-store",
    });
    if (response.status === 401) throw new Unauthorized();
    if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
    onOpen();
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let watchdog = setTimeout(() => this.controller.abort(), SILENCE_MS);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        clearTimeout(watchdog);
        watchdog = setTimeout(() => this.controller.abort(), SILENCE_MS);
        buffer += value;
        const blocks = buffer.split(/\r\n\r\n|\n\n|\r\r/);
        buffer = blocks.pop();
        for (const block of blocks) this.dispatch(block);
      }
    } finally {
      clearTimeout(watchdog);
    }
  }

  dispatch(block) {
    let event = "message";
    let id = null;
    const data = [];
    for (const line of block.split(/\r\n|\n|\r/)) {
      if (line === "" || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
      else if (field === "id") id = value;
    }
    if (event !== "job" || data.length === 0) return;
    const job = JSON.parse(data.join("\n"));
    if (id !== null && /^\d+$/.test(id)) this.lastEventId = Number(id);
    this.onJob(job);
  }
}
