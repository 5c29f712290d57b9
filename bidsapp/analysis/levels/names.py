"""SCT's vertebral numbering, the one place that turns an SCT value into a name.

A **level** value ``k`` is vertebra ``k``: 1-7 = C1-C7, 8-19 = T1-T12, 20-24 = L1-L5, 25-29 = S1-S5, 30 = Co
(SCT 7.3 ``types.Centerline.regions_labels``; ``sct_label_vertebrae`` writes these values in the cord).
A **disc** value ``k`` is the disc at the TOP of vertebra ``k``, labelled at its posterior tip: 1 = top of
C1, 2 = C1/C2, 3 = C2/C3, ..., 8 = C7/T1, ..., 20 = T12/L1, ..., 25 = L5/S1 (SCT's ``-discfile``
convention, "value=3 -> disc C2/C3"; TotalSpineSeg's ``step1_levels`` and SCT's ``totalspineseg_discs``
number them the same way). So level ``k`` runs from disc ``k`` down to disc ``k + 1``.
SCT's disc files may also hold 49 (pontomedullary groove) and 50 (pontomedullary junction): brainstem
landmarks, not discs (SCT's documentation: "not used in any subsequent steps").
"""
from __future__ import annotations

_REGIONS = (("C", 7), ("T", 12), ("L", 5), ("S", 5))

#: level value -> name: 1 "C1" ... 7 "C7", 8 "T1" ... 19 "T12", 20 "L1" ... 24 "L5", 25 "S1" ... 30 "Co"
LEVEL_NAMES: dict[int, str] = {
    value: name for value, name in enumerate(
        [f"{letter}{i}" for letter, count in _REGIONS for i in range(1, count + 1)] + ["Co"], start=1)
}
#: disc values a disc label file may hold: top of C1 (1) to L5/S1 (25)
DISC_VALUES = range(1, 26)
#: SCT's brainstem landmarks that its disc files may carry (not discs)
LANDMARK_VALUES = {49: "pontomedullary groove", 50: "pontomedullary junction"}


def level_name(value: int) -> str:
    """``3 -> "C3"``; ``KeyError`` for a value that is no vertebra (0, 31, ...)."""
    return LEVEL_NAMES[int(value)]


def level_value(name: str) -> int:
    """``"C3" -> 3`` (the inverse of :func:`level_name`); ``KeyError`` for an unknown name."""
    return _BY_NAME[name]


def disc_name(value: int) -> str:
    """``3 -> "C2/C3"``, ``1 -> "C1 top"``, ``25 -> "L5/S1"``; ``KeyError`` outside :data:`DISC_VALUES`."""
    value = int(value)
    if value not in DISC_VALUES:
        raise KeyError(value)
    return "C1 top" if value == 1 else f"{LEVEL_NAMES[value - 1]}/{LEVEL_NAMES[value]}"


_BY_NAME = {name: value for value, name in LEVEL_NAMES.items()}
