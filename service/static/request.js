// The exact request behind an event, fetched from /api/events/{id} when the event's "request"
// is opened: pretty-printed JSON with a toggle to the bytes as received, the headers that
// authenticated it, and whether its signature re-verifies now (checked by the server, which
// never shows a secret). Everything from the request is text: h() makes text nodes only.

import { eventDetail } from "./api.js";
import { clear, h } from "./util.js";

const FORM = "application/x-www-form-urlencoded";

function bytesOf(base64) {
  const binary = atob(base64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** The body as received: UTF-8 text, or a hex dump if it is not UTF-8. */
function rawText(bytes) {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(" ");
  }
}

/** The JSON the request carries (a form's payload field), indented; else the text itself. */
function prettyText(text, contentType) {
  let json = text;
  if (contentType.split(";")[0].trim().toLowerCase() === FORM) json = new URLSearchParams(text).get("payload") ?? text;
  try {
    return JSON.stringify(JSON.parse(json), null, 2);
  } catch {
    return text;
  }
}

function signatureBadge(signature) {
  if (signature.verified) {
    const key = signature.key === "rotated" ? "a rotated key" : "the primary key";
    return h("span", { class: "badge signature ok", "data-verified": "true" }, `signature re-verifies (${key})`);
  }
  return h("span", { class: "badge signature bad", "data-verified": "false" }, "signature verifies with no configured secret");
}

function requestView(detail) {
  if (!detail.raw) {
    return [h("p", { class: "muted small request-derived" }, "Derived by jobtrail itself: no request, no signature.")];
  }
  const { body_base64: body, content_type: contentType, headers } = detail.raw;
  const bytes = bytesOf(body);
  const raw = rawText(bytes);
  const pretty = prettyText(raw, contentType);
  const pre = h("pre", { class: "payload request-body", tabindex: 0, "aria-label": "request body" }, pretty);
  const toggle = h("button", { type: "button", class: "request-toggle", "aria-pressed": "false" }, "Show raw bytes");
  toggle.addEventListener("click", () => {
    const showRaw = toggle.getAttribute("aria-pressed") !== "true";
    toggle.setAttribute("aria-pressed", String(showRaw));
    toggle.textContent = showRaw ? "Show pretty JSON" : "Show raw bytes";
    pre.textContent = showRaw ? raw : pretty;
    pre.classList.toggle("raw", showRaw);
  });
  return [
    h(
      "div",
      { class: "request-head" },
      signatureBadge(detail.signature),
      h("span", { class: "muted small" }, `${contentType} · ${bytes.length} bytes · digest v${detail.digest_version}`),
      toggle,
    ),
    pre,
    h("dl", { class: "facts request-headers" }, Object.entries(headers).flatMap(([name, value]) => [h("dt", {}, name), h("dd", {}, value)])),
  ];
}

/**
 * A <details> for one event's request. `state` is shared by the drawer's renders: the ids of
 * the open ones (kept open across reloads) and the answers already fetched.
 */
export function requestSection(eventId, state) {
  const body = h("div", { class: "request" });
  const section = h("details", { class: "request-details", open: state.open.has(eventId) }, h("summary", {}, "request"), body);
  section.addEventListener("toggle", async () => {
    if (!section.open) {
      state.open.delete(eventId);
      return;
    }
    state.open.add(eventId);
    if (!state.details.has(eventId)) {
      clear(body).append(h("p", { class: "muted small" }, "Loading the request…"));
      try {
        state.details.set(eventId, await eventDetail(eventId));
      } catch (error) {
        clear(body).append(h("p", { class: "error-text" }, `Could not load the request: ${error.message}`));
        return;
      }
    }
    clear(body).append(...requestView(state.details.get(eventId)));
  });
  return section;
}
