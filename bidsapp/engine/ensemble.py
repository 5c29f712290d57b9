"""How fold outputs become one result: nnU-Net's logit mean, or SCT 7.3's per-fold vote.

``ClassMaps`` is what an ensemble returns, per class, on one grid: ``soft`` (float32) and, for SCT's vote,
``votes`` (uint8: how many folds' segmentations are that class). ``SctVote`` streams the folds one at a
time (counts and sums only), as SCT 7.3's ``average_nnunet_predictions``
(``spinalcordtoolbox/deepseg/inference.py``) combines what ``predict_single_npy_array(...,
return_logits_per_fold=True)`` of its nnunetv2 fork returns for each fold:

- mask (SCT without ``-soft-ms-lesion``): each fold's segmentation is nnU-Net's
  ``convert_logits_to_segmentation`` (argmax of the fold's logits resampled to the input grid); SCT
  averages the folds' label maps and ``binarize(mean, 0.5)`` keeps ``mean > 0.5``: here, per class,
  ``2 * votes > n_folds`` (the same test in integers; 3 of 5 folds);
- soft map (``-soft-ms-lesion``): per fold ``np.where(p1 > p0, p1, 0)`` on the fold's softmax
  probabilities, summed over the folds in order and divided by their number.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["ClassMaps", "SctVote", "logit_mean_maps"]


@dataclass(frozen=True)
class ClassMaps:
    """Per-class maps on one grid. ``soft`` float32 (n_classes, *shape): probabilities (logit mean) or
    SCT's soft maps; ``votes`` uint8 (n_classes, *shape) or None: folds whose segmentation is the class
    (SCT's vote; None: the mask is the argmax of ``soft``); ``n_folds``: folds ensembled."""

    soft: np.ndarray
    votes: np.ndarray | None
    n_folds: int

    def mask(self, cls: int) -> np.ndarray:
        """Voxels the ensemble gives to class ``cls`` (bool)."""
        if self.votes is None:
            return self.soft.argmax(0) == cls
        return self.votes[cls].astype(np.int32) * 2 > self.n_folds  # SCT: binarize(mean, 0.5)

    def foreground_mask(self) -> np.ndarray:
        """Voxels given to any non-background class (bool)."""
        if self.votes is None:
            return self.soft.argmax(0) != 0
        return (self.n_folds - self.votes[0].astype(np.int32)) * 2 > self.n_folds

    def foreground_soft(self) -> np.ndarray:
        """Soft map of "any foreground class" (float32)."""
        if self.votes is None:
            return 1.0 - self.soft[0]
        return self.soft[1:].sum(0)

    def transformed(self, fn: Callable[[np.ndarray], np.ndarray], contiguous: bool = True) -> ClassMaps:
        """The same maps with ``fn`` (a reorientation, a transpose) applied to each array; with
        ``contiguous=False`` the results may stay views (no copy of a large image's maps)."""
        def done(a: np.ndarray, dtype: type) -> np.ndarray:
            return np.ascontiguousarray(a, dtype=dtype) if contiguous else a

        votes = None if self.votes is None else done(fn(self.votes), np.uint8)
        return ClassMaps(done(fn(self.soft), np.float32), votes, self.n_folds)

    def background_where(self, outside: np.ndarray) -> ClassMaps:
        """In place: background (soft 1, every fold voting background) where ``outside`` is True."""
        self.soft[:, outside] = 0
        self.soft[0, outside] = 1
        if self.votes is not None:
            self.votes[:, outside] = 0
            self.votes[0, outside] = self.n_folds
        return self

    def uncropped(self, shape: tuple[int, ...], box: tuple[slice, ...]) -> ClassMaps:
        """These maps (on a crop) put at ``box`` of a background grid of ``shape`` (nnU-Net's
        ``revert_cropping_on_probabilities`` and the zero-filled segmentation outside the box)."""
        n = self.soft.shape[0]
        soft = np.zeros((n, *shape), np.float32)
        soft[0] = 1
        soft[(slice(None), *box)] = self.soft
        votes = None
        if self.votes is not None:
            votes = np.zeros((n, *shape), np.uint8)
            votes[0] = self.n_folds
            votes[(slice(None), *box)] = self.votes
        return ClassMaps(soft, votes, self.n_folds)


def logit_mean_maps(probabilities: np.ndarray, n_folds: int) -> ClassMaps:
    """nnU-Net's ensemble: the probabilities of the mean logits; the mask is their argmax."""
    return ClassMaps(np.asarray(probabilities, dtype=np.float32), None, n_folds)


class SctVote:
    """SCT 7.3's fold ensemble, streamed: ``add`` each fold's logits (resampled to the input grid), then
    ``result``. Holds one uint8 count and one float32 sum per class, never every fold's maps."""

    def __init__(self) -> None:
        self.votes: np.ndarray | None = None
        self.soft: np.ndarray | None = None
        self.n_folds = 0

    def add(self, logits: np.ndarray, probabilities: np.ndarray) -> None:
        """One fold: its logits and their softmax (n_classes, *shape) on the input grid."""
        if self.votes is None:
            self.votes = np.zeros(logits.shape, np.uint8)
            self.soft = np.zeros(logits.shape, np.float32)
        seg = np.asarray(logits).argmax(0)  # nnU-Net's convert_logits_to_segmentation (ties: lowest class)
        for c in range(logits.shape[0]):
            self.votes[c] += seg == c
        p0 = probabilities[0]
        self.soft[0] += p0
        for c in range(1, logits.shape[0]):  # SCT: np.where(prob_map[1] > prob_map[0], prob_map[1], 0)
            pc = probabilities[c]
            self.soft[c] += np.where(pc > p0, pc, np.float32(0))
        self.n_folds += 1

    def result(self) -> ClassMaps:
        if self.votes is None or self.soft is None:
            raise ValueError("no fold was added")
        return ClassMaps(self.soft / np.float32(self.n_folds), self.votes, self.n_folds)
