// cordlesion QC page: the plots (SVG, no library). Inlined before index.js in the same script block; index.js
// calls cordlesionPlots with what the plots need of the page: its data, number format, row titles, and how to
// open a row in the detail view.
"use strict";
function cordlesionPlots({data, fmt, title, open, $}) {
  const ROWS = data.rows;

  // ------------------------------------------------------------------------------------------ plot
  const SVG = "http://www.w3.org/2000/svg";

  function svg(tag, attrs, parent) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    if (parent) parent.appendChild(el);
    return el;
  }

  function jitter(i) {           // deterministic, so the plot does not move between visits
    const x = Math.sin(i * 12.9898) * 43758.5453;
    return x - Math.floor(x) - 0.5;
  }

  function renderPlot() {
    const ok = ROWS.map((r, i) => [r, i]).filter(([r]) => r.st === "ok" && r.tot !== null);
    const groups = Array.from(new Set(ok.map(([r]) => String(r.con)))).sort();
    const host = $("plot");
    if (!groups.length) { host.textContent = "No successful images to plot."; return; }
    const W = Math.max(360, 120 * groups.length + 70), H = 230, L = 56, B = 28, T = 10;
    const maxLog = Math.max(1, Math.ceil(Math.log10(1 + Math.max(...ok.map(([r]) => r.tot)))));
    const y = (v) => T + (H - T - B) * (1 - Math.log10(1 + v) / maxLog);
    const root = svg("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img",
                             "aria-label": "strip plot of total lesion volume per image, by contrast"});
    for (let e = 0; e <= maxLog; e++) {
      const v = e === 0 ? 0 : Math.pow(10, e);
      svg("line", {x1: L - 4, x2: W - 5, y1: y(v), y2: y(v), class: "grid"}, root);
      svg("text", {x: L - 7, y: y(v) + 4, "text-anchor": "end", class: "tick"}, root).textContent = String(v);
    }
    svg("text", {x: 12, y: H / 2, transform: `rotate(-90 12 ${H / 2})`, "text-anchor": "middle", class: "tick"},
        root).textContent = "mm\u00b3 (log)";
    const band = (W - L - 10) / groups.length;
    groups.forEach((g, k) => {
      const cx = L + band * (k + 0.5);
      svg("text", {x: cx, y: H - 8, "text-anchor": "middle", class: "tick"}, root).textContent = g;
      for (const [row, i] of ok.filter(([r]) => String(r.con) === g)) {
        const dot = svg("circle", {cx: cx + jitter(i) * band * 0.6, cy: y(row.tot), r: 3.2, class: "dot"}, root);
        svg("title", {}, dot).textContent = `${title(row)}: ${fmt(row.tot)} mm\u00b3, ${row.n} lesion(s)`;
        dot.addEventListener("click", () => open(i));
      }
    });
    host.replaceChildren(root);
  }

  // --------------------------------------------------------------------------------- trajectories
  // Each subject's series (contrast, acq, run, task) across sessions, lesion count and total volume: one line
  // per series; an image whose figures come from a corrected mask is a vermillion square.
  function ticks(top, logScale) {
    if (logScale) {
      const out = [0];
      for (let v = 10; v <= top * 1.0001; v *= 10) out.push(v);
      return out;
    }
    const step = Math.max(1, Math.ceil(top / 4));
    const out = [];
    for (let v = 0; v <= top; v += step) out.push(v);
    return out;
  }

  function trajectoryPlot(key, caption, logScale) {
    const sessions = data.sessions;
    const W = Math.max(320, 80 * sessions.length + 80), H = 210, L = 52, R = 16, T = 10, B = 26;
    const top = Math.max(1, ...data.series.flatMap((s) => s.points.map((i) => ROWS[i][key] || 0)));
    const scale = logScale ? (v) => Math.log10(1 + v) / Math.log10(1 + top) : (v) => v / top;
    const y = (v) => T + (H - T - B) * (1 - scale(v || 0));
    const x = (ses) => L + (W - L - R) * (sessions.length > 1 ? sessions.indexOf(String(ses)) / (sessions.length - 1)
                                                                 : 0.5);
    const root = svg("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": caption});
    for (const v of ticks(top, logScale)) {
      svg("line", {x1: L - 4, x2: W - R, y1: y(v), y2: y(v), class: "grid"}, root);
      svg("text", {x: L - 7, y: y(v) + 4, "text-anchor": "end", class: "tick"}, root).textContent = String(v);
    }
    for (const ses of sessions) {
      svg("text", {x: x(ses), y: H - 8, "text-anchor": "middle", class: "tick"}, root).textContent = "ses-" + ses;
    }
    for (const series of data.series) {
      const points = series.points.map((i) => [x(ROWS[i].ses), y(ROWS[i][key]), i]);
      if (points.length > 1) {
        svg("polyline", {points: points.map(([px, py]) => `${px},${py}`).join(" "), class: "line"}, root);
      }
      for (const [px, py, i] of points) {
        const row = ROWS[i], manual = row.ms === "manual";
        const mark = manual ? svg("rect", {x: px - 4, y: py - 4, width: 8, height: 8, class: "manual"}, root)
                            : svg("circle", {cx: px, cy: py, r: 3.5, class: "dot"}, root);
        svg("title", {}, mark).textContent = `${series.label} ses-${row.ses}: ${fmt(row.n)} lesion(s), ` +
          `${fmt(row.tot)} mm\u00b3${manual ? " (corrected mask)" : ""}`;
        mark.addEventListener("click", () => open(i));
      }
    }
    const figure = document.createElement("figure");
    const text = document.createElement("figcaption");
    text.textContent = caption;
    figure.append(root, text);
    return figure;
  }

  function renderTrajectories() {
    const host = $("trajectories");
    if (!data.series.length) { host.textContent = "No image has a session: nothing to follow."; return; }
    host.replaceChildren(trajectoryPlot("n", "Lesion count per session", false),
                         trajectoryPlot("tot", "Total lesion volume per session (mm\u00b3, log scale)", true));
  }

  // ---------------------------------------------------------------------------------- levels
  // The study's lesion load by vertebral level (group/levels_summary.tsv): one bar per level, superior first,
  // lesion volume per image covering the level; hidden without --disc-labels.
  function renderLevels() {
    const levels = data.levels || [];
    if (!levels.length) return;
    $("levels-section").hidden = false;
    const W = Math.max(360, 34 * levels.length + 70), H = 200, L = 56, B = 28, T = 10;
    const top = Math.max(1, ...levels.map((l) => l.per || 0));
    const y = (v) => T + (H - T - B) * (1 - v / top);
    const root = svg("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img",
                             "aria-label": "lesion volume per covering image, by vertebral level"});
    for (const v of [0, top / 2, top]) {
      svg("line", {x1: L - 4, x2: W - 5, y1: y(v), y2: y(v), class: "grid"}, root);
      svg("text", {x: L - 7, y: y(v) + 4, "text-anchor": "end", class: "tick"}, root).textContent = fmt(v);
    }
    const band = (W - L - 10) / levels.length;
    levels.forEach((l, k) => {
      const x = L + band * k;
      svg("text", {x: x + band / 2, y: H - 8, "text-anchor": "middle", class: "tick"}, root).textContent = l.level;
      const bar = svg("rect", {x: x + band * 0.15, y: y(l.per || 0), width: band * 0.7,
                               height: Math.max(0, H - B - y(l.per || 0)), class: "dot"}, root);
      svg("title", {}, bar).textContent = `${l.level}: ${fmt(l.vol)} mm\u00b3 in ${l.cov} image(s) covering it ` +
        `(${fmt(l.per)} mm\u00b3 per image), ${l.n} lesion(s)`;
    });
    $("levels-plot").replaceChildren(root);
  }

  return {renderPlot, renderTrajectories, renderLevels};
}
