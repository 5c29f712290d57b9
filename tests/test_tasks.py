"""The task table: the config schema, the model manifest and the modules agree with it."""
from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources

import pytest

from bidsapp import group, tasks
from bidsapp.errors import ConfigError


def test_config_schema_accepts_exactly_the_table_names_and_aliases():
    schema = json.loads(resources.files("bidsapp.schemas").joinpath("config.schema.json").read_text())
    assert sorted(schema["$defs"]["task"]["enum"]) == sorted(tasks.accepted_names())


def test_manifest_aliases_and_contrasts_agree_with_the_table():
    manifest = json.loads(resources.files("bidsapp.models").joinpath("manifest.json").read_text())
    offered = {name: spec for model in manifest["models"].values() for name, spec in model["tasks"].items()}
    assert set(offered) == set(tasks.names(routable=True))
    for name, spec in offered.items():
        row = tasks.get(name)
        assert tuple(spec["aliases"]) == row.aliases, name
        # the table may list a deprecated spelling (T2star) or fewer; never a contrast the manifest lacks
        assert set(row.contrasts) - {"T2star"} <= set(spec["contrasts"]), name
        assert (model_format(manifest, name) == "onnx") == (row.engine == tasks.ONNX), name


def model_format(manifest: dict, task: str) -> str:
    return next(m["format"] for m in manifest["models"].values() if task in m["tasks"])


def test_aliases_resolve_and_unknown_names_are_refused():
    assert tasks.canonical("seg_ms_lesion") == "lesion_ms" and tasks.get("legacy_t2s").name == "t2s"
    assert tasks.get(tasks.get("lesion_ms")) is tasks.get("lesion_ms")
    with pytest.raises(ConfigError, match="unknown task 'lesionms'"):
        tasks.get("lesionms")
    assert len(set(tasks.accepted_names())) == len(tasks.accepted_names())  # no alias names two tasks


def test_rows_are_consistent():
    for row in map(tasks.get, tasks.names()):
        assert row.engine in (tasks.NNUNET, tasks.ONNX) and row.models and row.label in ("lesion", "SC")
        assert row.crop.mode in ("never", "optional", "always")
        assert (row.crop.box is not None) == (row.crop.mode != "never"), row.name
        assert row.desc("T2w").isalnum() and row.description and row.summary
        if row.engine == tasks.ONNX or row.crop.mode == "always":
            assert row.models[0] == tasks.CORD_MODEL, row.name  # the cord runs first
        if row.writes_cord:  # lesion_ms writes the cord when the run asks (--cord): spinalcord runs first
            assert row.models_run(crop=False, cord=True)[0] == tasks.CORD_MODEL, row.name
            assert row.models_run(crop=False, cord=False)[0] != tasks.CORD_MODEL or \
                tasks.CORD_MODEL in row.models, row.name
    # one --crop switch: every optional row shares the default
    assert {r.crop.default for r in map(tasks.get, tasks.names()) if r.crop.mode == "optional"} == \
        {tasks.CROP_DEFAULT}


def test_the_group_data_dictionary_lists_every_routable_task():
    levels = {n: tasks.get(n).summary for n in tasks.names(routable=True)}
    assert group.DATA_DICTIONARY["task"]["Levels"] == levels


def test_the_table_imports_nothing_heavy():
    code = ("import sys, bidsapp.tasks, bidsapp.settings; "
            "heavy = ('torch', 'numpy', 'nibabel', 'scipy', 'jsonschema'); "
            "print(sorted(m for m in heavy if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_lesion_tables_and_cord_outputs():
    """Issue 17: the lesion tasks write their lesion table; lesion_ms runs spinalcord for its cord
    output only when the run writes cords (or crops), mp2rage always (its crop needs it)."""
    assert {n for n in tasks.names() if tasks.get(n).lesion_table} == {"lesion_ms", "lesion_ms_mp2rage"}
    ms = tasks.get("lesion_ms")
    assert ms.models_run(crop=False, cord=True) == ("spinalcord", "lesion_ms")
    assert ms.models_run(crop=False, cord=False) == ("lesion_ms",)
    assert ms.models_run(crop=True, cord=False) == ("spinalcord", "lesion_ms")
    assert tasks.get("lesion_ms_mp2rage").models_run(crop=False) == ("spinalcord", "lesion_ms_mp2rage")


def test_two_lesion_tasks_on_one_image_write_its_cord_once():
    """Both lesion tasks write the image's cord mask (issue 17): routed together, the first one does."""
    from pathlib import Path

    from bidsapp import plan

    rel = "sub-01/anat/sub-01_UNIT1.nii.gz"
    image = plan.SourceImage(Path(f"/d/{rel}"), rel, "UNIT1", {"subject": "01", "suffix": "UNIT1"})
    jobs = plan.route([image], [{"match": {"suffix": "UNIT1"}, "tasks": ["lesion_ms_mp2rage", "lesion_ms"]}])
    assert ["cord" in j.outputs for j in jobs] == [True, False]
    assert len({j.outputs["mask"] for j in jobs}) == 2
