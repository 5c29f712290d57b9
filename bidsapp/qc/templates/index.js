// cordlesion group QC page. No network, no library: the data are embedded in #qc-data (browsers block
// fetch() of file:// URLs). Dataset strings only ever reach the page through textContent / attributes.
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("qc-data").textContent);
  const ROWS = DATA.rows;
  const PAGE_SIZE = DATA.page_size;
  const RATINGS = {p: "pass", f: "fail", a: "artifact", s: "cord"};
  const STORE_KEY = "cordlesion-qc:" + DATA.study;
  const COLUMNS = [
    ["thumb", ""], ["sub", "Subject"], ["ses", "Session"], ["acq", "Acq"], ["run", "Run"], ["con", "Contrast"],
    ["task", "Task"], ["n", "Lesions"], ["tot", "Total mm\u00b3"], ["max", "Largest mm\u00b3"], ["new", "New"],
    ["lv", "Levels"], ["ms", "Mask"], ["st", "Status"], ["rating", "Rating"], ["err", "Error"],
  ];
  const NUMERIC = new Set(["n", "tot", "max", "new"]);
  const COLLATOR = new Intl.Collator(undefined, {numeric: true});   // one collator: localeCompare builds one per call
  const $ = (id) => document.getElementById(id);

  let storageOk = true;
  let ratings = loadRatings();
  let view = [];             // indices into ROWS after filter + sort
  let page = 0;
  let cursor = 0;            // position in view of the selected row
  let sortKey = "sub";
  let sortDir = 1;
  let detailOpen = false;

  // ------------------------------------------------------------------------------------------ storage
  function loadRatings() {
    try {
      const raw = window.localStorage.getItem(STORE_KEY);
      return raw ? JSON.parse(raw) : {};
    } catch (e) {
      storageOk = false;
      return {};
    }
  }

  function saveRatings() {
    if (!storageOk) return;
    try {
      window.localStorage.setItem(STORE_KEY, JSON.stringify(ratings));
    } catch (e) {
      storageOk = false;
      $("storage-warning").hidden = false;
    }
  }

  const ratingOf = (row) => ratings[row.rec] || "";

  // ---------------------------------------------------------------------------------- filter + sort
  function fillSelect(id, key) {
    const select = $(id);
    const values = Array.from(new Set(ROWS.map((r) => (r[key] === null ? "n/a" : String(r[key]))))).sort();
    const options = [["", "all"]].concat(values.map((v) => [v, v]));
    if (key === "rating") options.splice(1, options.length - 1, ["none", "unrated"], ["pass", "pass"],
                                         ["fail", "fail"], ["artifact", "artifact"], ["cord", "cord"]);
    for (const [value, label] of options) {
      const opt = document.createElement("option");
      opt.value = value;
      opt.textContent = label;
      select.appendChild(opt);
    }
  }

  function matches(row, f) {
    if (f.sub && !String(row.sub).toLowerCase().includes(f.sub)) return false;
    for (const [key, want] of [["ses", f.ses], ["con", f.con], ["task", f.task], ["st", f.st], ["ms", f.ms]]) {
      if (want && (row[key] === null ? "n/a" : String(row[key])) !== want) return false;
    }
    if (f.rating && (ratingOf(row) || "none") !== f.rating) return false;
    if (f.nmin !== null && !(row.n !== null && row.n >= f.nmin)) return false;
    if (f.nmax !== null && !(row.n !== null && row.n <= f.nmax)) return false;
    return true;
  }

  function readFilters() {
    const num = (id) => ($(id).value === "" ? null : Number($(id).value));
    return {sub: $("f-sub").value.trim().toLowerCase(), ses: $("f-ses").value, con: $("f-con").value,
            task: $("f-task").value, st: $("f-st").value, rating: $("f-rating").value, ms: $("f-ms").value,
            nmin: num("f-nmin"), nmax: num("f-nmax")};
  }

  function compare(a, b) {
    const va = sortKey === "rating" ? ratingOf(ROWS[a]) : ROWS[a][sortKey];
    const vb = sortKey === "rating" ? ratingOf(ROWS[b]) : ROWS[b][sortKey];
    const missingA = va === null || va === "", missingB = vb === null || vb === "";
    if (missingA || missingB) return missingA === missingB ? a - b : (missingA ? 1 : -1);  // n/a last
    const order = NUMERIC.has(sortKey) ? va - vb : COLLATOR.compare(String(va), String(vb));
    return order === 0 ? a - b : order * sortDir;
  }

  function refresh(keepRow) {
    const f = readFilters();
    view = ROWS.map((_, i) => i).filter((i) => matches(ROWS[i], f));
    view.sort(compare);
    const at = keepRow === undefined ? -1 : view.indexOf(keepRow);
    cursor = at >= 0 ? at : 0;
    page = Math.floor(cursor / PAGE_SIZE);
    renderTable();
  }

  // ---------------------------------------------------------------------------------------- table
  function renderHead() {
    const head = $("head");
    head.replaceChildren();
    for (const [key, label] of COLUMNS) {
      const th = document.createElement("th");
      th.textContent = label + (key === sortKey ? (sortDir > 0 ? " \u25b2" : " \u25bc") : "");
      if (key !== "thumb") {
        th.className = "sortable";
        th.addEventListener("click", () => {
          sortDir = key === sortKey ? -sortDir : 1;
          sortKey = key;
          renderHead();
          refresh(view[cursor]);
        });
      }
      head.appendChild(th);
    }
  }

  const fmt = (v) => (v === null || v === undefined ? "n/a" : (typeof v === "number" ? String(+v.toFixed(1)) : v));

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function thumbCell(tr, row) {
    const td = document.createElement("td");
    td.className = "thumb";
    if (row.fig.thumb) {
      const img = document.createElement("img");
      img.loading = "lazy";
      img.decoding = "async";
      img.width = 72;
      img.height = 72;
      img.alt = "";
      img.src = row.fig.thumb;      // only rows of the visible page get an <img>: images on demand
      td.appendChild(img);
    } else {
      td.textContent = "\u2014";
    }
    tr.appendChild(td);
  }

  function renderRow(i, pos) {
    const row = ROWS[i];
    const tr = document.createElement("tr");
    tr.dataset.pos = String(pos);
    if (pos === cursor) tr.className = "selected";
    thumbCell(tr, row);
    for (const key of ["sub", "ses", "acq", "run", "con", "task"]) cell(tr, fmt(row[key]));
    for (const key of ["n", "tot", "max"]) cell(tr, fmt(row[key]), "num");
    cell(tr, fmt(row.new), row.new ? "num new-lesions" : "num");   // new lesions at a follow-up session
    const lv = cell(tr, row.lv || (row.lverr ? "refused" : "n/a"), row.lverr ? "levels-refused" : "");  // --disc-labels
    if (row.lverr) lv.title = row.lverr;                            // the refusal's one line, on hover
    cell(tr, row.ms === "manual" ? "corrected" : fmt(row.ms), "src-" + row.ms);
    cell(tr, row.st, "status-" + row.st);
    const rating = ratingOf(row);
    cell(tr, rating || "\u00b7", "rating rating-" + (rating || "none"));
    const err = document.createElement("div");    // a div: table cells ignore max-width
    err.textContent = row.err || "";
    if (row.err) err.title = row.err;
    cell(tr, "", "err").appendChild(err);
    tr.addEventListener("click", () => { select(pos); openDetail(); });
    return tr;
  }

  function renderTable() {
    const start = page * PAGE_SIZE;
    const body = $("rows");
    body.replaceChildren(...view.slice(start, start + PAGE_SIZE).map((i, k) => renderRow(i, start + k)));
    const pages = Math.max(1, Math.ceil(view.length / PAGE_SIZE));
    $("page-info").textContent = `page ${page + 1} of ${pages} \u00b7 ${view.length} of ${ROWS.length} images`;
    $("prev").disabled = page === 0;
    $("next").disabled = page >= pages - 1;
  }

  function select(pos) {
    if (!view.length) return;
    cursor = Math.max(0, Math.min(view.length - 1, pos));
    const wanted = Math.floor(cursor / PAGE_SIZE);
    if (wanted !== page) {
      page = wanted;
      renderTable();
    } else {
      for (const tr of $("rows").children) tr.classList.toggle("selected", Number(tr.dataset.pos) === cursor);
    }
    const tr = $("rows").querySelector("tr.selected");
    if (tr) tr.scrollIntoView({block: "nearest"});
    if (detailOpen) showDetail();
  }

  function gotoPage(delta) {
    const pages = Math.max(1, Math.ceil(view.length / PAGE_SIZE));
    const next = Math.max(0, Math.min(pages - 1, page + delta));
    if (next !== page) select(next * PAGE_SIZE);
  }

  // --------------------------------------------------------------------------------------- detail
  function title(row) {
    return row.src + " \u00b7 " + row.task;
  }

  function showDetail() {
    const row = ROWS[view[cursor]];
    if (!row) return;
    $("d-title").textContent = title(row);
    const rating = ratingOf(row);
    const vols = row.vols && row.vols.length ? row.vols.map((v) => +v.toFixed(1)).join(", ") : "none";
    $("d-info").textContent = `${cursor + 1} of ${view.length} \u00b7 status ${row.st} \u00b7 ` +
      `${fmt(row.n)} lesion(s), total ${fmt(row.tot)} mm\u00b3 (each: ${vols}) \u00b7 model ` +
      `${row.rel === null ? "n/a" : row.rel}${row.demo ? " (DEMO)" : ""} \u00b7 ${fmt(row.rt)} s` +
      ` \u00b7 rating: ${rating || "none"}`;
    $("d-error").hidden = !row.err;
    $("d-error").textContent = row.err || "";
    $("d-source").hidden = row.ms !== "manual" && row.cs !== "manual" && !row.fix.length;
    $("d-source").textContent = sourceText(row);
    for (const button of document.querySelectorAll("[data-rate]")) {
      button.classList.toggle("active", button.dataset.rate === rating);
    }
    renderLesions(row);
    const overlay = $("d-overlay").checked;
    setImage("d-axial", row.fig[overlay ? "axialoverlay" : "axial"]);
    setImage("d-sagittal", row.fig[overlay ? "sagittaloverlay" : "sagittal"]);
  }

  function sourceText(row) {
    const parts = [];
    if (row.ms === "manual") parts.push("figures from the corrected mask");
    if (row.cs === "manual") parts.push("cord from the corrected cord mask");
    return parts.concat(row.fix).join(" \u00b7 ");
  }

  // Per-lesion figures (the image's lesion table) and, at a follow-up, each lesion's change status.
  const LESION_COLUMNS = [["id", "Lesion"], ["vol", "Volume mm\u00b3"], ["len", "Length mm"], ["wid", "Width mm"],
                          ["dia", "Eq. diameter mm"], ["dmg", "Damage ratio"], ["in", "In cord"], ["st", "Change"]];

  function renderLesions(row) {
    const table = $("d-lesions");
    table.replaceChildren();
    table.hidden = !(row.les && row.les.length);
    if (table.hidden) return;
    const head = document.createElement("tr");
    for (const [, label] of LESION_COLUMNS) {
      const th = document.createElement("th");
      th.textContent = label;
      head.appendChild(th);
    }
    table.appendChild(head);
    for (const les of row.les) {
      const tr = document.createElement("tr");
      if (les.st === "new") tr.className = "lesion-new";
      for (const [key] of LESION_COLUMNS) {
        const text = key === "st" ? (les.st === "new" ? "NEW" : (les.st || "\u2014")) :
          (les[key] === null || les[key] === undefined ? "n/a" : String(+Number(les[key]).toFixed(2)));
        cell(tr, text, key === "st" ? "change" : "num");
      }
      table.appendChild(tr);
    }
  }

  function setImage(id, url) {
    const img = $(id);
    img.hidden = !url;
    if (url) { if (img.getAttribute("src") !== url) img.src = url; } else img.removeAttribute("src");
  }

  function openDetail() {
    if (!view.length) return;
    detailOpen = true;
    $("detail").hidden = false;
    showDetail();
  }

  function closeDetail() {
    detailOpen = false;
    $("detail").hidden = true;
  }

  // ---------------------------------------------------------------------------------------- rating
  function rate(value) {
    const row = ROWS[view[cursor]];
    if (!row) return;
    if (value) ratings[row.rec] = value; else delete ratings[row.rec];
    saveRatings();
    const tr = $("rows").querySelector("tr.selected");
    if (tr) {
      const td = tr.querySelector("td.rating");
      td.textContent = value || "\u00b7";
      td.className = "rating rating-" + (value || "none");
    }
    if (detailOpen) showDetail();
    updateSummary();
  }

  function updateSummary() {
    const counts = {pass: 0, fail: 0, artifact: 0, cord: 0};
    for (const row of ROWS) { const r = ratingOf(row); if (r) counts[r] += 1; }
    $("summary").textContent = `${ROWS.length} images of ${DATA.n_subjects} subjects, ${DATA.n_failed} failed. ` +
      `Rated: ${counts.pass} pass, ${counts.fail} fail, ${counts.artifact} artifact, ${counts.cord} cord, ` +
      `${ROWS.length - counts.pass - counts.fail - counts.artifact - counts.cord} unrated.`;
  }

  // ---------------------------------------------------------------------------------------- export
  function download(name, text, type) {
    const url = URL.createObjectURL(new Blob([text], {type: type}));
    const a = document.createElement("a");
    a.href = url;
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  const tsvField = (v) => (v === null || v === undefined || v === "" ? "n/a" : String(v).replace(/[\t\r\n]+/g, " "));
  const prefixed = (prefix, v) => (v === null ? null : prefix + v);

  function ratingsTsv() {
    const head = ["participant_id", "session_id", "acquisition", "run", "contrast", "task", "source", "status",
                  "lesion_count", "rating"];
    const lines = [head.join("\t")];
    for (const row of ROWS) {
      lines.push([prefixed("sub-", row.sub), prefixed("ses-", row.ses), row.acq, row.run, row.con, row.task,
                  row.src, row.st, row.n, ratingOf(row)].map(tsvField).join("\t"));
    }
    return lines.join("\n") + "\n";
  }

  const yamlString = (v) => JSON.stringify(String(v));   // a JSON string is a valid YAML double-quoted scalar

  // manual_correction.py (spinalcordtoolbox/manual-correction) -config: FILES_LESION / FILES_SEG list image
  // file names (it takes each one's basename, finds sub-/ses- in it, and opens <path-img>/sub/ses/anat/<name>);
  // a key with an empty list makes it stop, so only keys with files are written.
  function toCorrect() {
    const files = {FILES_LESION: new Set(), FILES_SEG: new Set()};
    const reruns = new Set();
    for (const row of ROWS) {
      const rating = ratingOf(row);
      if (!row.img) continue;                       // an unusable record: no image to open
      if (rating === "fail" || rating === "artifact" || row.st === "failed") files[row.key].add(row.img);
      if (rating === "cord") files.FILES_SEG.add(row.img);
      if (row.st === "failed") reruns.add(String(row.sub));
    }
    return {files, reruns: Array.from(reruns).sort(COLLATOR.compare)};
  }

  function failYaml() {
    const {files, reruns} = toCorrect();
    const paths = DATA.paths || {};
    const bids = paths.bids_dir || "BIDS_DIR", out = paths.output_dir || "OUTPUT_DIR";
    const labels = paths.corrections || bids + "/derivatives/labels";
    const lines = [
      "# cordlesion QC: images to correct (rated fail or artifact, or whose run failed: FILES_LESION;",
      "# cord rated wrong: FILES_SEG), a config for spinalcordtoolbox/manual-correction:",
      "#   python manual_correction.py -config qc_fail.yml -path-img " + bids + " \\",
      "#     -path-label " + out + "/group/labels -path-out " + labels + " \\",
      "#     -suffix-files-lesion _lesion-manual -suffix-files-seg _seg-manual",
      "# then the figures from the corrected masks (no model re-run), and the group tables:",
      "#   run.py " + bids + " " + out + " participant --corrections " + labels,
      "#   run.py " + bids + " " + out + " group --corrections " + labels,
    ];
    if (reruns.length) lines.push("# runs that failed (re-run them): run.py ... participant --participant_label " +
                                  reruns.join(" "));
    let any = false;
    for (const key of ["FILES_LESION", "FILES_SEG"]) {
      const names = Array.from(files[key]).sort(COLLATOR.compare);
      if (!names.length) continue;
      any = true;
      lines.push(key + ":");
      for (const name of names) lines.push("  - " + yamlString(name));
    }
    if (!any) lines.push("{}");                    // nothing to correct: an empty mapping, not an empty file
    return lines.join("\n") + "\n";
  }

  // ------------------------------------------------------------------------------------------ plots
  const PLOTS = cordlesionPlots({data: DATA, fmt, title, open: (i) => openRow(i), $});

  function openRow(i) {           // the image of row i, in the detail view (clearing filters that hide it)
    let pos = view.indexOf(i);
    if (pos < 0) { $("filters").reset(); refresh(i); pos = view.indexOf(i); }
    select(pos);
    openDetail();
  }

  // ---------------------------------------------------------------------------------------- events
  function onKey(event) {
    const target = event.target;
    if (target && (target.tagName === "INPUT" && target.type !== "checkbox" || target.tagName === "SELECT")) return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key;
    let handled = true;
    if (key === "ArrowDown" || key === "j") select(cursor + 1);
    else if (key === "ArrowUp" || key === "k") select(cursor - 1);
    else if (key === "ArrowRight") gotoPage(1);
    else if (key === "ArrowLeft") gotoPage(-1);
    else if (key === "Enter") openDetail();
    else if (key === "Escape") closeDetail();
    else if (key === "o") { $("d-overlay").checked = !$("d-overlay").checked; if (detailOpen) showDetail(); }
    else if (key in RATINGS) rate(RATINGS[key]);
    else if (key === "c") rate("");
    else handled = false;
    if (handled) event.preventDefault();
  }

  function init() {
    if (!storageOk) $("storage-warning").hidden = false;
    fillSelect("f-ses", "ses");
    fillSelect("f-con", "con");
    fillSelect("f-task", "task");
    fillSelect("f-st", "st");
    fillSelect("f-rating", "rating");
    fillSelect("f-ms", "ms");
    $("filters").addEventListener("input", () => refresh());
    // "reset" fires before the fields are cleared: refresh once they are, keeping the selected image.
    $("filters").addEventListener("reset", () => setTimeout(() => refresh(view[cursor]), 0));
    $("filters").addEventListener("submit", (e) => e.preventDefault());
    $("prev").addEventListener("click", () => gotoPage(-1));
    $("next").addEventListener("click", () => gotoPage(1));
    $("export-tsv").addEventListener("click", () => download("qc_ratings.tsv", ratingsTsv(),
                                                            "text/tab-separated-values"));
    $("export-fail").addEventListener("click", () => download("qc_fail.yml", failYaml(), "application/yaml"));
    $("show-failed").addEventListener("click", () => { $("filters").reset(); $("f-st").value = "failed";
                                                       setTimeout(() => refresh(), 0); });
    $("d-close").addEventListener("click", closeDetail);
    $("d-prev").addEventListener("click", () => select(cursor - 1));
    $("d-next").addEventListener("click", () => select(cursor + 1));
    $("d-overlay").addEventListener("change", showDetail);
    for (const button of document.querySelectorAll("[data-rate]")) {
      button.addEventListener("click", () => rate(ratingOf(ROWS[view[cursor]]) === button.dataset.rate
                                                  ? "" : button.dataset.rate));
    }
    document.addEventListener("keydown", onKey);
    renderHead();
    PLOTS.renderPlot();
    PLOTS.renderTrajectories();
    PLOTS.renderLevels();
    refresh();
    updateSummary();
  }

  init();
  // For automated checks (headless browser tests) and for users who want to script the page.
  window.cordlesionQC = {ratingsTsv, failYaml, viewSize: () => view.length, openRow};
})();
