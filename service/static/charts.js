// Small inline-SVG pictures: jobs by status, a per-minute sparkline, heartbeat intervals.

import { duration, number, s } from "./util.js";

/** Horizontal bars, one per status, with its count. */
export function statusBars(counts, statuses, width = 460) {
  const rowH = 22;
  const labelW = 96;
  const max = Math.max(1, ...statuses.map((status) => counts[status] || 0));
  const total = statuses.reduce((sum, status) => sum + (counts[status] || 0), 0);
  const svg = s("svg", {
    viewBox: `0 0 ${width} ${rowH * statuses.length}`,
    width,
    height: rowH * statuses.length,
    class: "chart status-bars",
    role: "img",
    "aria-label": statuses.map((status) => `${status} ${counts[status] || 0}`).join(", "),
  });
  svg.append(s("title", {}, `Jobs by status (${number.format(total)})`));
  statuses.forEach((status, i) => {
    const count = counts[status] || 0;
    const y = i * rowH;
    const barW = count ? Math.max(2, ((width - labelW - 56) * count) / max) : 0;
    svg.append(
      s("text", { x: 0, y: y + 15, class: "chart-label" }, status.replace("_", " ")),
      s("rect", { x: labelW, y: y + 4, width: barW, height: rowH - 8, rx: 3, class: `bar status-${status}` }),
      s("text", { x: labelW + barW + 6, y: y + 15, class: "chart-value" }, number.format(count)),
    );
  });
  return svg;
}

/** A sparkline of per-minute counts, oldest first. */
export function sparkline(values, { label }) {
  const width = 320;
  const height = 64;
  const pad = 4;
  const max = Math.max(1, ...values);
  const step = values.length > 1 ? (width - 2 * pad) / (values.length - 1) : 0;
  const points = values.map((v, i) => [pad + i * step, height - pad - ((height - 2 * pad) * v) / max]);
  const line = points.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
  const area = `${pad},${height - pad} ${line} ${(pad + (values.length - 1) * step).toFixed(1)},${height - pad}`;
  const svg = s("svg", {
    viewBox: `0 0 ${width} ${height}`,
    class: "chart sparkline",
    role: "img",
    "aria-label": `${label}: ${values.join(", ")}`,
    preserveAspectRatio: "none",
  });
  svg.append(
    s("title", {}, label),
    s("line", { x1: pad, x2: width - pad, y1: height - pad, y2: height - pad, class: "axis" }),
    s("polygon", { points: area, class: "spark-area" }),
    s("polyline", { points: line, class: "spark-line" }),
  );
  const [lastX, lastY] = points[points.length - 1] || [pad, height - pad];
  svg.append(s("circle", { cx: lastX, cy: lastY, r: 3, class: "spark-dot" }));
  return svg;
}

/**
 * Bars of the time between consecutive heartbeats (seconds), the last one possibly the
 * silence still going on; bars longer than the stale threshold are marked.
 */
export function heartbeatIntervals(intervals, staleAfterS, { ongoing = false } = {}) {
  const width = 520;
  const height = 120;
  const top = 14;
  const bottom = 18;
  const left = 34;
  const shown = intervals.slice(-80);
  const max = Math.max(staleAfterS * 1.25, ...shown);
  const scale = (v) => ((height - top - bottom) * v) / max;
  const slot = (width - left - 4) / Math.max(shown.length, 1);
  const gaps = shown.filter((v) => v > staleAfterS).length;
  const svg = s("svg", {
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    class: "chart heartbeat-chart",
    role: "img",
    "aria-label": `${shown.length} heartbeat intervals, ${gaps} longer than ${duration(staleAfterS)}`,
  });
  svg.append(s("title", {}, "Time between heartbeats"));
  const thresholdY = height - bottom - scale(staleAfterS);
  svg.append(
    s("line", { x1: left, x2: width, y1: height - bottom, y2: height - bottom, class: "axis" }),
    s("text", { x: 0, y: height - bottom + 4, class: "chart-label small" }, "0"),
    s("text", { x: 0, y: top + 4, class: "chart-label small" }, duration(max)),
    s("line", { x1: left, x2: width, y1: thresholdY, y2: thresholdY, class: "threshold" }),
    s("text", { x: left + 4, y: thresholdY - 4, class: "chart-label small threshold-label" }, `stale after ${duration(staleAfterS)}`),
  );
  shown.forEach((value, i) => {
    const barH = Math.max(1.5, scale(value));
    const classes = ["hb-bar"];
    if (value > staleAfterS) classes.push("gap");
    if (ongoing && i === shown.length - 1) classes.push("ongoing");
    svg.append(
      s(
        "rect",
        {
          x: left + i * slot + slot * 0.15,
          y: height - bottom - barH,
          width: Math.max(1, slot * 0.7),
          height: barH,
          class: classes.join(" "),
        },
        s("title", {}, `${duration(value)}${value > staleAfterS ? " (gap)" : ""}${ongoing && i === shown.length - 1 ? ", still silent" : ""}`),
      ),
    );
  });
  if (shown.length === 0) {
    svg.append(s("text", { x: width / 2, y: height / 2, class: "chart-label middle" }, "fewer than two heartbeats"));
  }
  return svg;
}
