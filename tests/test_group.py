"""Group level from phantom runs: lesions.tsv and the QC page checked against the masks, escaping,
and the page driven in headless Chromium (paging, rating keys, export, no console errors)."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from scipy import ndimage

from bidsapp.demo.phantom import Grid, make_anatomy, make_phantom
from bidsapp.group import COLUMNS, DATA_DICTIONARY, run_group
from bidsapp.qc import QcJob, qc_names, write_image_qc
from bidsapp.qc.index import PAGE_SIZE
from tests.components import executable, missing

EVIL = "<img src=x onerror=alert(1)>"                 # a label that must stay text (no '/' in a file name)
EVIL_ERROR = "bad.nii.gz: </script><script>alert(2)</script> & <b>bold</b>"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

# (subject, session, acq, run, contrast, task, seed, lesions?)
CASES = [
    ("01", "M0", "sag", None, "T2w", "lesion_ms", 11, True),
    ("01", "M12", "sag", None, "T2w", "lesion_ms", 12, True),
    ("02", None, None, "01", "T2starw", "lesion_ms", 13, True),
    ("02", None, None, "02", "T2starw", "lesion_ms", 14, True),
    ("03", None, None, None, "UNIT1", "lesion_ms_mp2rage", 15, True),
    ("04", None, None, None, "T2w", "lesion_ms", 16, False),          # healthy control
    (EVIL, None, None, None, "T2w", "lesion_ms", 17, True),
]


def _source(sub, ses, acq, run, contrast) -> str:
    parts = [f"sub-{sub}"] + ([f"ses-{ses}"] if ses else [])
    name = "_".join(parts + ([f"acq-{acq}"] if acq else []) + ([f"run-{run}"] if run else []) + [contrast])
    return "/".join(parts + ["anat", name + ".nii.gz"])


def _truth(mask: nib.Nifti1Image) -> tuple[int, float, float]:
    """Count, total and largest volume recomputed here: 18-connected labels (SCT 7.3), voxel volume from the
    affine."""
    data = np.asarray(mask.dataobj) > 0
    labels, n = ndimage.label(data, structure=ndimage.generate_binary_structure(3, 2))
    voxel = abs(np.linalg.det(mask.affine[:3, :3]))
    sizes = np.bincount(labels.ravel())[1:]
    return n, float(data.sum() * voxel), float(sizes.max() * voxel) if n else 0.0


@pytest.fixture(scope="module")
def group_out(tmp_path_factory):
    """output_dir with QC records written by the participant-level QC writer on phantoms, one failed
    image, one corrupt record; then the group level run once. Returns (output_dir, truth by source)."""
    out = tmp_path_factory.mktemp("group") / "derivatives" / "cordlesion"
    truth: dict[str, tuple[int, float, float]] = {}
    for sub, ses, acq, run, contrast, task, seed, lesions in CASES:
        rng = np.random.default_rng(seed)
        anatomy = make_anatomy(rng, n_lesions=3 if lesions else 0)
        ph = make_phantom(contrast, rng=rng, anatomy=anatomy, grid=Grid(voxel_size=(0.8, 0.8, 1.6)))
        src = _source(sub, ses, acq, run, contrast)
        write_image_qc(out, QcJob(src, task, "demo-1", True, runtime_s=1.5), image=ph.image, mask=ph.lesion,
                       cord=ph.cord)
        truth[src] = _truth(ph.lesion)
    failed = _source("05", None, None, None, "T2w")
    write_image_qc(out, QcJob(failed, "lesion_ms", "demo-1", True, runtime_s=0.1), error=EVIL_ERROR)
    corrupt = out / qc_names(_source("06", None, None, None, "T2w"), "lesion_ms")["record"]
    corrupt.parent.mkdir(parents=True)
    corrupt.write_text('{"status": "ok", ')
    (out / "dataset_description.json").write_text(json.dumps({"Name": "Phantom <study> & co"}))
    assert run_group(out) == 0
    return out, truth, failed


def _tsv(out: Path) -> list[dict[str, str]]:
    with open(out / "group/lesions.tsv", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _embedded(out: Path) -> dict:
    html = (out / "qc/index.html").read_text()
    match = re.search(r'<script type="application/json" id="qc-data">(.*?)</script>', html, re.S)
    return json.loads(match.group(1))


def test_lesion_table_matches_the_masks(group_out):
    out, truth, failed = group_out
    rows = _tsv(out)
    assert list(rows[0]) == list(COLUMNS)
    assert len(rows) == len(CASES) + 2                                   # + failed + corrupt record
    by_source = {r["source"]: r for r in rows}
    for src, (n, total, largest) in truth.items():
        row = by_source[src]
        assert row["status"] == "ok"
        assert int(row["lesion_count"]) == n
        assert float(row["total_lesion_volume_mm3"]) == pytest.approx(total, abs=1e-3)
        assert float(row["largest_lesion_mm3"]) == pytest.approx(largest, abs=1e-3)
    assert sum(truth[s][0] > 0 for s in truth) == len(CASES) - 1          # the control has none
    first = by_source[_source("01", "M0", "sag", None, "T2w")]
    assert (first["participant_id"], first["session_id"], first["acquisition"], first["run"]) == \
        ("sub-01", "ses-M0", "sag", "n/a")
    run2 = by_source[_source("02", None, None, "02", "T2starw")]
    assert (run2["session_id"], run2["run"], run2["contrast"]) == ("n/a", "02", "T2starw")
    bad = by_source[failed]
    assert (bad["status"], bad["lesion_count"], bad["total_lesion_volume_mm3"], bad["error"]) == \
        ("failed", "n/a", "n/a", EVIL_ERROR)
    corrupt = [r for r in rows if r["participant_id"] == "sub-06"][0]
    assert corrupt["status"] == "failed" and "unusable QC record" in corrupt["error"]
    assert set(json.loads((out / "group/lesions.json").read_text())) == set(COLUMNS) == set(DATA_DICTIONARY)


def test_page_data_matches_the_masks_and_links_are_relative(group_out):
    out, truth, _ = group_out
    data = _embedded(out)
    assert len(data["rows"]) == len(CASES) + 2 and data["n_failed"] == 2
    for row in data["rows"]:
        if row["src"] in truth:
            n, total, _ = truth[row["src"]]
            assert (row["n"], row["tot"]) == (n, pytest.approx(total, abs=1e-3))
            assert set(row["fig"]) == {"axial", "axialoverlay", "sagittal", "sagittaloverlay", "thumb"}
        for url in row["fig"].values():
            assert url.startswith("../sub-") and "//" not in url
            assert (out / "qc" / url.replace("%3C", "<").replace("%3E", ">").replace("%20", " ")
                    .replace("%3D", "=").replace("%28", "(").replace("%29", ")")).resolve().is_file()


def test_dataset_strings_are_escaped(group_out):
    out, _, _ = group_out
    html = (out / "qc/index.html").read_text()
    assert EVIL not in html and "<b>bold</b>" not in html and "alert(2)</script>" not in html
    assert html.count("<script") == 2                                   # the data block and our code
    assert "Phantom &lt;study&gt; &amp; co" in html
    data = _embedded(out)
    assert any(r["sub"] == EVIL for r in data["rows"])                   # text survives the round trip
    assert any(r["err"] == EVIL_ERROR for r in data["rows"])


def test_no_records_is_exit_66(tmp_path):
    assert run_group(tmp_path) == 66
    assert not (tmp_path / "qc").exists()


# ------------------------------------------------------------------------------- headless Chromium
@pytest.fixture(scope="module")
def browser():
    """Debian's chromium driven by Playwright (its own browser download is not possible here): skipped
    with the reason on a user's machine without it, a failure under CI (tests/components.py)."""
    chromium = executable("chromium")
    if chromium is None:
        missing("chromium", "not found on PATH (.ci/run installs Debian's chromium)")
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        missing("playwright", "not installed (requirements-test.txt)")
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        except Error as exc:
            missing("chromium", f"{chromium} did not start: {str(exc).strip()[-600:]}")
        yield b
        b.close()


@pytest.fixture(scope="module")
def big_out(group_out, tmp_path_factory):
    """The phantom output plus enough copies of its records to need three pages, moved elsewhere
    after the group level ran (links must survive the move)."""
    src_out, _, _ = group_out
    out = tmp_path_factory.mktemp("big") / "out"
    shutil.copytree(src_out, out)
    template = json.loads((out / qc_names(_source(*CASES[0][:5]), "lesion_ms")["record"]).read_text())
    for i in range(2 * PAGE_SIZE + 5):
        rec = json.loads(json.dumps(template))
        rec["entities"]["sub"] = f"x{i:03d}"
        rec["source"] = f"sub-x{i:03d}/anat/sub-x{i:03d}_T2w.nii.gz"
        names = qc_names(rec["source"], "lesion_ms")
        (out / names["record"]).parent.mkdir(parents=True)
        for view in list(rec["figures"]):
            os.link(out / rec["figures"][view], out / names[view])      # same pictures, no copying
            rec["figures"][view] = names[view]
        (out / names["record"]).write_text(json.dumps(rec))
    assert run_group(out) == 0
    moved = out.parent / "moved elsewhere"
    out.rename(moved)
    return moved


def _open(browser, out: Path):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    page.on("request", lambda r: problems.append(f"network: {r.url}")
            if not r.url.startswith(("file:", "blob:", "data:")) else None)
    page.goto((out / "qc/index.html").as_uri())
    return context, page, problems


def _wait_until(page, js_function: str, timeout_s: float = 15.0) -> None:
    """Poll a JS predicate with page.evaluate.

    Not page.wait_for_function: once its first check fails, Playwright re-evaluates the predicate
    with eval() inside the page, which the page's own Content Security Policy (rightly) forbids.
    """
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(js_function):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {js_function}")
        page.wait_for_timeout(50)


def _listed(page) -> list[str]:
    """Subject labels of every row, page after page."""
    seen = []
    while True:
        seen += page.locator("#rows tr td:nth-child(2)").all_text_contents()
        if page.locator("#next").is_disabled():
            return seen
        page.keyboard.press("ArrowRight")


def test_page_lists_every_image_rates_and_exports(browser, big_out, tmp_path):
    context, page, problems = _open(browser, big_out)
    data = _embedded(big_out)
    n = len(data["rows"])
    assert page.locator("#rows tr").count() == PAGE_SIZE                 # paged
    # Thumbnails only for this page's rows; the two failed images (05, 06) sort onto page 1 and have none.
    assert page.locator("#rows img[loading=lazy]").count() == PAGE_SIZE - 2
    listed = _listed(page)
    assert len(listed) == n and sorted(listed) == sorted(r["sub"] for r in data["rows"])
    assert EVIL in listed                                                # shown as text, not markup

    page.locator("#f-st").select_option("failed")
    assert page.locator("#rows tr").count() == 2
    page.locator("#f-reset").click()
    _wait_until(page, f"() => document.querySelectorAll('#rows tr').length === {PAGE_SIZE}")

    # Keyboard rating of the first three rows.
    first3 = [(page.locator("#rows tr").nth(i).locator("td").nth(1).text_content(),
               page.locator("#rows tr").nth(i).locator("td").nth(2).text_content()) for i in range(3)]
    page.locator("#rows tr").first.click()                               # selects it, opens the detail
    page.keyboard.press("Escape")
    for key in ("p", "ArrowDown", "f", "ArrowDown", "a"):
        page.keyboard.press(key)
    assert page.locator("#rows td.rating").all_text_contents()[:3] == ["pass", "fail", "artifact"]
    page.reload()
    assert page.locator("#rows td.rating").all_text_contents()[:3] == ["pass", "fail", "artifact"]  # stored

    # Detail view with the overlay toggle; its pictures load through the relative links.
    page.keyboard.press("Enter")
    axial = page.locator("#d-axial")
    assert axial.get_attribute("src").endswith("_axialoverlay.png")
    _wait_until(page, "() => document.getElementById('d-axial').naturalWidth > 0")
    page.keyboard.press("o")
    assert axial.get_attribute("src").endswith("_axial.png")
    page.screenshot(path=str(tmp_path / "detail.png"))
    page.keyboard.press("Escape")
    _wait_until(page, "() => Array.from(document.querySelectorAll('#rows img')).slice(0, 3)"
                      ".every(i => i.complete && i.naturalWidth > 0)")

    with page.expect_download() as dl:
        page.locator("#export-tsv").click()
    tsv = Path(dl.value.path()).read_text().splitlines()
    assert dl.value.suggested_filename == "qc_ratings.tsv" and len(tsv) == n + 1
    rated = {(f[0], f[1]): f[-1] for f in (line.split("\t") for line in tsv[1:]) if f[-1] != "n/a"}
    expected = {(f"sub-{s}", "n/a" if ses == "n/a" else f"ses-{ses}"): r
                for (s, ses), r in zip(first3, ("pass", "fail", "artifact"), strict=True)}
    assert rated == expected
    with page.expect_download() as dl:
        page.locator("#export-fail").click()
    yml = Path(dl.value.path()).read_text()
    assert dl.value.suggested_filename == "qc_fail.yml"
    # a manual_correction.py config (tests/test_qc_corrections.py checks it against that parser): the rows
    # rated fail and artifact and the failed run with an image (sub-05; sub-06's record is unusable)
    config = yaml.safe_load(yml)
    assert set(config) == {"FILES_LESION"} and len(config["FILES_LESION"]) == 3
    assert "sub-05_T2w.nii.gz" in config["FILES_LESION"] and "--participant_label 05" in yml
    page.screenshot(path=str(tmp_path / "index.png"), full_page=False)
    context.close()
    assert problems == []


# ------------------------------------------------------------------------- on the real participant run
def test_group_level_on_the_participant_run(participant_run, phantom_bids, tmp_path):
    """`run.py bids_dir output_dir group` on the shared participant-level run (copied: it is read-only):
    one row per job, counts and volumes equal to those recomputed from the written masks."""
    from bidsapp.cli import main

    out = tmp_path / "out"
    shutil.copytree(participant_run, out)
    assert main([str(phantom_bids), str(out), "group", "--skip_bids_validator"]) == 0
    rows = _tsv(out)
    records = [json.loads(p.read_text()) for p in out.glob("sub-*/figures/*_qc.json")]
    masks = sorted(out.glob("sub-*/**/anat/*_label-lesion_*_mask.nii.gz"))
    assert len(rows) == len(records) and len(masks) > 0
    by_mask = {r["outputs"].get("mask"): r for r in records if r["status"] == "ok"}
    assert {m.relative_to(out).as_posix() for m in masks} <= set(by_mask)   # every lesion mask has a record
    rows_by_source = {(r["source"], r["task"]): r for r in rows}
    for mask in masks:
        rec = by_mask[mask.relative_to(out).as_posix()]
        n, total, largest = _truth(nib.load(mask))
        row = rows_by_source[(rec["source"], rec["task"])]
        assert int(row["lesion_count"]) == n
        assert float(row["total_lesion_volume_mm3"]) == pytest.approx(total, abs=2e-3)
        assert float(row["largest_lesion_mm3"]) == pytest.approx(largest, abs=2e-3)
        assert all((out / rec["figures"][v]).is_file() for v in ("axialoverlay", "sagittaloverlay", "thumb"))
    assert len(_embedded(out)["rows"]) == len(records)
