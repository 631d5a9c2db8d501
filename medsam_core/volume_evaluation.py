"""3-D zero-shot accuracy of propagation on labelled volumes, with the CVPR 2024 prompt protocol.

Two layouts: ``images/<case>.nii.gz`` + ``labels/<case>.nii.gz``, and nnU-Net's raw
``imagesTr/<case>_0000.nii.gz`` + ``labelsTr/<case>.nii.gz``. Each label value is
one object (or all labels > 0 together with ``binary``), prompted as the challenge
did: the z range is the object's extent, the key slice its middle
(``key_slice_of``), the box the object's tight box on that slice (inclusive max
index, as the 2-D evaluation does). Scores are 3-D: Dice over the whole volume,
and the normalised surface Dice with the tolerance in millimetres, distances
measured with the volume's voxel spacing.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

if TYPE_CHECKING:
    from nibabel.spatialimages import SpatialImage

    from medsam_core.volume import Volume

from medsam_core.errors import MedsamError
from medsam_core.metrics import dice, normalized_surface_dice
from medsam_core.predictor import Predictor
from medsam_core.propagation import DEFAULT_SCHEME, Scheme, SliceEncoder, get_scheme, key_slice_of, propagate

NSD_TOLERANCE_MM = 2.0
VOLUME_LAYOUTS = (("images", "labels", ""), ("imagesTr", "labelsTr", "_0000"))
NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class VolumePair:
    case: str
    image: Path
    labels: Path


@dataclass(frozen=True)
class ObjectPrompt:
    label: int
    key_slice: int
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 on the key slice, display pixels
    z_range: tuple[int, int]


@dataclass
class ObjectScore:
    label: int
    dice: float
    nsd: float
    key_slice: int
    z_range: tuple[int, int]
    slices: int
    decode_ms: float


@dataclass
class CaseScore:
    case: str
    objects: list[ObjectScore] = field(default_factory=list)
    encoded_slices: int = 0
    encode_ms: float = 0.0
    total_ms: float = 0.0

    @property
    def dice(self) -> float:
        return float(np.mean([o.dice for o in self.objects]))

    @property
    def nsd(self) -> float:
        return float(np.mean([o.nsd for o in self.objects]))

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["dice"], out["nsd"] = round(self.dice, 4), round(self.nsd, 4)
        for obj in out["objects"]:
            obj["dice"], obj["nsd"] = round(obj["dice"], 4), round(obj["nsd"], 4)
            obj["decode_ms"] = round(obj["decode_ms"], 1)
        out["encode_ms"], out["total_ms"] = round(self.encode_ms, 1), round(self.total_ms, 1)
        return out


def _case_name(path: Path, tail: str) -> str | None:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            stem = name[: -len(suffix)]
            return stem[: -len(tail)] if tail and stem.endswith(tail) else (None if tail else stem)
    return None


def _labels_by_case(folder: Path) -> dict[str, Path]:
    found = {}
    for path in folder.iterdir():
        case = _case_name(path, "")
        if case is not None:
            found[case] = path
    return found


def find_volume_pairs(data_dir: str | Path) -> list[VolumePair]:
    root = Path(data_dir)
    if not root.is_dir():
        raise MedsamError(f"{root} is not a folder")
    for image_dir, label_dir, tail in VOLUME_LAYOUTS:
        if (root / image_dir).is_dir() and (root / label_dir).is_dir():
            labels = _labels_by_case(root / label_dir)
            pairs = []
            for path in sorted((root / image_dir).iterdir()):
                case = _case_name(path, tail)
                if case is not None and case in labels:
                    pairs.append(VolumePair(case, path, labels[case]))
            if not pairs:
                raise MedsamError(
                    f"{root}: no NIfTI volume in {image_dir}/ has a label map with the same case name in {label_dir}/"
                )
            return pairs
    raise MedsamError(
        f"{root} has neither images/ + labels/ (<case>.nii.gz pairs) nor nnU-Net's imagesTr/ + labelsTr/ "
        "(<case>_0000.nii.gz with <case>.nii.gz)"
    )


def prompt_for(mask: np.ndarray, label: int) -> ObjectPrompt | None:
    """The CVPR 2024 prompt of one object's (Z, H, W) mask: its z extent, middle slice and tight box there."""
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    if zs.size == 0:
        return None
    z0, z1 = int(zs[0]), int(zs[-1])
    key = key_slice_of(z0, z1)
    ys, xs = np.nonzero(mask[key])
    x0, y0 = int(xs.min()), int(ys.min())
    box = (x0, y0, max(int(xs.max()), x0 + 1), max(int(ys.max()), y0 + 1))
    return ObjectPrompt(label, key, box, (z0, z1))


def object_masks(labels: np.ndarray, binary: bool) -> Iterator[tuple[int, np.ndarray]]:
    """Each label value > 0 as one object, or everything > 0 as object 1 when ``binary``."""
    if binary:
        if labels.any():
            yield 1, labels > 0
        return
    for value in np.unique(labels):
        if value > 0:
            yield int(value), labels == value


def evaluate_case(
    predictor: Predictor,
    case: str,
    slices: SliceEncoder,
    labels: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    *,
    binary: bool = False,
    scheme: str | Scheme = DEFAULT_SCHEME,
    nsd_tolerance: float = NSD_TOLERANCE_MM,
) -> CaseScore:
    """Propagate every object of one volume; its slices are encoded once for all objects."""
    score = CaseScore(case)
    for label, mask in object_masks(labels, binary):
        prompt = prompt_for(mask, label)
        if prompt is None:
            continue
        result = propagate(
            predictor,
            slices,
            labels.shape[0],
            prompt.key_slice,
            prompt.box,
            prompt.z_range,
            scheme=scheme,
        )
        score.objects.append(
            ObjectScore(
                label=label,
                dice=dice(result.masks, mask),
                nsd=normalized_surface_dice(result.masks, mask, nsd_tolerance, spacing=spacing_zyx),
                key_slice=prompt.key_slice,
                z_range=prompt.z_range,
                slices=len(result.slices),
                decode_ms=result.decode_ms,
            )
        )
        score.total_ms += result.total_ms
    score.encoded_slices = slices.slices
    score.encode_ms = slices.encode_ms
    return score


def evaluate_volumes(
    predictor: Predictor,
    pairs: list[VolumePair],
    *,
    binary: bool = False,
    scheme: str | Scheme = DEFAULT_SCHEME,
    nsd_tolerance: float = NSD_TOLERANCE_MM,
    window: str | None = None,
    max_voxels: int | None = None,
) -> Iterator[CaseScore]:
    """One score per case that has at least one labelled object; labels are put onto the image's voxel
    grid through both affines, so a label map stored in another orientation still lines up."""
    import nibabel as nib

    from medsam_core.volume import labels_onto, read_volume

    spec = get_scheme(scheme)
    for pair in pairs:
        volume = read_volume(pair.image) if max_voxels is None else read_volume(pair.image, max_voxels=max_voxels)
        labels = labels_onto(volume, cast("SpatialImage", nib.load(pair.labels)))
        col, row, sl = volume.spacing
        encoder = SliceEncoder(predictor, partial(_slice_rgb, volume, window))
        score = evaluate_case(
            predictor,
            pair.case,
            encoder,
            labels,
            (float(sl), float(row), float(col)),
            binary=binary,
            scheme=spec,
            nsd_tolerance=nsd_tolerance,
        )
        if score.objects:
            yield score


def summarize_volumes(scores: list[CaseScore]) -> dict[str, Any]:
    """Means over cases of each case's mean over its objects, as the 2-D summary averages over images."""
    if not scores:
        raise MedsamError("no volume with a labelled object was evaluated")
    d = [s.dice for s in scores]
    n = [s.nsd for s in scores]
    return {
        "cases": len(scores),
        "objects": sum(len(s.objects) for s in scores),
        "mean_dice": round(statistics.fmean(d), 4),
        "median_dice": round(statistics.median(d), 4),
        "mean_nsd": round(statistics.fmean(n), 4),
        "median_nsd": round(statistics.median(n), 4),
    }


def _slice_rgb(volume: Volume, window: str | None, z: int) -> np.ndarray:
    """The slice as the 2-D tools show it to the encoder, so its cache entry is the one they share."""
    return volume.slice_image(z).display(window=window)
