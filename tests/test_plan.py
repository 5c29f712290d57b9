"""plan: pybids indexing, filters and routing on a synthetic dataset of empty files (fast, no models)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bidsapp import plan, tasks
from bidsapp.errors import ConfigError

FILES = [
    "sub-01/anat/sub-01_T2w.nii.gz",
    "sub-01/anat/sub-01_T1w.nii.gz",
    "sub-01/anat/sub-01_acq-PSIR_T1w.nii.gz",
    "sub-01/anat/sub-01_acq-STIR_T2w.nii.gz",
    "sub-01/dwi/sub-01_dwi.nii.gz",
    "sub-01/ses-M0/anat/sub-01_ses-M0_acq-sag_run-1_T2starw.nii",
    "sub-01/ses-M0/anat/sub-01_ses-M0_acq-sag_run-2_T2starw.nii",
    "sub-01/ses-M0/anat/sub-01_ses-M0_UNIT1.nii.gz",
    "sub-01/ses-M0/anat/sub-01_ses-M0_inv-1_MP2RAGE.nii.gz",
    "sub-01/ses-M0/anat/sub-01_ses-M0_inv-2_MP2RAGE.nii.gz",
    "sub-01/ses-M0/func/sub-01_ses-M0_task-rest_bold.nii.gz",
    "sub-01/ses-M12/anat/sub-01_ses-M12_ce-gad_rec-norm_T2w.nii.gz",
    "sub-02/anat/sub-02_T2star.nii.gz",
    "sub-02/anat/sub-02_T2w.json",
    "sub-02/anat/.sub-02_T2w.nii.gz",
    "sub-03/anat/sub-03_T2w.nii.gz",
    "derivatives/lesions/sub-01/anat/sub-01_T2w.nii.gz",
    "sourcedata/sub-01/anat/sub-01_T2w.nii.gz",
    "code/sub-01_T2w.nii.gz",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bids")
    (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.10.0"}))
    for rel in FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).touch()
    # A DataLad/git-annex file whose content was not fetched: a dangling symlink.
    os.symlink("../../.git/annex/objects/XX/YY/SHA256E-s1--abc.nii.gz/SHA256E-s1--abc.nii.gz",
               root / "sub-03/anat/sub-03_acq-annex_T2w.nii.gz")
    # A symlink to real content elsewhere (followed).
    elsewhere = tmp_path_factory.mktemp("store") / "blob.nii.gz"
    elsewhere.touch()
    os.symlink(elsewhere, root / "sub-03/anat/sub-03_acq-link_T2w.nii.gz")
    return root


def rels(images):
    return [i.relpath for i in images]


def test_index_finds_lesion_contrasts_only(dataset):
    found = rels(plan.index(dataset))
    assert found == [
        "sub-01/anat/sub-01_T2w.nii.gz",
        "sub-01/anat/sub-01_acq-STIR_T2w.nii.gz",
        "sub-01/ses-M0/anat/sub-01_ses-M0_UNIT1.nii.gz",
        "sub-01/ses-M0/anat/sub-01_ses-M0_acq-sag_run-1_T2starw.nii",
        "sub-01/ses-M0/anat/sub-01_ses-M0_acq-sag_run-2_T2starw.nii",
        "sub-01/ses-M12/anat/sub-01_ses-M12_ce-gad_rec-norm_T2w.nii.gz",
        "sub-02/anat/sub-02_T2star.nii.gz",
        "sub-03/anat/sub-03_T2w.nii.gz",
        "sub-03/anat/sub-03_acq-annex_T2w.nii.gz",
        "sub-03/anat/sub-03_acq-link_T2w.nii.gz",
    ]


def test_index_entities_and_paths(dataset):
    by_rel = {i.relpath: i for i in plan.index(dataset)}
    t2s = by_rel["sub-01/ses-M0/anat/sub-01_ses-M0_acq-sag_run-2_T2starw.nii"]
    assert (t2s.subject, t2s.session, t2s.suffix) == ("01", "M0", "T2starw")
    assert t2s.entities["acquisition"] == "sag" and int(t2s.entities["run"]) == 2
    assert t2s.path == dataset / t2s.relpath
    ce = by_rel["sub-01/ses-M12/anat/sub-01_ses-M12_ce-gad_rec-norm_T2w.nii.gz"]
    assert ce.entities["ceagent"] == "gad" and ce.entities["reconstruction"] == "norm"


@pytest.mark.parametrize("participants, sessions, expected", [
    (["02"], None, ["sub-02/anat/sub-02_T2star.nii.gz"]),
    (["01"], ["M12"], ["sub-01/ses-M12/anat/sub-01_ses-M12_ce-gad_rec-norm_T2w.nii.gz"]),
    (["0"], None, []),  # a prefix of a label must not select it
    (["01", "02"], ["M0"], ["sub-01/ses-M0/anat/sub-01_ses-M0_UNIT1.nii.gz",
                            "sub-01/ses-M0/anat/sub-01_ses-M0_acq-sag_run-1_T2starw.nii",
                            "sub-01/ses-M0/anat/sub-01_ses-M0_acq-sag_run-2_T2starw.nii"]),
])
def test_index_labels(dataset, participants, sessions, expected):
    assert rels(plan.index(dataset, participants=participants, sessions=sessions)) == expected


@pytest.mark.parametrize("filters, expected", [
    ({"acq": "sag", "run": 1}, ["sub-01/ses-M0/anat/sub-01_ses-M0_acq-sag_run-1_T2starw.nii"]),
    ({"T2w": {"acquisition": None}, "subject": "01"},
     ["sub-01/anat/sub-01_T2w.nii.gz", "sub-01/ses-M0/anat/sub-01_ses-M0_UNIT1.nii.gz",
      "sub-01/ses-M0/anat/sub-01_ses-M0_acq-sag_run-1_T2starw.nii",
      "sub-01/ses-M0/anat/sub-01_ses-M0_acq-sag_run-2_T2starw.nii",
      "sub-01/ses-M12/anat/sub-01_ses-M12_ce-gad_rec-norm_T2w.nii.gz"]),
    ({"ce": "*"}, ["sub-01/ses-M12/anat/sub-01_ses-M12_ce-gad_rec-norm_T2w.nii.gz"]),
    ({"session": ["M0", "M12"], "T2starw": {"run": [2]}, "UNIT1": {"subject": "99"}},
     ["sub-01/ses-M0/anat/sub-01_ses-M0_acq-sag_run-2_T2starw.nii",
      "sub-01/ses-M12/anat/sub-01_ses-M12_ce-gad_rec-norm_T2w.nii.gz"]),
])
def test_index_filters(dataset, filters, expected):
    assert rels(plan.index(dataset, filters=plan.load_filters(filters))) == expected


def test_filters_and_labels_intersect(dataset):
    filters = plan.load_filters({"subject": ["01", "02"]})
    only_02 = rels(plan.index(dataset, participants=["02"], filters=filters))
    assert only_02 == ["sub-02/anat/sub-02_T2star.nii.gz"]
    assert rels(plan.index(dataset, participants=["03"], filters=filters)) == []


@pytest.mark.parametrize("bad, where", [
    ({"acqusition": "sag"}, "acqusition"),
    ({"T2w": {"acq": "a_b"}}, "T2w.acq"),
    ({"run": []}, "run"),
    ([1, 2], "<top level>"),
])
def test_bad_filters_name_the_key(bad, where):
    with pytest.raises(ConfigError, match=rf"--bids-filter-file: {where}"):
        plan.load_filters(bad)


def test_default_routing(dataset):
    jobs = plan.route(plan.index(dataset), plan.default_rules())
    tasks = {j.source.relpath: j.task for j in jobs}
    assert tasks["sub-01/ses-M0/anat/sub-01_ses-M0_UNIT1.nii.gz"] == "lesion_ms_mp2rage"
    assert tasks["sub-02/anat/sub-02_T2star.nii.gz"] == "lesion_ms"
    assert tasks["sub-01/anat/sub-01_acq-STIR_T2w.nii.gz"] == "lesion_ms"
    assert len(jobs) == 10
    unit1 = next(j for j in jobs if j.task == "lesion_ms_mp2rage")
    assert unit1.outputs == {
        "mask": "sub-01/ses-M0/anat/sub-01_ses-M0_label-lesion_desc-UNIT1_mask.nii.gz",
        "mask_json": "sub-01/ses-M0/anat/sub-01_ses-M0_label-lesion_desc-UNIT1_mask.json",
        "probseg": "sub-01/ses-M0/anat/sub-01_ses-M0_label-lesion_desc-UNIT1_probseg.nii.gz",
        "probseg_json": "sub-01/ses-M0/anat/sub-01_ses-M0_label-lesion_desc-UNIT1_probseg.json",
        "cord": "sub-01/ses-M0/anat/sub-01_ses-M0_label-SC_desc-UNIT1_mask.nii.gz",
        "cord_json": "sub-01/ses-M0/anat/sub-01_ses-M0_label-SC_desc-UNIT1_mask.json",
    }
    t2s = next(j for j in jobs if j.source.relpath.endswith("run-1_T2starw.nii"))
    assert t2s.outputs["mask"] == ("sub-01/ses-M0/anat/"
                                   "sub-01_ses-M0_acq-sag_run-1_label-lesion_desc-T2starw_mask.nii.gz")
    assert t2s.log == "logs/sub-01/sub-01_ses-M0_acq-sag_run-1_T2starw_desc-T2starw.log"


def test_config_routes_acq_images_and_several_tasks(dataset):
    config = {"rules": [
        {"match": {"suffix": "T1w", "acq": "PSIR"}, "tasks": ["seg_ms_lesion"]},
        {"match": {"suffix": "T2w", "acquisition": None}, "tasks": ["lesion_ms", "t2", "t2_ax"]},
        {"match": {"suffix": "UNIT1"}, "tasks": []},
    ]}
    rules = plan.load_config(config)
    images = plan.index(dataset, suffixes=plan.rule_suffixes(rules))
    jobs = plan.route(images, rules)
    by = {}
    for j in jobs:
        by.setdefault(j.source.relpath, []).append(j)
    psir = by["sub-01/anat/sub-01_acq-PSIR_T1w.nii.gz"]
    assert [j.task for j in psir] == ["lesion_ms"]
    assert psir[0].outputs["mask"] == "sub-01/anat/sub-01_acq-PSIR_label-lesion_desc-T1w_mask.nii.gz"
    assert "sub-01/anat/sub-01_T1w.nii.gz" not in by  # T1w without acq-PSIR: no rule
    t2 = by["sub-01/anat/sub-01_T2w.nii.gz"]
    assert [(j.task, j.outputs["mask"].rsplit("/", 1)[1]) for j in t2] == [
        ("lesion_ms", "sub-01_label-lesion_desc-T2w_mask.nii.gz"),
        ("t2", "sub-01_label-lesion_desc-T2wLegacy_mask.nii.gz"),
        ("t2_ax", "sub-01_label-lesion_desc-T2wLegacyAx_mask.nii.gz")]
    # acq-STIR T2w does not match the user's rule (acquisition must be absent): built-in rule applies
    assert [j.task for j in by["sub-01/anat/sub-01_acq-STIR_T2w.nii.gz"]] == ["lesion_ms"]
    assert "sub-01/ses-M0/anat/sub-01_ses-M0_UNIT1.nii.gz" not in by  # tasks [] skips


def test_config_without_defaults():
    rules = plan.load_config({"rules": [{"match": {"suffix": "T2w"}, "tasks": ["t2"]}],
                              "use_default_rules": False})
    assert rules == [{"match": {"suffix": "T2w"}, "tasks": ["t2"]}]
    assert plan.rule_suffixes(rules) == ["T2w"]


@pytest.mark.parametrize("bad, where", [
    ({"rules": [{"match": {"suffix": "T2w"}, "tasks": ["lesion_mss"]}]}, r"rules\[0\].tasks\[0\]"),
    ({"rules": [{"match": {"suffix": "T2w", "acqq": "x"}, "tasks": []}]}, r"rules\[0\].match.acqq"),
    ({"rules": [{"match": {"acq": "x"}, "tasks": []}]}, r"rules\[0\].match"),
    ({"rulez": []}, r"<top level>: Additional properties are not allowed \('rulez'"),
    ({"rules": [{"match": {"suffix": "T2w"}}]}, r"rules\[0\]"),
])
def test_bad_config_names_the_key(bad, where):
    with pytest.raises(ConfigError, match=rf"^cfg.json: {where}"):
        plan.load_config(bad, "cfg.json")


@pytest.mark.parametrize("suffix", ["T2w", "T2starw", "UNIT1"])
def test_every_task_on_one_image_writes_its_own_files(suffix):
    rel = f"sub-01/anat/sub-01_{suffix}.nii.gz"
    image = plan.SourceImage(Path(f"/d/{rel}"), rel, suffix, {"subject": "01", "suffix": suffix})
    every = list(tasks.names(routable=True))
    jobs = plan.route([image], [{"match": {"suffix": suffix}, "tasks": every}])
    assert [j.task for j in jobs] == every
    written = [p for j in jobs for p in [*j.outputs.values(), j.log, j.names.settings, j.names.qc_record,
                                         *j.names.figures.values()]]
    assert len(written) == len(set(written))
    assert len({j.outputs["mask"] for j in jobs}) == len({j.log for j in jobs}) == len(every)


def test_a_cord_mask_another_job_writes_is_left_to_it():
    rel = "sub-01/anat/sub-01_UNIT1.nii.gz"
    image = plan.SourceImage(Path(f"/d/{rel}"), rel, "UNIT1", {"subject": "01", "suffix": "UNIT1"})
    mp2rage, cord = plan.route([image], [{"match": {"suffix": "UNIT1"}, "tasks": ["lesion_ms_mp2rage",
                                                                                   "spinalcord"]}])
    assert "cord" not in mp2rage.outputs and mp2rage.names.cord == cord.outputs["mask"]
    alone, = plan.route([image], plan.default_rules())
    assert alone.outputs["cord"] == cord.outputs["mask"]  # alone, the MP2RAGE job writes it (as before)


def test_default_rules_come_from_the_task_table():
    assert plan.default_rules() == [{"match": {"suffix": s}, "tasks": [t]} for s, t in (
        ("T2w", "lesion_ms"), ("T2starw", "lesion_ms"), ("T2star", "lesion_ms"),
        ("UNIT1", "lesion_ms_mp2rage"))]


def test_route_is_pure_and_ordered():
    images = [plan.SourceImage(Path(f"/d/{r}"), r, "T2w", {"subject": "01", "suffix": "T2w"})
              for r in ("sub-01/anat/sub-01_run-1_T2w.nii", "sub-01/anat/sub-01_run-2_T2w.nii")]
    rules = plan.default_rules()
    first, second = plan.route(images, rules), plan.route(images, rules)
    assert first == second and [j.source.relpath for j in first] == [i.relpath for i in images]
    assert first[0].outputs["mask"] == "sub-01/anat/sub-01_run-1_label-lesion_desc-T2w_mask.nii.gz"


def test_strip_prefix():
    assert plan.strip_prefix(["sub-01", "02", "sub-01"], "sub-") == ["01", "02"]
    assert plan.strip_prefix(None, "sub-") is None


def test_describe_dataset(dataset):
    text = plan.describe_dataset(dataset)
    assert "sub-01, sub-02, sub-03" in text and "ses-M0, ses-M12" in text
    assert "MP2RAGE" in text and "T2starw" in text and "UNIT1" in text
