"""Which disc label file gives an image its levels: names only (the folder is listed elsewhere).

In a labels derivative (``derivatives/labels``, the layout of spine-generic and manual-correction) a disc
label file sits in the folder of its image and is named ``<image file name without .nii/.nii.gz><ending>``
``.nii.gz``, the endings of :data:`DISC_ENDINGS`, e.g.
``sub-01/ses-M0/anat/sub-01_ses-M0_acq-sag_T2w_label-discs_dlabel.nii.gz``.

An image uses its own disc labels. Without them, the disc labels of another image of the same folder (same
subject, same session: in practice the sagittal T2w, where discs are drawn) serve it: SCT's projection works
in scanner millimetres, so the labels need not be on the image's grid. What this assumes and what is checked:

- the two images share the scanner frame: same subject and session, no repositioning between them (a move of
  a few mm moves the level boundaries by as much, unseen);
- the partner file is on its OWN image's grid (``discs.check_on_grid`` against that image);
- its discs reach THIS image's cord (``discs.check_reach``: within 20 mm of the centreline, not all beyond
  one end) and lie in order along it (``discs.check_order``);
- the output says so: the sidecar names the label file and the image it was drawn on.

Among several partners the first by name is used. Two files for one image (two conventions) are refused.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

from ...derivatives import nifti_stem
from .discs import DiscLabelError

#: disc label file endings, most specific first: spine-generic (``_label-discs_dlabel``), manual-correction's
#: default ``-suffix-files-label`` (``_label-disc``), older spine-generic (``_labels-disc-manual``,
#: ``_labels-disc``), SCT's ``sct_deepseg spine`` / TotalSpineSeg ``step1_levels`` (``_totalspineseg_discs``)
DISC_ENDINGS = ("_label-discs_dlabel", "_label-disc", "_labels-disc-manual", "_labels-disc",
                "_totalspineseg_discs")


@dataclass(frozen=True)
class DiscSource:
    """The disc label file (path relative to the labels folder) chosen for an image, the image (its path
    relative to the dataset, without extension) it was drawn on, and whether that is another image."""

    labels: str
    drawn_on: str
    shared: bool


def _stem_path(relpath: str) -> str:
    path = PurePosixPath(relpath)
    return (path.parent / nifti_stem(path.name)).as_posix()


def drawn_on(label_relpath: str) -> str | None:
    """The image a disc label file belongs to (relative path without extension), or None when the name has
    no disc-label ending: ``.../sub-01_T2w_label-discs_dlabel.nii.gz`` -> ``.../sub-01_T2w``."""
    if not label_relpath.endswith((".nii.gz", ".nii")):
        return None
    stem = _stem_path(label_relpath)
    name = PurePosixPath(stem).name
    for ending in DISC_ENDINGS:
        if name.endswith(ending) and len(name) > len(ending):
            return stem[: -len(ending)]
    return None


def disc_source(image_relpath: str, label_relpaths: Iterable[str]) -> DiscSource | None:
    """The disc labels for ``image_relpath`` (relative to the dataset) among ``label_relpaths`` (relative to
    the labels folder): its own, else those of the first other image of its folder; None when there are none.
    ``DiscLabelError`` when the image has two files of its own."""
    image = _stem_path(image_relpath)
    by_image: dict[str, list[str]] = {}
    for label in sorted(label_relpaths):
        owner = drawn_on(label)
        if owner is not None:
            by_image.setdefault(owner, []).append(label)
    own = by_image.get(image, [])
    if len(own) > 1:
        raise DiscLabelError(f"{image_relpath}: two disc label files for one image ({', '.join(own)}): "
                             "keep one")
    if own:
        return DiscSource(own[0], image, False)
    folder = PurePosixPath(image).parent
    for owner, files in sorted(by_image.items()):
        if PurePosixPath(owner).parent == folder and len(files) == 1:
            return DiscSource(files[0], owner, True)
    return None
