"""Train the demo legacy lesion models (``t2``, ``t2_ax``, ``t2s``) on phantoms and export them to ONNX.

The exported files have the official models' signature: input ``input_1`` float32 ``(N, 1, 48, 48, 48)``,
output ``predictions`` float32 ``(N, 1, 48, 48, 48)`` = sigmoid lesion probability. Training data go
through exactly the inference preprocessing of :mod:`bidsapp.legacy` (RPI, 0.5 mm in-plane,
centreline crop from the ground-truth cord, percentile standardisation, 0.5 mm iso, fixed z-score),
so the models learn what the pipeline hands them. The networks are small 2.5D U-Nets (each axial slice
with its neighbours, ~100 kB each, see :class:`LesionUNet`); they are demo models for trying the app
and for tests, not for research.

    python -m bidsapp.demo.train_legacy [--out bidsapp/models/demo/legacy] [--tasks t2 t2_ax t2s]
        [--steps 600] [--finetune-steps 300] [--seed 0] [--threads 2]

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
from .phantom import AXIAL_ORIENTATIONS, SAGITTAL_ORIENTATIONS, Grid, make_anatomy, make_phantom

log = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = "input_1", "predictions"   # the names SCT feeds and reads (deepseg_/onnx.py)
PATCH = (legacy.CROP_SIZE,) * 3
OPSET = 17
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "models" / "demo" / "legacy"
FEATURES = (8, 16, 32)
SLICE_OFFSETS = (-4, 0, 4)   # neighbouring slices as channels: 2 mm either side at 0.5 mm

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
    # no normalisation layer: the input is already z-scored with fixed statistics, and every weight
    # exports under its state-dict name (the exporter would fold BatchNorm into the convolutions)
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.01),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.LeakyReLU(0.01))


class SliceUNet(nn.Module):
    """2D U-Net, a slice and its neighbours as channels: ``(B, C, X, Y)`` -> logits ``(B, 1, X, Y)``."""

    def __init__(self, features: Sequence[int] = FEATURES, channels: int = len(SLICE_OFFSETS)) -> None:
        super().__init__()
        f = list(features)
        self.down = nn.ModuleList([_block(channels, f[0])]
                                  + [_block(f[i], f[i + 1]) for i in range(len(f) - 1)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(f[i + 1], f[i], 2, stride=2) for i in range(len(f) - 1)])
        self.merge = nn.ModuleList([_block(2 * f[i], f[i]) for i in range(len(f) - 1)])
        self.head = nn.Conv2d(f[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        for i in reversed(range(len(self.up))):
            x = self.merge[i](torch.cat([skips[i], self.up[i](x)], dim=1))
        return self.head(x)


class LesionUNet(nn.Module):
    """The official signature around a 2.5D net: ``(N, 1, 48, 48, 48)`` -> sigmoid ``(N, 1, 48, 48, 48)``.

    Each axial slice is segmented with its neighbours at :data:`SLICE_OFFSETS` as channels (edge slices
    repeated inside the patch). 2D convolutions are ~10x cheaper than 3D ones on a CPU, which lets the
    demo models train in minutes; the official models are 3D CNNs, the signature is the same.
    """

    def __init__(self, features: Sequence[int] = FEATURES) -> None:
        super().__init__()
        self.net2d = SliceUNet(features)

    def slice_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, X, Y, Z)`` -> per-slice logits ``(N * Z, 1, X, Y)`` (slice-major within each patch)."""
        nx, ny, nz = x.shape[2], x.shape[3], x.shape[4]
        stacked = torch.cat([torch.index_select(x, 4, _neighbours(nz, o)) for o in SLICE_OFFSETS], dim=1)
        slices = stacked.permute(0, 4, 1, 2, 3).reshape(-1, len(SLICE_OFFSETS), nx, ny)
        return self.net2d(slices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nx, ny, nz = x.shape[2], x.shape[3], x.shape[4]
        prob = torch.sigmoid(self.slice_logits(x))
        return prob.reshape(-1, nz, 1, nx, ny).permute(0, 2, 3, 4, 1)


def _neighbours(nz: int, offset: int) -> torch.Tensor:
    return torch.clamp(torch.arange(nz) + offset, 0, nz - 1)


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
    # the reshapes of the 2.5D wrapper leave the output dims symbolic: declare the official shape
    for dim, size in zip(model.graph.output[0].type.tensor_type.shape.dim, ("batch", 1, *PATCH), strict=True):
        dim.Clear()
        if isinstance(size, str):
            dim.dim_param = size
        else:
            dim.dim_value = size
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
        ph = make_phantom(recipe["contrast"], rng=rng, anatomy=anatomy,
                          grid=Grid(orientation=orientation, voxel_size=voxel))
        cases.append(preprocess_case(ph.image, ph.cord, ph.lesion, task))
    return cases


def sample_slices(cases, rng: np.random.Generator, size: int, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` axial slices with their neighbours as channels (``(size, 3, 48, 48)``, z-scored as
    :func:`bidsapp.legacy.predict_patches` does) and their lesion targets (``(size, 1, 48, 48)``).

    Most slices hold lesion (they fill < 1 % of the crop); random R-L and S-I flips and a random
    gain (a bias field leaves the cord brighter or darker than the global standardisation expects).
    """
    contrast = legacy.contrast_for(task)
    xs, ys = [], []
    for _ in range(size):
        x, y = cases[rng.integers(len(cases))]
        nz = x.shape[2]
        lesion_z = np.flatnonzero(y.any(axis=(0, 1)))
        z = int(rng.choice(lesion_z)) if lesion_z.size and rng.random() < 0.6 else int(rng.integers(nz))
        offsets = SLICE_OFFSETS if rng.random() < 0.5 else SLICE_OFFSETS[::-1]
        px = np.stack([x[:, :, int(np.clip(z + o, 0, nz - 1))] for o in offsets])
        py = y[None, :, :, z]
        if rng.random() < 0.5:
            px, py = px[:, ::-1], py[:, ::-1]
        gain = float(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
        xs.append((px * gain - contrast.mean) / contrast.std)
        ys.append(py.copy())
    batch_x = torch.from_numpy(np.stack(xs).astype(np.float32))
    return batch_x, torch.from_numpy(np.stack(ys).astype(np.float32))


def patch_of(case, z0: int = 0) -> np.ndarray:
    """One z-scored inference patch ``(1, 1, 48, 48, 48)`` of a case, zero-padded past its end."""
    x = case[0]
    patch = np.zeros(PATCH, np.float32)
    n = min(PATCH[2], x.shape[2] - z0)
    patch[:, :, :n] = x[:, :, z0:z0 + n]
    return patch[None, None]


# ---------------------------------------------------------------- training

def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice over the batch (lesions are a tiny fraction of the crop)."""
    bce = nn.functional.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    dice = (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
    return bce + (1 - dice)


def train(task: str, *, steps: int, seed: int, n_cases: int = 24, batch: int = 32, lr: float = 3e-3,
          init: LesionUNet | None = None, cases: list | None = None) -> tuple[LesionUNet, list]:
    """Train one model; ``init`` starts from another model's weights (t2_ax and t2s fine-tune t2)."""
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
        x, y = sample_slices(cases, rng, batch, task)
        loss = _loss(net.net2d(x), y)
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
        voxel = recipe["voxel_sizes"][i % len(recipe["voxel_sizes"])]
        ph = make_phantom(recipe["contrast"], rng=rng, anatomy=anatomy,
                          grid=Grid(orientation=orientation, voxel_size=voxel))
        mask, _ = legacy.run_legacy(np.asanyarray(ph.image.dataobj), ph.image.affine,
                                    np.asanyarray(ph.cord.dataobj), task, model)
        truth = np.asanyarray(ph.lesion.dataobj) > 0
        scores.append(float(2 * (mask.astype(bool) & truth).sum() / max(1, mask.sum() + truth.sum())))
    return scores


def _describe_init(path: Path) -> str:
    from ..engine.onnx import OnnxModel

    meta = OnnxModel(path).metadata
    steps, origin = meta.get("steps", "?"), meta.get("initialised_from", "?")
    return f"{meta.get('task', path.name)} ({steps} steps, from {origin})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bidsapp.demo.train_legacy",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--tasks", nargs="+", choices=legacy.TASKS, default=list(legacy.TASKS))
    parser.add_argument("--steps", type=int, default=600, help="training steps per model from scratch")
    parser.add_argument("--finetune-steps", type=int, default=300,
                        help="steps for t2_ax and t2s, which start from the t2 model")
    parser.add_argument("--init", type=Path, metavar="ONNX",
                        help="start every listed task from this exported model (e.g. t2_ax / t2s from a t2 "
                             "trained in another run, or more steps for a model); --finetune-steps steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    trained: dict[str, LesionUNet] = {}
    for task in args.tasks:
        t0 = time.time()
        i = legacy.TASKS.index(task)
        init, origin = None, "random"
        if args.init is not None:
            init, origin = net_from_onnx(args.init), _describe_init(args.init)
        elif task != "t2" and "t2" in trained:  # same anatomy, other acquisition / contrast
            init, origin = trained["t2"], f"t2 ({args.steps} steps)"
        steps = args.finetune_steps if init is not None else args.steps
        net, cases = train(task, steps=steps, seed=args.seed + 100 * i, init=init)
        trained[task] = net
        meta = {"cordlesion_demo": "true", "task": task,
                "trained_on": "synthetic phantoms (bidsapp.demo.phantom)",
                "architecture": f"LesionUNet{FEATURES}", "steps": str(steps),
                "initialised_from": origin,
                "patch_mean": str(legacy.contrast_for(task).mean),
                "patch_std": str(legacy.contrast_for(task).std), "note": "demo model: not for research"}
        path = export_onnx(net, args.out / f"{task}_lesion.onnx", meta)
        contrast = legacy.contrast_for(task)
        batch = np.concatenate([patch_of(cases[0]), patch_of(cases[1], 48)])
        diff = parity(net, path, (batch - contrast.mean) / contrast.std)
        log.info("%s: %.0f s, %s (%.0f kB), ONNX vs torch max abs diff %.2e",
                 task, time.time() - t0, path, path.stat().st_size / 1024, diff)
        dice = evaluate(task, path, seed=args.seed + 10_000 + i)
        log.info("%s: Dice on unseen phantoms %s (mean %.3f)", task, np.round(dice, 3), np.mean(dice))
        if diff > 1e-4:
            raise SystemExit(f"{path}: ONNX export differs from torch by {diff:.2e} (> 1e-4)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
