"""Train the demo legacy lesion models (``t2``, ``t2_ax``, ``t2s``) on phantoms and export them to ONNX.

The exported files have the official models' signature: input ``input_1`` float32 ``(N, 1, 48, 48, 48)``,
output ``predictions`` float32 ``(N, 1, 48, 48, 48)`` = sigmoid lesion probability. Training data go
through exactly the inference preprocessing of :mod:`bidsapp.legacy` (RPI, 0.5 mm in-plane,
centreline crop from the ground-truth cord, percentile standardisation, 0.5 mm iso, fixed z-score),
so the models learn what the pipeline hands them. The networks are small 3D U-Nets (a few hundred
kB each); they are demo models for trying the app and for tests, not for research.

    python -m bidsapp.demo.train_legacy [--out bidsapp/models/demo/legacy] [--tasks t2 t2_ax t2s]
        [--steps 500] [--finetune-steps 250] [--seed 0] [--threads 2]

After export each file is checked against its torch network (max abs difference <= 1e-4).
"""
from __future__ import annotations

import argparse
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import legacy
from .phantom import AXIAL_ORIENTATIONS, SAGITTAL_ORIENTATIONS, make_anatomy, make_phantom

log = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = "input_1", "predictions"   # the names SCT feeds and reads (deepseg_/onnx.py)
PATCH = (legacy.CROP_SIZE,) * 3
# training windows: 40x40 in-plane around the cord, 16 slices (4x cheaper than 48^3 on a CPU); the net is
# fully convolutional without normalisation layers, so it runs unchanged on the 48^3 inference patches
TRAIN_Z, TRAIN_XY = 16, 40
OPSET = 17
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "models" / "demo" / "legacy"
FEATURES = (6, 12, 24)

#: what each demo model is trained on: phantom contrast, acquisitions (orientations, voxel sizes mm)
RECIPES: dict[str, dict] = {
    "t2": {"contrast": "T2w", "orientations": SAGITTAL_ORIENTATIONS,
           "voxel_sizes": ((0.8, 0.8, 0.8), (0.7, 0.7, 0.7), (1.0, 1.0, 1.0))},
    "t2_ax": {"contrast": "T2w", "orientations": AXIAL_ORIENTATIONS,
              "voxel_sizes": ((0.5, 0.5, 3.0), (0.5, 0.5, 4.0), (0.6, 0.6, 5.0))},
    "t2s": {"contrast": "T2starw", "orientations": AXIAL_ORIENTATIONS,
            "voxel_sizes": ((0.5, 0.5, 3.0), (0.5, 0.5, 4.0), (0.6, 0.6, 5.0))},
}


# ---------------------------------------------------------------- network

def _block(cin: int, cout: int) -> nn.Sequential:
    # no normalisation layer: the input is already z-scored with fixed statistics, a plain net does
    # not depend on the patch size (training uses shorter windows), and every weight exports under
    # its state-dict name (the exporter would fold BatchNorm and merge identical InstanceNorm weights)
    return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1), nn.LeakyReLU(0.01),
                         nn.Conv3d(cout, cout, 3, padding=1), nn.LeakyReLU(0.01))


class LesionUNet(nn.Module):
    """Small 3D U-Net, channels first, sigmoid output (the official models end in a sigmoid too)."""

    def __init__(self, features: Sequence[int] = FEATURES) -> None:
        super().__init__()
        f = list(features)
        self.down = nn.ModuleList([_block(1, f[0])] + [_block(f[i], f[i + 1]) for i in range(len(f) - 1)])
        self.up = nn.ModuleList([nn.ConvTranspose3d(f[i + 1], f[i], 2, stride=2) for i in range(len(f) - 1)])
        self.merge = nn.ModuleList([_block(2 * f[i], f[i]) for i in range(len(f) - 1)])
        self.head = nn.Conv3d(f[0], 1, 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else nn.functional.max_pool3d(x, 2))
            skips.append(x)
        for i in reversed(range(len(self.up))):
            x = self.merge[i](torch.cat([skips[i], self.up[i](x)], dim=1))
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


# ---------------------------------------------------------------- export and parity

def export_onnx(net: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Export ``net`` with the official signature (dynamic batch) and write ``metadata`` into the file."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = net.eval()
    dummy = torch.zeros((1, 1, *PATCH))
    tmp = path.with_suffix(".tmp.onnx")
    # the TorchScript exporter (dynamo=False): the torch.export one needs onnxscript, which we do not ship
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (dummy,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)
    model = onnx.load(str(tmp))
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    tmp.unlink()
    return path


def net_from_onnx(path: str | Path, features: Sequence[int] = FEATURES) -> LesionUNet:
    """Rebuild the torch network from an exported file's weights (initialisers named like the state dict)."""
    import onnx
    from onnx import numpy_helper

    net = LesionUNet(features)
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    state = net.state_dict()
    missing = [k for k in state if k not in weights]
    if missing:
        raise ValueError(f"{path}: no weights for {missing[:3]} (not a LesionUNet{tuple(features)} export)")
    net.load_state_dict({k: torch.from_numpy(weights[k].copy()) for k in state})
    return net.eval()


def parity(net: nn.Module, path: str | Path, batch: np.ndarray) -> float:
    """Max abs difference between ``net`` and the ONNX file on ``batch`` (N, 1, 48, 48, 48)."""
    from ..engine.onnx import OnnxModel

    with torch.inference_mode():
        expected = net.eval()(torch.from_numpy(np.asarray(batch, np.float32))).numpy()
    return float(np.abs(OnnxModel(path, device="cpu").run(batch) - expected).max())


# ---------------------------------------------------------------- training data

def preprocess_case(image, cord, lesion, task: str) -> tuple[np.ndarray, np.ndarray]:
    """One phantom -> (standardised 0.5 mm iso crop, lesion target on it), both ``(48, 48, Z)``.

    The image goes through :func:`bidsapp.legacy.prepare`, the same code inference uses; the lesion
    mask follows it through the same crop and resamplings (linear, > 0.5).
    """
    prep = legacy.prepare(np.asanyarray(image.dataobj), image.affine, np.asanyarray(cord.dataobj), task)
    lesion_rpi = prep.reorientation.apply(np.asanyarray(lesion.dataobj).astype(np.float32))
    lesion_res = legacy.rescale_grid(lesion_rpi, prep.res_shape)
    lesion_crop, _ = legacy.crop_around_centerline(lesion_res, prep.centerline)
    target = legacy.rescale_grid(lesion_crop, prep.crop_iso.shape) > 0.5
    return prep.crop_iso, target.astype(np.float32)


def make_cases(task: str, n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` random phantoms of the task's recipe, preprocessed (most with 1-4 lesions, some none)."""
    recipe, rng = RECIPES[task], np.random.default_rng(seed)
    cases = []
    for _ in range(n):
        anatomy = make_anatomy(rng, n_lesions=int(rng.integers(1, 5)) if rng.random() < 0.85 else 0)
        orientation = recipe["orientations"][rng.integers(len(recipe["orientations"]))]
        voxel = recipe["voxel_sizes"][rng.integers(len(recipe["voxel_sizes"]))]
        ph = make_phantom(recipe["contrast"], rng=rng, anatomy=anatomy, orientation=orientation,
                          voxel_size=voxel)
        cases.append(preprocess_case(ph.image, ph.cord, ph.lesion, task))
    return cases


def _window_start(y: np.ndarray, rng: np.random.Generator, depth: int) -> int:
    """A window start: mostly over a lesion (they fill < 1 % of the crop), else anywhere, sometimes
    running past the end as the last zero-padded patch at inference does."""
    nz = y.shape[2]
    lesion_z = np.flatnonzero(y.any(axis=(0, 1)))
    if lesion_z.size and rng.random() < 0.7:
        centre = int(rng.choice(lesion_z))
        return int(np.clip(centre - rng.integers(2, depth - 2), 0, max(0, nz - 1)))
    return int(rng.integers(0, max(1, nz - depth // 3)))


def sample_batch(cases, rng: np.random.Generator, size: int, task: str, depth: int = TRAIN_Z,
                 width: int = TRAIN_XY) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``width`` x ``width`` x ``depth`` windows near the crop centre (where the cord is),
    zero-padded past the end and then z-scored exactly as :func:`bidsapp.legacy.predict_patches`
    does; random R-L and S-I flips and a random gain (a bias field leaves the cord brighter or darker
    than the global percentile standardisation expects)."""
    contrast = legacy.contrast_for(task)
    xs, ys = [], []
    for _ in range(size):
        x, y = cases[rng.integers(len(cases))]
        z0 = _window_start(y, rng, depth)
        n = min(depth, x.shape[2] - z0)
        px, py = np.zeros(PATCH[:2] + (depth,), np.float32), np.zeros(PATCH[:2] + (depth,), np.float32)
        px[:, :, :n], py[:, :, :n] = x[:, :, z0:z0 + n], y[:, :, z0:z0 + n]
        margin = PATCH[0] - width
        x0, y0 = (int(np.clip(margin // 2 + rng.integers(-4, 5), 0, margin)) for _ in range(2))
        px, py = px[x0:x0 + width, y0:y0 + width], py[x0:x0 + width, y0:y0 + width]
        for axis in (0, 2):
            if rng.random() < 0.5:
                px, py = np.flip(px, axis), np.flip(py, axis)
        gain = float(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
        xs.append((px * gain - contrast.mean) / contrast.std)
        ys.append(py.copy())
    return torch.from_numpy(np.stack(xs)[:, None]), torch.from_numpy(np.stack(ys)[:, None])


# ---------------------------------------------------------------- training

def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice over the batch (lesions are a tiny fraction of the crop)."""
    bce = nn.functional.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    dice = (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
    return bce + (1 - dice)


def train(task: str, *, steps: int, seed: int, n_cases: int = 24, batch: int = 4, lr: float = 3e-3,
          init: LesionUNet | None = None, cases: list | None = None) -> tuple[LesionUNet, list]:
    """Train one model; ``init`` starts from another model's weights (t2_ax fine-tunes t2)."""
    torch.manual_seed(seed)
    cases = cases if cases is not None else make_cases(task, n_cases, seed)
    net = LesionUNet()
    if init is not None:
        net.load_state_dict(init.state_dict())
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    rng = np.random.default_rng(seed + 1)
    net.train()
    for step in range(steps):
        x, y = sample_batch(cases, rng, batch, task)
        loss = _loss(net.logits(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            log.info("%s step %d/%d loss %.4f", task, step, steps, float(loss.detach()))
    return net.eval(), cases


def evaluate(task: str, path: str | Path, *, seed: int, n: int = 4) -> list[float]:
    """Dice of the whole legacy pipeline (ground-truth cord as centreline) on ``n`` unseen phantoms."""
    from ..engine.onnx import OnnxModel

    recipe, rng, model = RECIPES[task], np.random.default_rng(seed), OnnxModel(path)
    scores = []
    for i in range(n):
        anatomy = make_anatomy(rng, n_lesions=int(rng.integers(1, 5)))
        orientation = recipe["orientations"][i % len(recipe["orientations"])]
        ph = make_phantom(recipe["contrast"], rng=rng, anatomy=anatomy, orientation=orientation,
                          voxel_size=recipe["voxel_sizes"][i % len(recipe["voxel_sizes"])])
        mask, _ = legacy.run_legacy(np.asanyarray(ph.image.dataobj), ph.image.affine,
                                    np.asanyarray(ph.cord.dataobj), task, model)
        truth = np.asanyarray(ph.lesion.dataobj) > 0
        scores.append(float(2 * (mask.astype(bool) & truth).sum() / max(1, mask.sum() + truth.sum())))
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bidsapp.demo.train_legacy",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--tasks", nargs="+", choices=legacy.TASKS, default=list(legacy.TASKS))
    parser.add_argument("--steps", type=int, default=500, help="training steps per model from scratch")
    parser.add_argument("--finetune-steps", type=int, default=250,
                        help="steps for t2_ax when t2 is trained in the same run (it starts from t2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    trained: dict[str, LesionUNet] = {}
    for task in args.tasks:
        t0 = time.time()
        i = legacy.TASKS.index(task)
        init = trained.get("t2") if task == "t2_ax" else None   # same contrast, other acquisition
        steps = args.finetune_steps if init is not None else args.steps
        net, cases = train(task, steps=steps, seed=args.seed + 100 * i, init=init)
        trained[task] = net
        meta = {"cordlesion_demo": "true", "task": task,
                "trained_on": "synthetic phantoms (bidsapp.demo.phantom)",
                "architecture": f"LesionUNet{FEATURES}", "steps": str(steps),
                "initialised_from": "t2" if init is not None else "random",
                "patch_mean": str(legacy.contrast_for(task).mean),
                "patch_std": str(legacy.contrast_for(task).std), "note": "demo model: not for research"}
        path = export_onnx(net, args.out / f"{task}_lesion.onnx", meta)
        x, _ = sample_batch(cases, np.random.default_rng(7), 2, task, depth=PATCH[2], width=PATCH[0])
        diff = parity(net, path, x.numpy())
        log.info("%s: %.0f s, %s (%.0f kB), ONNX vs torch max abs diff %.2e",
                 task, time.time() - t0, path, path.stat().st_size / 1024, diff)
        dice = evaluate(task, path, seed=args.seed + 10_000 + i)
        log.info("%s: Dice on unseen phantoms %s (mean %.3f)", task, np.round(dice, 3), np.mean(dice))
        if diff > 1e-4:
            raise SystemExit(f"{path}: ONNX export differs from torch by {diff:.2e} (> 1e-4)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
