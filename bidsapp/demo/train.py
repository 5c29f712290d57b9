"""Train the three demo models on randomised phantoms: ``python -m bidsapp.demo.train``.

Writes, in the exact nnU-Net v2 folder format (``bidsapp.demo.modelfolder``), under
``bidsapp/models/demo/<task>/<Trainer>__<Plans>__3d_fullres/``:

- ``spinalcord``: PlainConvUNet, any contrast (T2w, T2starw, UNIT1) -> spinal cord mask;
- ``lesion_ms``: ResidualEncoderUNet (the official model's family, much smaller), T2w/T2starw -> lesions;
- ``lesion_ms_mp2rage``: PlainConvUNet, UNIT1 cropped around the cord -> lesions (fold 3 only, as
  the official release).

Training happens in nnU-Net's preprocessed space (``trainingdata.preprocess``, the engine's own
steps), on patches, with Dice + cross-entropy, Adam and a polynomial learning-rate decay. Each
folder gets a ``demo_training.json`` with the seeds of every training and validation volume
(evaluate only on other seeds) and the validation Dice measured with our engine on full images.
Threads: ``--threads`` (default 2); the run is deterministic for a given thread count.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..engine import NnUNetModel, NnUNetPredictor, build_network
from .dataset import write_json
from .modelfolder import PlansSpec, make_dataset_json, make_plans, write_model_folder
from .trainingdata import Volume, crop_around_cord, preprocess, random_phantom, sample_patch

log = logging.getLogger(__name__)

DEMO_ROOT = Path(__file__).resolve().parent.parent / "models" / "demo"


@dataclass(frozen=True)
class DemoTask:
    """One demo model: architecture, preprocessing space, training data and budget."""

    name: str
    network: str
    trainer: str
    contrasts: tuple[str, ...]
    target: str  # "cord" or "lesion"
    labels: dict
    orientation: str  # SCT letters, written to dataset.json["image_orientation"]
    spacing: tuple[float, float, float]  # [z, y, x] of the reoriented image
    patch: tuple[int, int, int]  # the plans' patch: sliding-window tiles at inference
    train_patch: tuple[int, int, int]  # smaller training crops: the networks are fully convolutional
    seed: int
    crop_to_cord: bool = False
    fold: int = 0
    features: int = 4
    volumes: int = 80
    iterations: int = 1000
    batch_size: int = 2
    foreground_fraction: float = 0.5


TASKS = {
    "spinalcord": DemoTask(
        "spinalcord",
        "PlainConvUNet",
        "nnUNetTrainer",
        ("T2w", "T2starw", "UNIT1"),
        "cord",
        {"background": 0, "sc": 1},
        "RPI",
        (2.0, 1.0, 1.0),
        (32, 64, 64),
        (16, 48, 48),
        seed=1001,
        features=4,
        foreground_fraction=0.33,
    ),
    "lesion_ms": DemoTask(
        "lesion_ms",
        "ResidualEncoderUNet",
        "nnUNetTrainer",
        ("T2w", "T2starw"),
        "lesion",
        {"background": 0, "lesion": 1},
        "RPI",
        (1.5, 0.7, 0.7),
        (32, 64, 64),
        (16, 40, 40),
        seed=2002,
        features=6,
        iterations=1500,
    ),
    "lesion_ms_mp2rage": DemoTask(
        "lesion_ms_mp2rage",
        "PlainConvUNet",
        "nnUNetTrainer",
        ("UNIT1",),
        "lesion",
        {"background": 0, "lesion": 1},
        "LPI",
        (1.5, 0.8, 0.8),
        (32, 64, 64),
        (16, 40, 40),
        seed=3003,
        features=6,
        crop_to_cord=True,
        fold=3,
        iterations=2000,
    ),
}
#: validation volumes per task (seeds [task.seed + 500, i]); tests use yet other seeds
N_VALIDATION = 6


def plans_for(task: DemoTask) -> tuple[dict, dict]:
    plans = make_plans(PlansSpec(network=task.network, patch_size=task.patch, spacing=task.spacing,
                                 base_features=task.features, max_features=64, max_stages=4,
                                 dataset_name=f"Dataset9{task.seed % 100:02d}_Demo{task.name}",
                                 batch_size=task.batch_size))
    dataset_json = make_dataset_json(
        task.labels,
        {"0": "+".join(task.contrasts)},
        task.orientation,
        num_training=task.volumes,
        name=f"demo_{task.name}",
    )
    return plans, dataset_json


def make_volume(task: DemoTask, plans: dict, dataset_json: dict, seed: list[int]) -> Volume:
    """One random phantom of the task's contrasts, preprocessed; ``seed`` names it for good."""
    rng = np.random.default_rng(seed)
    contrast = task.contrasts[int(rng.integers(len(task.contrasts)))]
    phantom = random_phantom(rng, contrast, lesions=True)
    target = phantom.cord if task.target == "cord" else phantom.lesion
    image = phantom.image
    if task.crop_to_cord:
        image, target = crop_around_cord(image, target, phantom.cord)
    return preprocess(image, target, plans, dataset_json)


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy + (1 - soft Dice of the foreground over the batch), as nnU-Net's DC_and_CE."""
    ce = nn.functional.cross_entropy(logits, target)
    prob = torch.softmax(logits, 1)[:, 1]
    fg = (target == 1).float()
    dice = (2 * (prob * fg).sum() + 1e-5) / (prob.sum() + fg.sum() + 1e-5)
    return ce + 1 - dice


def _augment(images: np.ndarray, targets: np.ndarray, rng: np.random.Generator):
    """Mirroring on every axis (the models allow mirroring TTA), intensity scale/shift, noise."""
    for b in range(images.shape[0]):
        for axis in range(3):
            if rng.random() < 0.5:
                images[b] = np.flip(images[b], axis + 1)
                targets[b] = np.flip(targets[b], axis)
        images[b] = images[b] * rng.uniform(0.8, 1.2) + rng.uniform(-0.2, 0.2)
        if rng.random() < 0.3:
            images[b] += rng.normal(0, rng.uniform(0.02, 0.15), images[b].shape).astype(np.float32)
    return images, targets


def train_network(task: DemoTask, plans: dict, volumes: list[Volume], rng: np.random.Generator) -> nn.Module:
    torch.manual_seed(task.seed)
    net = build_network(plans, "3d_fullres", 1, len(task.labels))
    if hasattr(net, "initialize"):
        net.apply(net.initialize)
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: (1 - it / task.iterations) ** 0.9)
    start, running = time.perf_counter(), []
    for it in range(task.iterations):
        batch = [
            sample_patch(
                volumes[int(rng.integers(len(volumes)))], task.train_patch, rng, task.foreground_fraction
            )
            for _ in range(task.batch_size)
        ]
        images, targets = _augment(np.stack([b[0] for b in batch]), np.stack([b[1] for b in batch]), rng)
        logits = net(torch.from_numpy(np.ascontiguousarray(images)))
        loss = dice_ce_loss(logits, torch.from_numpy(np.ascontiguousarray(targets)).long())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running.append(loss.item())
        if (it + 1) % 100 == 0:
            log.info(
                "%s: iteration %d/%d, loss %.3f, %.0f s",
                task.name,
                it + 1,
                task.iterations,
                float(np.mean(running[-100:])),
                time.perf_counter() - start,
            )
    return net.eval()


def validate(task: DemoTask, folder: Path) -> dict:
    """Dice of the written folder, run by our engine on full (or cord-cropped) phantom images."""
    predictor = NnUNetPredictor(NnUNetModel.load(folder), device="cpu")
    dices, fp_mm3 = [], []
    for i in range(N_VALIDATION):
        rng = np.random.default_rng([task.seed + 500, i])
        contrast = task.contrasts[i % len(task.contrasts)]
        phantom = random_phantom(rng, contrast, lesions=True)
        truth = phantom.cord if task.target == "cord" else phantom.lesion
        image = phantom.image
        if task.crop_to_cord:
            image, truth = crop_around_cord(image, truth, phantom.cord)
        pred = predictor.predict(image).argmax(0) == 1
        gt = np.asarray(truth.dataobj) > 0
        if gt.any():
            dices.append(float(2 * (pred & gt).sum() / (pred.sum() + gt.sum())))
        else:
            fp_mm3.append(float(pred.sum() * np.prod(image.header.get_zooms()[:3])))
    return {
        "validation_dice_mean": round(float(np.mean(dices)), 4) if dices else None,
        "validation_dice": [round(d, 4) for d in dices],
        "validation_false_positive_mm3_lesion_free": [round(v, 1) for v in fp_mm3],
    }


def train_task(
    task: DemoTask, out_root: Path, *, iterations: int | None = None, volumes: int | None = None
) -> Path:
    if iterations or volumes:
        task = DemoTask(
            **{
                **task.__dict__,
                "iterations": iterations or task.iterations,
                "volumes": volumes or task.volumes,
            }
        )
    plans, dataset_json = plans_for(task)
    start = time.perf_counter()
    pool = [make_volume(task, plans, dataset_json, [task.seed, i]) for i in range(task.volumes)]
    log.info("%s: %d training volumes in %.0f s", task.name, len(pool), time.perf_counter() - start)
    net = train_network(task, plans, pool, np.random.default_rng([task.seed, 10**6]))
    train_s = time.perf_counter() - start
    task_dir = out_root / task.name
    if task_dir.exists():
        shutil.rmtree(task_dir)
    folder = write_model_folder(
        task_dir,
        plans=plans,
        dataset_json=dataset_json,
        fold_state_dicts={task.fold: net.state_dict()},
        trainer=task.trainer,
    )
    record = {
        "purpose": PURPOSE,
        "command": _command(task),
        "task": task.name,
        "network": task.network,
        "contrasts": list(task.contrasts),
        "training_seeds": {
            "rng": "numpy.random.default_rng([seed, i]) for i in range(volumes)",
            "seed": task.seed,
            "volumes": task.volumes,
            "patch_sampler_seed": [task.seed, 10**6],
            "torch_seed": task.seed,
        },
        "validation_seeds": {
            "rng": "numpy.random.default_rng([seed, i]) for i in range(volumes)",
            "seed": task.seed + 500,
            "volumes": N_VALIDATION,
        },
        "iterations": task.iterations,
        "batch_size": task.batch_size,
        "patch_size": list(task.patch),
        "training_patch_size": list(task.train_patch),
        "spacing": list(task.spacing),
        "loss": "cross-entropy + soft Dice",
        "optimizer": "Adam lr 3e-3, poly 0.9",
        "threads": torch.get_num_threads(),
        "training_seconds": round(train_s, 1),
        "torch": torch.__version__,
    }
    record.update(validate(task, folder))
    write_json(folder / "demo_training.json", record)
    log.info("%s: written to %s (validation Dice %s)", task.name, folder, record["validation_dice_mean"])
    return folder


PURPOSE = "DEMO model trained on synthetic phantoms: for trying the app and for tests, NOT for research"


def _command(task: DemoTask) -> str:
    """The command that retrains exactly this model."""
    default = TASKS[task.name]
    command = f"python -m bidsapp.demo.train --tasks {task.name}"
    if task.iterations != default.iterations:
        command += f" --iterations {task.iterations}"
    if task.volumes != default.volumes:
        command += f" --volumes {task.volumes}"
    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bidsapp.demo.train", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=sorted(TASKS))
    parser.add_argument("--out", type=Path, default=DEMO_ROOT, help=f"destination (default {DEMO_ROOT})")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--iterations", type=int, help="override the training iterations (quick trials)")
    parser.add_argument("--volumes", type=int, help="override the number of training volumes")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, args.threads))
    for name in args.tasks:
        folder = train_task(TASKS[name], args.out, iterations=args.iterations, volumes=args.volumes)
        print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
