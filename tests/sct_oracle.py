"""SCT 7.3 as an oracle: nnunetv2's nnUNetPredictor driven the way SCT 7.3 drives it, and SCT's rules
applied here, each with the SCT file and function it comes from. Test-only (nnunetv2 2.8.1).

SCT 7.3 pins ``nnunetv2-neuropoly==2.6.2`` (``requirements-freeze.txt``), a fork whose
``predict_single_npy_array`` takes ``return_logits_per_fold``; stock nnunetv2 2.8.1 does not. The fork's
per-fold path is rebuilt here from 2.8.1's own pieces, step for step (``_fork_logits``): the same
preprocessing adapter, one ``predict_sliding_window_return_logits`` per fold's weights, and
``convert_predicted_logits_to_segmentation_with_correct_shape`` on each fold (its export and
preprocessing code is that of 2.8.1 up to formatting). One fold's output is thus nnU-Net's segmentation
(argmax of the fold's logits resampled to the input grid, 0 outside the non-zero box) or, with
probabilities, ``(segmentation, softmax probabilities)`` on that grid.

Also here: the test checkpoints in the shapes of the releases (random, "decisive" weights):
``build_lesion_ms_release`` (5 folds, per-fold archives, ``trainer_class.py`` in ``model_fold0.zip``),
``build_spinalcord`` (noisy: many objects), ``build_mp2rage`` (one fold).
"""
from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from bidsapp.demo.modelfolder import (
    PlansSpec,
    clone_shared,
    make_dataset_json,
    make_plans,
    random_state_dict,
    write_model_folder,
)
from bidsapp.engine.network import build_network
from tests.engine_models import PATCH, PLAN_SPACING, image_on_grid, phantom_array, to_sct_model_array

# ---- release shapes ----------------------------------------------------------------------------------
LESION_TRAINER = "nnUNetTrainerDiceCELoss_noSmooth_4000epochs_fromScratch"
LESION_PLANS = "nnUNetResEncUNetL1x1x1_Model2_Plans"
LESION_FOLDER = f"{LESION_TRAINER}__{LESION_PLANS}__3d_fullres"  # r20250909, dataset 902
LESION_DATASET = "Dataset902_msLesionAgnostic"


def _decisive(state: dict, plans: dict, seed: int, fg_quantile: float) -> dict:
    """Random weights whose last layer is scaled so classes win clearly; the bias puts about
    ``1 - fg_quantile`` of a phantom in the foreground (different per seed: the folds disagree)."""
    net = build_network(plans, "3d_fullres", 1, 2)
    net.load_state_dict(state)
    name = [k for k in state if k.startswith("decoder.seg_layers") and k.endswith("weight")][-1]
    prefix = name[: -len("weight")]
    phantom = phantom_array((40, 40, 12), seed=99 + seed)
    x = torch.from_numpy(phantom[None, None].transpose(0, 1, 4, 3, 2).copy())
    x = (x - x.mean()) / x.std()
    with torch.inference_mode():
        feats = net(x[..., : PATCH[0], : PATCH[1], : PATCH[2]])
    diff = (feats[0, 1] - feats[0, 0]).flatten()
    scale = 6.0 / float(diff.std() + 1e-6)
    state = clone_shared(state)
    state[prefix + "weight"] *= scale
    state[prefix + "bias"] *= scale
    shift = float(torch.quantile(diff * scale, fg_quantile))
    state[prefix + "bias"][1] -= shift / 2
    state[prefix + "bias"][0] += shift / 2
    return state


def _states(plans: dict, folds, seed0: int, fg_quantile: float) -> dict:
    return {f: _decisive(random_state_dict(plans, "3d_fullres", 1, 2, seed=seed0 + i), plans, i, fg_quantile)
            for i, f in enumerate(folds)}


def build_lesion_ms_release(dest: Path, trainer_class_py: str) -> tuple[Path, list[Path]]:
    """A 5-fold lesion_ms in the r20250909 layout: the trainer folder (``LESION_FOLDER``, plans
    ``LESION_PLANS``, ResEnc, dataset 902, no ``image_orientation``: SCT's LPI default) and the archives
    ``model_fold{0..4}.zip`` (each: the folder with plans, dataset and one fold; ``trainer_class.py``
    with the text ``trainer_class_py`` at the folder's top in ``model_fold0.zip`` only, as SCT's
    ``load_trainer_class_if_available`` expects it). Returns (folder, archives)."""
    plans = make_plans(PlansSpec(network="ResidualEncoderUNet", patch_size=PATCH, spacing=PLAN_SPACING,
                                 base_features=4, max_features=16, plans_name=LESION_PLANS,
                                 dataset_name=LESION_DATASET))
    ds = make_dataset_json({"background": 0, "lesion": 1}, ["T2w"], None)
    folder = write_model_folder(dest / "folder", plans=plans, dataset_json=ds, trainer=LESION_TRAINER,
                                fold_state_dicts=_states(plans, range(5), 40, 0.5))
    assert folder.name == LESION_FOLDER
    archives = []
    for k in range(5):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for p in sorted(folder.rglob("*")):
                rel = p.relative_to(folder).as_posix()
                if p.is_file() and (not rel.startswith("fold_") or rel.startswith(f"fold_{k}/")):
                    zf.write(p, f"{LESION_FOLDER}/{rel}")
            if k == 0:
                zf.writestr(f"{LESION_FOLDER}/trainer_class.py", trainer_class_py)
        path = dest / f"model_fold{k}.zip"
        path.write_bytes(buf.getvalue())
        archives.append(path)
    return folder, archives


def build_spinalcord(dest: Path) -> Path:
    """A noisy cord model (one fold, ``fold_all``; labels background/sc; ``image_orientation`` "RPI"):
    on a phantom, thousands of 6-connected objects, the largest a few hundred to a thousand voxels.
    Keeping the largest amplifies single-voxel differences where two objects nearly touch (nnU-Net sums
    windows in float16, the engine in float32): on ``sct_image("ali", 7)`` one bridging voxel takes the
    kept object's Dice to 0.993; the tests use phantoms where no such bridge differs."""
    plans = make_plans(PlansSpec(patch_size=PATCH, spacing=PLAN_SPACING, base_features=4, max_features=16,
                                 dataset_name="Dataset101_contrastAgnosticSC"))
    ds = make_dataset_json({"background": 0, "sc": 1}, ["T2w"], "RPI")
    return write_model_folder(dest, plans=plans, dataset_json=ds,
                              fold_state_dicts=_states(plans, ["all"], 70, 0.8))


def build_mp2rage(dest: Path) -> Path:
    """A one-fold (fold 3) MP2RAGE lesion model, PlainConvUNet, old plans format, no image_orientation."""
    plans = make_plans(PlansSpec(patch_size=PATCH, spacing=PLAN_SPACING, base_features=4, max_features=16,
                                 old_format=True, dataset_name="Dataset403_mp2rage"))
    ds = make_dataset_json({"background": 0, "lesion": 1}, ["UNIT1"], None)
    return write_model_folder(dest, plans=plans, dataset_json=ds,
                              trainer="nnUNetTrainer_seg_ms_lesion_mp2rage",
                              fold_state_dicts=_states(plans, [3], 90, 0.6))


# ---- phantoms ------------------------------------------------------------------------------------------
#: non-RAS test images: (shape, zooms, nibabel axis codes). Big enough that the few window-tail voxels
#: where nnU-Net's float16 accumulation rounds differently from the engine's float32 stay under 0.1 %
PHANTOMS = {
    "las": ((64, 56, 20), (0.8, 0.8, 3.0), ("L", "A", "S")),   # the plan spacing: no resampling
    "psr": ((48, 24, 80), (1.0, 2.4, 0.6), ("P", "S", "R")),   # resampled, axes permuted
    "ali": ((56, 64, 20), (0.8, 0.8, 3.0), ("A", "L", "I")),
    "psr_large": ((72, 30, 110), (1.0, 2.4, 0.6), ("P", "S", "R")),  # one-fold models: no vote to smooth
}


def sct_image(case: str, seed: int = 0) -> nib.Nifti1Image:
    """A phantom (``engine_models.phantom_array``) on the grid ``PHANTOMS[case]``, qform and sform set."""
    return image_on_grid(*PHANTOMS[case], seed)


# ---- SCT deepseg/nnunet.py: create_nnunet_from_plans -----------------------------------------------------
def sct_predictor(folder: Path, *, folds=None, tta: bool = False):
    """SCT 7.3 ``deepseg/nnunet.py`` ``create_nnunet_from_plans``: tile_step_size 0.5, Gaussian,
    ``use_mirroring=test_time_aug`` (off by default), ``perform_everything_on_device=False``, every
    ``fold_*`` folder (``fold_all`` alone -> 'all'), ``checkpoint_final.pth`` else ``checkpoint_best.pth``.
    SCT would also execute ``trainer_class.py``; the release's trainer only changes the epoch count, so
    the network built from the plans by nnU-Net's base trainer is the same: trainers unknown to
    nnunetv2 resolve to ``nnUNetTrainer`` here, and the file is never run."""
    from nnunetv2.inference import predict_from_raw_data as prd
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    found = sorted(p.name for p in folder.glob("fold_*"))
    use = "all" if found == ["fold_all"] else [int(f.split("_")[-1]) for f in found]
    if folds is not None:
        use = folds
    checkpoint = next(c for c in ("checkpoint_final.pth", "checkpoint_best.pth")
                      if any(folder.glob(f"fold_*/{c}")))
    pred = prd.nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta,
                               perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                               verbose_preprocessing=False, allow_tqdm=False)
    original = prd.recursive_find_trainer_class_by_name

    def find(name):
        try:
            return original(name)
        except Exception:  # noqa: BLE001 - nnunetv2 raises a bare RuntimeError for unknown trainers
            return nnUNetTrainer

    prd.recursive_find_trainer_class_by_name = find
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred.initialize_from_trained_model_folder(str(folder), use_folds=use, checkpoint_name=checkpoint)
    finally:
        prd.recursive_find_trainer_class_by_name = original
    return pred


def _fork_logits(pred, data: np.ndarray, spacing, per_fold: bool, probabilities: bool):
    """nnunetv2-neuropoly 2.6.2 ``predict_single_npy_array(..., return_logits_per_fold=per_fold)``.

    Per fold: a list with each fold's converted output (probabilities: ``[segs, probs]``). Without it,
    the fork's ``predict_logits_from_preprocessed_data`` starts from the first fold's logits and then
    adds every fold again (the first twice), dividing by the number of folds when there are several:
    for one fold that is twice its logits, which changes no argmax."""
    from nnunetv2.inference.data_iterators import PreprocessAdapterFromNpy
    from nnunetv2.inference.export_prediction import (
        convert_predicted_logits_to_segmentation_with_correct_shape as convert_logits,
    )

    ppa = PreprocessAdapterFromNpy([data], [None], [{"spacing": list(spacing)}], [None], pred.plans_manager,
                                   pred.dataset_json, pred.configuration_manager,
                                   num_threads_in_multithreaded=1, verbose=False)
    dct = next(ppa)
    logits = []
    with torch.inference_mode():
        for params in pred.list_of_parameters:
            pred.network.load_state_dict(params)
            logits.append(pred.predict_sliding_window_return_logits(dct["data"]).to("cpu"))
    if not per_fold:
        total = logits[0] + sum(logits)  # the fork's double-counted first fold
        logits = [total / len(logits) if len(logits) > 1 else total]

    def convert(lg):
        return convert_logits(
            lg, pred.plans_manager, pred.configuration_manager, pred.label_manager, dct["data_properties"],
            return_probabilities=probabilities)

    out = [convert(lg) for lg in logits]
    if not per_fold:
        return out[0]
    if probabilities:
        segs, probs = zip(*out, strict=True)
        return [list(segs), list(probs)]
    return out


# ---- SCT deepseg/inference.py ------------------------------------------------------------------------
def average_nnunet_predictions(pred, probabilities: bool = False) -> np.ndarray:
    """SCT 7.3 ``deepseg/inference.py`` ``average_nnunet_predictions``, as written there."""
    if probabilities:
        _, prob_maps = pred
        ensembled = np.zeros_like(prob_maps[0][1])
        for prob_map in prob_maps:  # per fold: p1 where it beats p0, else 0
            ensembled += np.where(prob_map[1] > prob_map[0], prob_map[1], 0)
        return ensembled / len(prob_maps)
    mean = np.sum(pred, axis=0) / len(pred)
    return mean > 0.5  # spinalcordtoolbox/math.py binarize(data, 0.5): data > 0.5




def segment_nnunet(pred, img: nib.Nifti1Image, *, ensemble: bool, soft: bool) -> np.ndarray:
    """SCT 7.3 ``deepseg/inference.py`` ``segment_nnunet``: reorient to ``dataset.json``
    ``image_orientation`` (else "LPI"; SCT letters name where axes point FROM: the opposite nibabel
    codes), ``data.transpose([2, 1, 0])`` with the spacing reversed (``img_in.dim[6:3:-1]``), the fork's
    ``predict_single_npy_array`` (probabilities when ``soft``; per fold when ``ensemble``), fold average,
    transpose back, reorient back. Returns the array on ``img``'s grid BEFORE the label split."""
    data, spacing, back = _to_model(pred, img)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = _fork_logits(pred, data, spacing, ensemble, soft)
    if ensemble:
        out = average_nnunet_predictions(out, probabilities=soft)
    elif soft:
        out = out[1]  # not reached by SCT's tasks (soft is lesion_ms only, always ensembled)
    return back(np.asarray(out))


def _to_model(pred, img: nib.Nifti1Image):
    """SCT's way into the model's array, in the model's ``image_orientation`` (default LPI)."""
    return to_sct_model_array(img, pred.dataset_json.get("image_orientation", "LPI"))


def keep_largest_object(prediction: np.ndarray) -> np.ndarray:
    """SCT 7.3 ``deepseg_/postprocessing.py`` ``keep_largest_object(x_cOm=None, y_cOm=None)``:
    ``scipy.ndimage.label`` with its default structure (6-connectivity in 3D); the largest object kept
    (ties: the lowest label, i.e. the first met in C order of the image's own array)."""
    labeled, num = ndimage.label(prediction)
    if num > 1:
        prediction = prediction.copy()
        prediction[labeled != (np.bincount(labeled.flat)[1:].argmax() + 1)] = 0
    return prediction


def segment_non_ivadomed_postprocess(data: np.ndarray, *, threshold, keep_largest: bool) -> np.ndarray:
    """SCT 7.3 ``deepseg/inference.py`` ``segment_non_ivadomed`` steps 1-2 (fill holes and remove-small
    are off by default): ``binarize(data, threshold)`` if a threshold is set (every task here: None),
    then for keep-largest ``data[data < 0.001] = 0`` and ``keep_largest_object``."""
    data = np.array(data, copy=True)
    if threshold:
        data = data > threshold
    if keep_largest:
        data[data < 0.001] = 0
        data = keep_largest_object(data)
    return data


def split_labels(pred, data: np.ndarray, soft: bool) -> np.ndarray:
    """SCT 7.3 ``segment_nnunet`` outputs: a single "sc" label is the image itself (``_seg``); the soft
    lesion map is the image itself (``_msLesionSoft``); otherwise one mask per label, ``data == value``
    (here the one foreground label)."""
    labels = {k: v for k, v in pred.dataset_json["labels"].items() if k != "background"}
    if sorted(labels) == ["sc"] or soft:
        return data
    (value,) = labels.values()
    return (data == int(value)).astype(np.uint8)


def sct_deepseg(task: str, pred, img: nib.Nifti1Image, *, soft: bool = False) -> np.ndarray:
    """``sct_deepseg TASK -i IMAGE`` of SCT 7.3 (``scripts/sct_deepseg.py`` ``main``): ``lesion_ms``
    turns on the ensemble (``extra_inference_kwargs['ensemble'] = True``) and takes
    ``-soft-ms-lesion``; ``spinalcord`` forces ``keep_largest=1``; every model here has ``thr`` None
    (``deepseg/models.py``). Returns the output image's data on ``img``'s grid."""
    ensemble = task == "lesion_ms"
    out = segment_nnunet(pred, img, ensemble=ensemble, soft=soft and ensemble)
    out = split_labels(pred, out, soft and ensemble)
    return segment_non_ivadomed_postprocess(out, threshold=None, keep_largest=task == "spinalcord")


def logit_mean(pred, img: nib.Nifti1Image) -> np.ndarray:
    """nnU-Net's own ensemble (mean of the fold logits) through the same SCT orientation path:
    probabilities (C, *img.shape), the "teeth" reference that SCT's vote must differ from."""
    data, spacing, back = _to_model(pred, img)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, probs = pred.predict_single_npy_array(data, {"spacing": spacing}, None, None, True)
    return np.stack([back(p) for p in probs]).astype(np.float32)
