"""Rigid registration of two sessions' images with SimpleITK, and resampling masks between them.

The follow-up image is the fixed image, the baseline the moving one: SimpleITK's transform maps a
follow-up point to the baseline point at the same anatomy (ITK convention), which is what resampling
the baseline onto the follow-up grid needs. Euler3D (3 rotations, 3 translations), regular-step gradient
descent with physical-shift scales, 3 resolution levels (shrink 4-2-1, smoothing 2-1-0 mm), 10 % of the
voxels sampled (seeded: reproducible), on isotropic 1 mm working copies of both images (thick axial
slices made the pyramid useless along S-I: 5 mm slices shrunk by 4 left 4 slices, and the fit diverged).
Metric ``auto`` (default): with the follow-up cord mask, Mattes mutual information restricted to the cord
and 10 mm around it (where the lesions are; measured best on the phantoms: 0.2-0.5 mm); without one,
correlation over the whole field of view (Mattes diverged there on a thick-slice axial T2*w pair). The
transform's centre of rotation is the follow-up's centre; its initial translation comes from the
scanner coordinates (``init="header"``, default: sessions of one subject are acquired in the same
scanner frame, and the fields of view may differ) or from SimpleITK's ``CenteredTransformInitializer``
(``"geometry"``: image centres; ``"moments"``: intensity centres of mass).

nibabel affines are RAS+; ITK's physical space is LPS: both are converted here and only here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import SimpleITK as sitk

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class RegistrationSettings:
    """How to register (every field is recorded beside the change table)."""

    metric: str = "auto"              # "auto", "mattes" (mutual information) or "correlation"
    histogram_bins: int = 50
    sampling_percentage: float = 0.10    # of the voxels, random, per level
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_mm: tuple[float, ...] = (2.0, 1.0, 0.0)
    iterations: int = 300
    init: str = "header"              # "header", "geometry" or "moments"
    seed: int = 17                    # metric sampling seed: the same inputs give the same transform
    working_mm: float | None = 1.0    # isotropic working grid; None: each image's own grid
    mask_margin_mm: float = 10.0      # the metric region: follow-up cord mask dilated this much
    # ITK's multithreaded filters and metric add partial sums in an order that depends on the thread count
    # and scheduling (the transform's last digits changed run to run); one thread: the same transform on
    # every machine, ~0.3 s per pair. None: SimpleITK's default (faster, not reproducible)
    threads: int | None = 1


@dataclass(frozen=True)
class RigidRegistration:
    """The fitted transform (follow-up -> baseline physical points) and how well it fits."""

    transform: sitk.Euler3DTransform
    final_metric: float
    iterations: int
    stop_condition: str
    ncc: float                        # normalised cross-correlation of the images after registration
    settings: RegistrationSettings
    metric: str = "mattes"            # the metric used ("auto" resolved)
    masked: bool = False              # the metric was restricted to the follow-up cord region

    @property
    def rotation_deg(self) -> tuple[float, float, float]:
        return tuple(math.degrees(a) for a in (self.transform.GetAngleX(), self.transform.GetAngleY(),
                                                self.transform.GetAngleZ()))  # type: ignore[return-value]

    def followup_to_baseline_ras(self) -> np.ndarray:
        """4x4 matrix: follow-up world (RAS mm) -> baseline world (RAS mm)."""
        m = np.eye(4)
        m[:3, :3] = np.asarray(self.transform.GetMatrix()).reshape(3, 3)
        centre = np.asarray(self.transform.GetCenter())
        m[:3, 3] = np.asarray(self.transform.GetTranslation()) + centre - m[:3, :3] @ centre
        return _RAS_TO_LPS @ m @ _RAS_TO_LPS

    def summary(self) -> dict:
        """JSON-ready record: parameters, the RAS matrix and the quality figures."""
        return {
            "Transform": "Euler3DTransform (SimpleITK/ITK; maps follow-up points to baseline points, LPS)",
            "Parameters": [float(p) for p in self.transform.GetParameters()],
            "ParameterNames": ["angle_x_rad", "angle_y_rad", "angle_z_rad",
                               "translation_x_mm", "translation_y_mm", "translation_z_mm"],
            "CenterLPS": [float(c) for c in self.transform.GetCenter()],
            "RotationDegrees": [round(a, 4) for a in self.rotation_deg],
            "FollowupToBaselineRAS": np.round(self.followup_to_baseline_ras(), 6).tolist(),
            "FinalMetricValue": float(self.final_metric),
            "Metric": self.metric,
            "MetricRegion": f"follow-up cord + {self.settings.mask_margin_mm} mm" if self.masked else "image",
            "Iterations": int(self.iterations),
            "StopCondition": self.stop_condition,
            "NormalizedCrossCorrelation": float(self.ncc),
            "Settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self.settings).items()},
        }


def to_sitk(img: nib.Nifti1Image, data: np.ndarray | None = None) -> sitk.Image:
    """A nibabel image (or ``data`` on its grid) as a SimpleITK image with the same physical geometry."""
    array = np.asanyarray(img.dataobj) if data is None else data
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    # ITK arrays are z, y, x
    out = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    lps = _RAS_TO_LPS @ np.asarray(img.affine, float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    out.SetSpacing([float(s) for s in spacing])
    out.SetDirection([float(d) for d in (lps[:3, :3] / spacing).ravel()])
    out.SetOrigin([float(o) for o in lps[:3, 3]])
    return out


def from_sitk(image: sitk.Image) -> np.ndarray:
    """Voxels of a SimpleITK image in nibabel's [i, j, k] order."""
    return np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))


def _initial(fixed: sitk.Image, moving: sitk.Image, init: str) -> sitk.Euler3DTransform:
    if init in ("geometry", "moments"):
        how = sitk.CenteredTransformInitializerFilter.GEOMETRY if init == "geometry" \
            else sitk.CenteredTransformInitializerFilter.MOMENTS
        start = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(), how)
        return sitk.Euler3DTransform(start)
    if init != "header":
        raise ValueError(f"unknown registration init {init!r}: expected header, geometry or moments")
    centre = fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fixed.GetSize()])
    transform = sitk.Euler3DTransform()
    transform.SetCenter(centre)
    return transform


def _method(settings: RegistrationSettings, metric: str) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    if metric == "mattes":
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.histogram_bins)
    elif metric == "correlation":
        reg.SetMetricAsCorrelation()
    else:
        raise ValueError(f"unknown registration metric {settings.metric!r}: expected mattes or correlation")
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(settings.sampling_percentage, settings.seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4,
                                                 numberOfIterations=settings.iterations,
                                                 gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(settings.shrink_factors))
    reg.SetSmoothingSigmasPerLevel(list(settings.smoothing_mm))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return reg


def register_rigid(followup: nib.Nifti1Image, baseline: nib.Nifti1Image,
                   settings: RegistrationSettings | None = None,
                   followup_cord: nib.Nifti1Image | None = None) -> RigidRegistration:
    """Rigidly register the baseline image to the follow-up image (both nibabel, any grids);
    ``followup_cord``: its cord mask (on the follow-up grid), the metric's region with ``auto``/``mattes``."""
    settings = settings or RegistrationSettings()
    if not settings.threads:
        return _register(followup, baseline, settings, followup_cord)
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(settings.threads)  # every filter of the pair, not
    try:                                                                   # only the registration method
        return _register(followup, baseline, settings, followup_cord)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def _register(followup: nib.Nifti1Image, baseline: nib.Nifti1Image, settings: RegistrationSettings,
              followup_cord: nib.Nifti1Image | None) -> RigidRegistration:
    if settings.metric not in ("auto", "mattes", "correlation"):
        raise ValueError(f"unknown registration metric {settings.metric!r}: "
                         "expected auto, mattes or correlation")
    metric = settings.metric if settings.metric != "auto" else ("mattes" if followup_cord is not None
                                                                else "correlation")
    fixed = sitk.Cast(to_sitk(followup), sitk.sitkFloat32)
    moving = sitk.Cast(to_sitk(baseline), sitk.sitkFloat32)
    work_fixed, work_moving = _working(fixed, settings), _working(moving, settings)
    reg = _method(settings, metric)
    masked = followup_cord is not None and np.asanyarray(followup_cord.dataobj).any()
    if masked:
        region = _cord_region(followup_cord, settings.mask_margin_mm)
        reg.SetMetricFixedMask(sitk.Resample(region, work_fixed, sitk.Transform(), sitk.sitkNearestNeighbor,
                                             0))
    reg.SetInitialTransform(_initial(work_fixed, work_moving, settings.init), inPlace=False)
    out = reg.Execute(work_fixed, work_moving)
    transform = sitk.Euler3DTransform(sitk.CompositeTransform(out).GetNthTransform(0)) \
        if out.GetName() == "CompositeTransform" else sitk.Euler3DTransform(out)
    ncc = _ncc(fixed, moving, transform)
    return RigidRegistration(transform, float(reg.GetMetricValue()), int(reg.GetOptimizerIteration()),
                             reg.GetOptimizerStopConditionDescription(), ncc, settings, metric, bool(masked))


def _working(image: sitk.Image, settings: RegistrationSettings) -> sitk.Image:
    """An isotropic copy (linear interpolation) on the image's own orientation and extent."""
    if not settings.working_mm:
        return image
    mm = float(settings.working_mm)
    size = [max(1, int(round(n * s / mm))) for n, s in zip(image.GetSize(), image.GetSpacing(), strict=True)]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), [mm] * 3,
                         image.GetDirection(), 0.0, image.GetPixelID())


def _cord_region(cord: nib.Nifti1Image, margin_mm: float) -> sitk.Image:
    """The cord mask dilated by ``margin_mm`` (Euclidean, in mm), as a SimpleITK mask on its grid."""
    from scipy import ndimage

    inside = np.asanyarray(cord.dataobj) > 0
    zooms = [float(z) for z in cord.header.get_zooms()[:3]]
    near = ndimage.distance_transform_edt(~inside, sampling=zooms) <= margin_mm
    return to_sitk(cord, near.astype(np.uint8))


def _ncc(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> float:
    """Pearson correlation of the follow-up and the resampled baseline where the baseline covers it."""
    warped = from_sitk(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving)
    cover = from_sitk(sitk.Resample(ones, fixed, transform, sitk.sitkNearestNeighbor, 0)) > 0
    a, b = from_sitk(fixed)[cover].astype(float), warped[cover].astype(float)
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def tfm_text(transform: sitk.Transform) -> bytes:
    """The ITK ``.tfm`` text of a transform (SimpleITK writes files only: a temporary file, read back)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "transform.tfm"
        sitk.WriteTransform(transform, str(path))
        return path.read_bytes()


def resample_labels(labels: np.ndarray, source: nib.Nifti1Image, target: nib.Nifti1Image,
                    transform: sitk.Transform) -> np.ndarray:
    """Integer labels on ``source``'s grid -> ``target``'s grid, nearest neighbour through ``transform``
    (target points -> source points); outside the source: 0."""
    moving = to_sitk(source, labels.astype(np.int32))
    grid = to_sitk(target, np.zeros(target.shape[:3], np.uint8))
    return from_sitk(sitk.Resample(moving, grid, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkInt32))
