// DOM and formatting helpers. Text from the API only ever becomes a text node (textContent):
// h() turns every string child into a Text node and refuses "innerHTML"-like attributes.

const SVG_NS = "http://www.w3.org/2000/svg";
const FORBIDDEN = new Set(["innerHTML", "outerHTML", "srcdoc"]);

function build(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (FORBIDDEN.has(name) || name.startsWith("on")) throw new Error(`attribute ${name} not allowed`);
    if (name === "class") el.setAttribute("class", value);
    else if (name === "text") el.textContent = String(value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** An HTML element; string children become text. */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element; string children become text. */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

/** Seconds as "42s", "3m 05s", "2h 10m", "3d 4h". */
export function duration(seconds) {
  if (!Number.isFinite(seconds)) return "—";
  const t = Math.max(0, Math.floor(seconds));
  if (t < 60) return `${t}s`;
  if (t < 3600) return `${Math.floor(t / 60)}m ${String(t % 60).padStart(2, "0")}s`;
  if (t < 86400) return `${Math.floor(t / 3600)}h ${String(Math.floor((t % 3600) / 60)).padStart(2, "0")}m`;
  return `${Math.floor(t / 86400)}d ${Math.floor((t % 86400) / 3600)}h`;
}

/** "2026-11-27T10:00:00.123456Z" as milliseconds since the epoch (microseconds dropped). */
export function parseTime(text) {
  return text ? Date.parse(text) : NaN;
}

export function clockTime(text) {
  const ms = parseTime(text);
  if (!Number.isFinite(ms)) return "—";
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

export function dateTime(text) {
  const ms = parseTime(text);
  if (!Number.isFinite(ms)) return "—";
  const d = new Date(ms);
  return `${d.toLocaleDateString([], { month: "short", day: "numeric" })} ${d.toLocaleTimeString([], { hour12: false })}`;
}

export const number = new Intl.NumberFormat();

/** Run fn at most once per animation frame, however often it is asked for. */
export function throttled(fn) {
  let queued = false;
  return () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => {
      queued = false;
      fn();
    });
  };
}
