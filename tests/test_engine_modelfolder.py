"""Model folders: what loads, and one clear ModelError naming the file for what does not."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from engine_models import build_folder

from bidsapp.demo.modelfolder import (
    PlansSpec,
    make_dataset_json,
    make_plans,
    random_state_dict,
    write_model_folder,
)
from bidsapp.engine import NnUNetModel, NnUNetPredictor
from bidsapp.engine.network import build_network
from bidsapp.errors import ModelError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_folder(tmp_path_factory.mktemp("mf"), "ResidualEncoderUNet", folds=(0, 1))


@pytest.fixture
def copy(folder, tmp_path):
    dest = tmp_path / folder.name
    shutil.copytree(folder, dest)
    return dest


def test_load_reads_everything(folder):
    m = NnUNetModel.load(folder)
    assert m.folds == [0, 1] and m.configuration == "3d_fullres"
    assert m.labels == {"background": 0, "lesion": 1} and m.num_classes == 2 and m.num_input_channels == 1
    assert m.checkpoint_paths[1] == folder / "fold_1" / "checkpoint_final.pth"
    assert m.mirroring_axes == (0, 1, 2) and m.trainer_name == "nnUNetTrainer"
    assert NnUNetModel.load(folder, folds=[1]).folds == [1]
    assert NnUNetModel.load(folder.parent).folder == folder  # the parent of one trainer folder works too


def test_best_checkpoint_when_final_missing(copy):
    (copy / "fold_1" / "checkpoint_final.pth").rename(copy / "fold_1" / "checkpoint_best.pth")
    m = NnUNetModel.load(copy)
    assert m.checkpoint_paths[1].name == "checkpoint_best.pth"
    assert m.checkpoint_paths[0].name == "checkpoint_final.pth"


@pytest.mark.parametrize("break_it,expect", [
    (lambda f: (f / "plans.json").unlink(), "plans.json: missing"),
    (lambda f: (f / "dataset.json").write_text("{not json"), "dataset.json: cannot read JSON"),
    (lambda f: (f / "fold_0" / "checkpoint_final.pth").write_bytes(b"\x00garbage" * 10),
     "fold_0/checkpoint_final.pth: cannot read checkpoint"),
    (lambda f: torch.save({"weights": {}}, f / "fold_0" / "checkpoint_final.pth"),
     "fold_0/checkpoint_final.pth: not an nnU-Net checkpoint"),
])
def test_broken_folders(copy, break_it, expect):
    break_it(copy)
    with pytest.raises(ModelError, match=expect.replace("/", r"/")) as info:
        NnUNetModel.load(copy)
    assert "\n" not in str(info.value) and str(copy) in str(info.value)


def test_missing_fold_names_the_file(folder):
    with pytest.raises(ModelError, match=r"fold_4/checkpoint_final.pth: missing"):
        NnUNetModel.load(folder, folds=[0, 4])


def test_missing_folder(tmp_path):
    with pytest.raises(ModelError, match="model folder not found"):
        NnUNetModel.load(tmp_path / "nope")
    with pytest.raises(ModelError, match="plans.json: missing"):
        NnUNetModel.load(tmp_path)


class _Payload:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_checkpoint_code_is_never_executed(copy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"network_weights": {}, "boom": _Payload()}, copy / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(ModelError, match="cannot read checkpoint"):
        NnUNetModel.load(copy)
    assert not (tmp_path / "PWNED").exists()


def test_weights_that_do_not_fit_the_plans(copy):
    other = make_plans(PlansSpec(network="ResidualEncoderUNet", patch_size=(8, 32, 32), base_features=8,
                                 max_features=16))
    wrong = random_state_dict(other, "3d_fullres", 1, 2)
    write_model_folder(copy.parent, plans=json.loads((copy / "plans.json").read_text()),
                       dataset_json=json.loads((copy / "dataset.json").read_text()),
                       fold_state_dicts={0: wrong})
    with pytest.raises(ModelError, match=r"fold_0/checkpoint_final.pth: weights do not fit plans.json"):
        NnUNetPredictor(NnUNetModel.load(copy, folds=[0]))


def test_unsupported_network_class_is_refused(copy):
    plans = json.loads((copy / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "evil.module.Net"
    (copy / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ModelError, match="unsupported network class 'evil.module.Net'"):
        NnUNetModel.load(copy)


def test_region_labels_are_refused(copy):
    ds = make_dataset_json({"background": 0, "lesion": 1}, ["T2w"])
    ds["labels"]["lesion"] = [1, 2]
    (copy / "dataset.json").write_text(json.dumps(ds))
    with pytest.raises(ModelError, match="region-based labels"):
        NnUNetModel.load(copy)


def test_old_and_new_plan_formats_build_the_same_network():
    kw = dict(patch_size=(16, 64, 48), spacing=(3.0, 0.7, 0.7), base_features=8, max_features=64)
    for net in ("PlainConvUNet", "ResidualEncoderUNet"):
        new = build_network(make_plans(PlansSpec(network=net, **kw)), "3d_fullres", 1, 2)
        old = build_network(make_plans(PlansSpec(network=net, old_format=True, **kw)), "3d_fullres", 1, 2)
        assert {k: v.shape for k, v in new.state_dict().items()} == \
            {k: v.shape for k, v in old.state_dict().items()}


def test_known_class_name_in_a_foreign_module_is_refused(copy):
    plans = json.loads((copy / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["nonlin"] = "evil.LeakyReLU"
    (copy / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ModelError, match="unsupported nonlin 'evil.LeakyReLU'"):
        NnUNetModel.load(copy)
