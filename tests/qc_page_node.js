// Runs the QC page's own script (qc/index.html) under node with a minimal stand-in for the DOM, so its pure
// parts (the manual_correction.py export, the trajectory plots) are checked where no browser is installed.
// Usage: node qc_page_node.js INDEX_HTML RATINGS_JSON  -> JSON {yaml, plots: [{caption, marks: [...]}],
// levels: {hidden, bars: [title, ...]}}
"use strict";
const fs = require("fs");

const [htmlPath, ratings] = process.argv.slice(2);
const html = fs.readFileSync(htmlPath, "utf8");
const data = html.match(/<script type="application\/json" id="qc-data">([\s\S]*?)<\/script>/)[1];
const code = html.match(/<script nonce="[^"]*">([\s\S]*?)<\/script>/)[1];

function element(tag) {
  return {
    tag, value: "", checked: true, hidden: false, disabled: false, children: [], dataset: {}, attrs: {},
    textContent: "", className: "",
    classList: {toggle() {}, add() {}, remove() {}},
    appendChild(child) { this.children.push(child); return child; },
    append(...nodes) { this.children.push(...nodes); },
    replaceChildren(...nodes) { this.children = nodes; },
    setAttribute(key, value) { this.attrs[key] = value; },
    getAttribute(key) { return key in this.attrs ? this.attrs[key] : null; },
    removeAttribute(key) { delete this.attrs[key]; },
    addEventListener() {}, querySelector() { return null; }, querySelectorAll() { return []; },
    scrollIntoView() {}, remove() {}, click() {}, reset() {},
  };
}

const byId = {};
global.document = {
  getElementById(id) {
    if (!byId[id]) {
      byId[id] = element("div");
      if (id === "qc-data") byId[id].textContent = data;
    }
    return byId[id];
  },
  createElement: (tag) => element(tag),
  createElementNS: (ns, tag) => element(tag),
  querySelectorAll: () => [],
  addEventListener() {},
  body: element("body"),
};
const store = {["cordlesion-qc:" + JSON.parse(data).study]: ratings};
global.window = {localStorage: {getItem: (k) => (k in store ? store[k] : null), setItem: (k, v) => { store[k] = v; }}};

new Function(code)();

const text = (node) => node.children.filter((c) => c.tag === "title").map((c) => c.textContent).join("");
const plots = document.getElementById("trajectories").children.map((figure) => {
  const svg = figure.children[0];
  return {
    caption: figure.children[1].textContent,
    lines: svg.children.filter((c) => c.tag === "polyline").length,
    marks: svg.children.filter((c) => c.tag === "rect" || c.tag === "circle")
      .map((c) => ({manual: c.tag === "rect", title: text(c)})),
  };
});
const levelsPlot = document.getElementById("levels-plot").children[0];   // --disc-labels: the load by level
const levels = {hidden: document.getElementById("levels-section").hidden,
                bars: levelsPlot ? levelsPlot.children.filter((c) => c.tag === "rect").map(text) : []};
process.stdout.write(JSON.stringify({yaml: window.cordlesionQC.failYaml(), plots, levels}));
