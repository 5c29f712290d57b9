"""Lesion analysis: per-lesion measures (SCT ``sct_analyze_lesion``) and change between sessions.

- :mod:`.lesions`: ``analyze_lesions(mask, cord=None) -> LesionAnalysis`` (rows of ``LesionMeasures``),
  ``drop_outside_cord``, ``lesion_labels``; :mod:`.angles` and :mod:`.bridges` hold SCT's cord-angle
  correction and midsagittal tissue bridges.
- :mod:`.registration`: SimpleITK rigid registration (``register_rigid``) and label resampling.
- :mod:`.change`: ``analyze_change(SessionInputs, ChangeRules, RegistrationSettings) -> SessionChange``.
- :mod:`.tables`: TSV text, data dictionaries, atomic writes.
- :mod:`.levels`: vertebral levels from disc labels (SCT 7.3's ``sct_label_vertebrae -discfile`` rule,
  ported; checks of disc label files; per-lesion level columns); see docs/LEVELS.md.

Where we differ from SCT 7.3 (and why):

- ``volume_mm3``, length, width and diameter are measured on the WHOLE lesion; SCT first multiplies the
  lesion by the cord mask, so a lesion partly outside a too-tight cord mask shrinks and one wholly outside
  crashes its count check (SCT #5313). We report ``inside_cord_fraction`` instead and drop lesions only on
  request (``--drop-outside-cord``, SCT #4946). Damage ratio and tissue bridges use the part inside the
  cord, as SCT does (a ratio of areas inside the cord stays <= 1).
- Without a cord mask SCT computes only the volume; we also give length, width and diameter along the
  image's own S-I / A-P axes, uncorrected (cord-relative columns ``n/a``; SCT #5065 asks for this).
- Slices without cord are skipped in the damage ratio (SCT divides by a zero cord area).
- No ``-nli-slice``, template (``-f``) or reference-image (``-i``) statistics; no per-sagittal-slice
  bridge columns (only SCT's interpolated midsagittal ones, its headline figures).
"""
from __future__ import annotations

from .change import ChangeRules, LesionChange, SessionChange, SessionInputs, analyze_change
from .lesions import LesionAnalysis, LesionMeasures, analyze_lesions, drop_outside_cord, lesion_labels
from .registration import RegistrationSettings, RigidRegistration, register_rigid

__all__ = [
    "ChangeRules", "LesionChange", "SessionChange", "SessionInputs", "analyze_change",
    "LesionAnalysis", "LesionMeasures", "analyze_lesions", "drop_outside_cord", "lesion_labels",
    "RegistrationSettings", "RigidRegistration", "register_rigid",
]
