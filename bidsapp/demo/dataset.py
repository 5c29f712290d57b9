"""Write a phantom BIDS dataset with ground truth under ``derivatives/groundtruth``.

Subjects follow a cycle of five protocols (sessions or not, sagittal and axial acquisitions, repeated
runs, MP2RAGE with its inversions, a deprecated ``T2star``, a healthy control), so every routing case
of the app appears in a five-subject dataset. Each subject has one anatomy shared by all its images;
a follow-up session adds a new lesion, grows the first one (x1.4 along each axis) and sees the subject
moved (a rigid motion of 4-7 degrees and 2-5 mm: the images' grids are rotated and shifted against the
anatomy), so the change between sessions has a known answer (``PhantomLesionChange`` and
``PhantomSubjectMotionRAS`` in the ground-truth lesion sidecars). Everything is drawn from
``numpy.random.default_rng([seed, subject, image])``, and NIfTI files are gzipped with mtime 0: the same
seed gives byte-identical files.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from .. import __version__
from .files import save_nifti, write_bytes, write_json
from .levelfiles import moved, write_disc_labels, write_labels_dataset, write_level_truth
from .phantom import (
    AXIAL_ORIENTATIONS,
    SAGITTAL_ORIENTATIONS,
    Anatomy,
    Grid,
    add_lesions,
    make_anatomy,
    make_phantom,
)

log = logging.getLogger(__name__)

GROUNDTRUTH = "groundtruth"


@dataclass(frozen=True)
class Acquisition:
    """One image of a protocol: BIDS suffix (and ``inv`` for MP2RAGE inversions), ``acq``/``run`` labels,
    plane (``sag``: 0.8 mm or 1 mm iso; ``ax``: 0.5x0.5 mm in-plane and ``slice_mm`` slices)."""

    suffix: str
    plane: str
    acq: str | None = None
    run: int | None = None
    inv: int | None = None
    slice_mm: float = 0.8


@dataclass(frozen=True)
class PhantomImage:
    """A written image and its ground truth (None for MP2RAGE inversions, which are not segmented): masks,
    the true level map, and the disc labels (sagittal images only)."""

    path: Path
    suffix: str
    lesion_mask: Path | None
    cord_mask: Path | None
    n_lesions: int
    level_map: Path | None = None
    disc_labels: Path | None = None


_MP2RAGE = (
    Acquisition("UNIT1", "sag", slice_mm=1.0),
    Acquisition("MP2RAGE", "sag", inv=1, slice_mm=1.0),
    Acquisition("MP2RAGE", "sag", inv=2, slice_mm=1.0),
)
#: (sessions, images per session, number of lesions or None for 1-4) per protocol; subjects cycle through them
PROTOCOLS = (
    (
        ("M0", "M12"),
        (Acquisition("T2w", "sag", acq="sag"), Acquisition("T2starw", "ax", slice_mm=5.0)) + _MP2RAGE,
        None,
    ),
    (
        (None,),
        (
            Acquisition("T2w", "ax", acq="ax", run=1, slice_mm=3.0),
            Acquisition("T2w", "ax", acq="ax", run=2, slice_mm=3.0),
            Acquisition("T2starw", "ax", slice_mm=4.0),
        ),
        None,
    ),
    (
        (None,),
        (Acquisition("T2w", "sag", acq="sag"), Acquisition("T2starw", "ax", slice_mm=5.0)) + _MP2RAGE,
        0,
    ),
    (
        ("M0",),
        (Acquisition("T2w", "sag", acq="sag"), Acquisition("T2star", "ax", slice_mm=5.0), _MP2RAGE[0]),
        None,
    ),
    (
        (None,),
        (
            Acquisition("T2w", "ax", acq="ax", slice_mm=4.0),
            Acquisition("T2w", "sag", acq="sag"),
            Acquisition("T2starw", "ax", slice_mm=4.0),
        ),
        None,
    ),
)

_SEQUENCE = {  # sidecar fields per suffix (seconds, degrees), typical 3T spinal cord protocols
    "T2w": {"EchoTime": 0.12, "RepetitionTime": 1.5, "FlipAngle": 120, "ScanningSequence": "SE"},
    "T2starw": {"EchoTime": 0.014, "RepetitionTime": 0.6, "FlipAngle": 30, "ScanningSequence": "GR"},
    "T2star": {"EchoTime": 0.014, "RepetitionTime": 0.6, "FlipAngle": 30, "ScanningSequence": "GR"},
    "UNIT1": {
        "EchoTime": 0.0029,
        "RepetitionTimePreparation": 4.0,
        "FlipAngle": 4,
        "ScanningSequence": "GR_IR",
    },
    "MP2RAGE": {
        "EchoTime": 0.0029,
        "RepetitionTimeExcitation": 0.0066,
        "RepetitionTimePreparation": 4.0,
        "NumberShots": 176,
        "ScanningSequence": "GR_IR",
    },
}


def write_dataset(out_dir: str | Path, *, n_subjects: int = 5, seed: int = 0) -> list[PhantomImage]:
    """Write the dataset into ``out_dir`` (created; existing phantom files are overwritten) and return
    the images written, with their ground-truth masks."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images: list[PhantomImage] = []
    participants = []
    for i in range(n_subjects):
        sub = f"{i + 1:02d}"
        sessions, acquisitions, n_lesions = PROTOCOLS[i % len(PROTOCOLS)]
        rng = np.random.default_rng([seed, i])
        anatomy = make_anatomy(rng, n_lesions=int(rng.integers(1, 5)) if n_lesions is None else n_lesions)
        participants.append(
            (sub, int(rng.integers(22, 61)), str(rng.choice(["F", "M"])), "HC" if n_lesions == 0 else "MS")
        )
        for s, ses in enumerate(sessions):
            change = None
            if s > 0 and anatomy.lesions:  # at follow-up: a new lesion, the first one grown
                anatomy = _grow_first(add_lesions(anatomy, rng, 1))
                change = ["enlarged"] + ["stable"] * (len(anatomy.lesions) - 2) + ["new"]
            visit = Visit(ses, session_motion(seed, i, s), change)
            for j, acquisition in enumerate(acquisitions):
                img_rng = np.random.default_rng([seed, i, s, j])
                images.append(_write_image(out, img_rng, anatomy, sub, visit, acquisition, seed))
    _write_metadata(out, participants, seed)
    write_labels_dataset(out, n_subjects, seed)
    log.info("wrote %d images of %d subjects to %s", len(images), n_subjects, out)
    return images


@dataclass(frozen=True)
class Visit:
    """One session of a subject: its label, the subject's rigid motion since the first session (4x4, RAS
    mm: world of this session = motion @ world of the first) and, at a follow-up, each lesion's change."""

    ses: str | None
    motion: np.ndarray
    change: list[str] | None = None


def _grow_first(anatomy: Anatomy) -> Anatomy:
    first = anatomy.lesions[0]
    grown = replace(first, semi_axes=tuple(1.4 * a for a in first.semi_axes))
    return replace(anatomy, lesions=(grown, *anatomy.lesions[1:]))


def session_motion(seed: int, subject: int, session: int) -> np.ndarray:
    """The subject's head position at a session vs the first one: identity at the first, else a rotation
    of 4-7 degrees about a random axis through the cord and a 2-5 mm shift (its own random stream, so the
    other images of the dataset do not change with it)."""
    if session == 0:
        return np.eye(4)
    rng = np.random.default_rng([seed, subject, session, 7919])
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = math.radians(rng.uniform(4.0, 7.0))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    motion = np.eye(4)
    motion[:3, :3] = np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k  # Rodrigues
    shift = rng.normal(size=3)
    motion[:3, 3] = shift / np.linalg.norm(shift) * rng.uniform(2.0, 5.0)
    return motion


def _moved(phantom, motion: np.ndarray):
    """The phantom's images with their grid moved by ``motion`` (the anatomy moved the other way)."""
    if np.allclose(motion, np.eye(4)):
        return phantom
    return replace(phantom, image=moved(phantom.image, motion), lesion=moved(phantom.lesion, motion),
                   cord=moved(phantom.cord, motion))


def _bids_stem(sub: str, ses: str | None, acq: Acquisition) -> str:
    parts = [f"sub-{sub}"] + ([f"ses-{ses}"] if ses else []) + ([f"acq-{acq.acq}"] if acq.acq else [])
    parts += [f"run-{acq.run}"] if acq.run else []
    parts += [f"inv-{acq.inv}"] if acq.inv else []
    return "_".join(parts)


def _geometry(rng: np.random.Generator, acq: Acquisition) -> Grid:
    if acq.plane == "sag":
        orientation = SAGITTAL_ORIENTATIONS[int(rng.integers(len(SAGITTAL_ORIENTATIONS)))]
        return Grid(
            orientation=orientation,
            voxel_size=(acq.slice_mm,) * 3,
            fov_mm=(rng.uniform(36, 44), rng.uniform(44, 56), rng.uniform(88, 110)),
        )
    orientation = AXIAL_ORIENTATIONS[int(rng.integers(len(AXIAL_ORIENTATIONS)))]
    return Grid(
        orientation=orientation,
        voxel_size=(0.5, 0.5, acq.slice_mm),
        fov_mm=(rng.uniform(40, 52), rng.uniform(40, 52), rng.uniform(60, 80)),
    )


def _write_image(
    out: Path,
    rng: np.random.Generator,
    anatomy: Anatomy,
    sub: str,
    visit: Visit,
    acq: Acquisition,
    seed: int,
) -> PhantomImage:
    ses = visit.ses
    contrast = f"inv-{acq.inv}" if acq.inv else acq.suffix
    grid = _geometry(rng, acq)
    if acq.inv:  # the inversions share the UNIT1 grid of the same MP2RAGE acquisition
        grid = replace(grid, orientation=("A", "S", "L"))
    unmoved = make_phantom(contrast, rng=rng, anatomy=anatomy, grid=grid)
    phantom = _moved(unmoved, visit.motion)
    stem = _bids_stem(sub, ses, acq)
    rel_dir = Path(f"sub-{sub}") / (f"ses-{ses}" if ses else "") / "anat"
    name = f"{stem}_{acq.suffix}"
    save_nifti(phantom.image, out / rel_dir / f"{name}.nii.gz")
    sidecar = {
        "Modality": "MR",
        "MagneticFieldStrength": 3,
        "Manufacturer": "cordlesion synthetic phantom",
        "MRAcquisitionType": "3D" if acq.plane == "sag" else "2D",
        "SliceThickness": acq.slice_mm,
        **_SEQUENCE[acq.suffix],
        "PhantomSeed": seed,
        "PhantomOrientation": "".join(grid.orientation),
    }
    if acq.suffix == "MP2RAGE":
        sidecar.update({"InversionTime": 0.7 if acq.inv == 1 else 2.5, "FlipAngle": 4 if acq.inv == 1 else 5})
    write_json(out / rel_dir / f"{name}.json", sidecar)
    if acq.inv:
        return PhantomImage(out / rel_dir / f"{name}.nii.gz", acq.suffix, None, None, 0)
    written = _write_truth(out, rel_dir, stem, acq.suffix, phantom, visit)
    source = f"bids:raw:{(rel_dir / f'{name}.nii.gz').as_posix()}"
    truth_dir = out / "derivatives" / GROUNDTRUTH / rel_dir
    levels = write_level_truth(truth_dir, stem, acq.suffix, source, unmoved.cord, anatomy, visit.motion)
    discs = (write_disc_labels(out, rel_dir, name, unmoved.image, anatomy, visit.motion)
             if acq.plane == "sag" else None)
    return replace(written, level_map=levels, disc_labels=discs)


def _write_truth(out: Path, rel_dir: Path, stem: str, suffix: str, phantom, visit: Visit) -> PhantomImage:
    gt_dir = out / "derivatives" / GROUNDTRUTH / rel_dir
    source = f"bids:raw:{(rel_dir / f'{stem}_{suffix}.nii.gz').as_posix()}"
    lesion = np.asarray(phantom.lesion.dataobj)
    _, n_lesions = ndimage.label(lesion, structure=np.ones((3, 3, 3)))
    voxel_mm3 = float(np.prod(phantom.lesion.header.get_zooms()[:3]))
    paths = {}
    for label, img, kind in (("lesion", phantom.lesion, "Lesion"), ("SC", phantom.cord, "ROI")):
        name = f"{stem}_label-{label}_desc-{suffix}_mask"
        paths[label] = gt_dir / f"{name}.nii.gz"
        save_nifti(img, paths[label])
        meta = {
            "Type": kind,
            "Sources": [source],
            "SpatialReference": source,
            "Manual": False,
            "Description": f"Ground truth {'lesion' if label == 'lesion' else 'spinal cord'} mask of the "
            "phantom: voxels more than half inside the structure.",
        }
        if label == "lesion":
            meta.update(
                {
                    "LesionCount": int(n_lesions),
                    "LesionVolume": round(float(lesion.sum()) * voxel_mm3, 3),
                    "LesionVolumeUnits": "mm3",
                    "PhantomLesions": [
                        {
                            "CordOffset": [round(les.u, 4), round(les.v, 4)],
                            "HeightMm": round(les.z, 3),
                            "DiametersMm": [round(d, 3) for d in les.diameters_mm],
                        }
                        for les in phantom.anatomy.lesions
                    ],
                    "PhantomSubjectMotionRAS": np.round(visit.motion, 6).tolist(),
                }
            )
            if visit.change is not None:  # per PhantomLesions entry, vs the previous session
                meta["PhantomLesionChange"] = list(visit.change)
        write_json(gt_dir / f"{name}.json", meta)
    return PhantomImage(
        out / rel_dir / f"{stem}_{suffix}.nii.gz", suffix, paths["lesion"], paths["SC"], int(n_lesions)
    )


def _write_metadata(out: Path, participants: list[tuple], seed: int) -> None:
    write_json(
        out / "dataset_description.json",
        {
            "Name": f"cordlesion spinal cord phantoms (seed {seed})",
            "BIDSVersion": "1.10.0",
            "DatasetType": "raw",
            "License": "CC0",
            "Authors": ["cordlesion developers", "cordlesion phantom generator"],
            "HowToAcknowledge": "Synthetic data: not for research conclusions.",
            "GeneratedBy": [
                {
                    "Name": "cordlesion-phantom",
                    "Version": __version__,
                    "Description": f"python -m bidsapp.demo OUT --subjects {len(participants)} --seed {seed}",
                }
            ],
        },
    )
    rows = ["participant_id\tage\tsex\tgroup"] + [f"sub-{s}\t{a}\t{x}\t{g}" for s, a, x, g in participants]
    write_bytes(out / "participants.tsv", ("\n".join(rows) + "\n").encode())
    write_json(
        out / "participants.json",
        {
            "age": {"Description": "age of the participant", "Units": "year"},
            "sex": {"Description": "sex of the participant", "Levels": {"F": "female", "M": "male"}},
            "group": {
                "Description": "diagnosis",
                "Levels": {"MS": "multiple sclerosis", "HC": "healthy control"},
            },
        },
    )
    write_bytes(out / "README.md", _README.format(n=len(participants), seed=seed).encode())
    gt = out / "derivatives" / GROUNDTRUTH
    write_json(
        gt / "dataset_description.json",
        {
            "Name": "Ground truth of the cordlesion phantoms",
            "BIDSVersion": "1.10.0",
            "DatasetType": "derivative",
            "GeneratedBy": [
                {
                    "Name": GROUNDTRUTH,
                    "Version": __version__,
                    "Description": "cordlesion phantom generator (bidsapp.demo)",
                }
            ],
            "DatasetLinks": {"raw": "../../"},
            "SourceDatasets": [{"URL": "bids:raw:"}],
        },
    )
    write_bytes(
        gt / "README.md",
        b"# Ground truth of the cordlesion phantoms\n\nLesion (`label-lesion`) and spinal "
        b"cord (`label-SC`) masks on the grid of each source image (`desc-<suffix>`), uint8 0/1: voxels "
        b"more than half inside the structure. Lesion sidecars list each lesion's position and diameters.\n",
    )


_README = """# cordlesion spinal cord phantoms

Synthetic spinal cord MRI ({n} subjects, seed {seed}) made by `python -m bidsapp.demo OUT --subjects {n}
--seed {seed}`: a curved cord with grey and white matter in CSF, vertebrae and muscle around; T2w,
T2starw (or the deprecated T2star) and MP2RAGE (UNIT1 and the two inversions); sagittal 0.8-1 mm
isotropic and axial 0.5x0.5 mm x 3-5 mm images in several orientations, with noise and a bias field.
Multiple sclerosis-like lesions (bright on T2w/T2starw, dark on UNIT1) are known exactly: lesion and
spinal cord masks are under `derivatives/groundtruth`. Synthetic data for trying and testing software,
not for research conclusions.
"""
