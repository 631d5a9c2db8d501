"""nnU-Net v2's raw dataset layout for labelled volumes: ``imagesTr/``, ``labelsTr/`` and ``dataset.json``.

nnU-Net is what most groups train 3-D segmentation with, so a project of
volumes exports straight into its ``nnUNet_raw/DatasetXXX_Name`` folder. Its
rules (``documentation/dataset_format.md``): one image file per channel named
``<case>_<XXXX><file_ending>``, one label file ``<case><file_ending>`` with the
same geometry, and a ``dataset.json`` naming the channels, the labels (background
0, values consecutive) and the number of training cases. nnU-Net reads NIfTI with
SimpleITK, which trusts the qform; nibabel trusts the sform. Image and label are
therefore both written from the one affine, as qform and sform alike, so every
reader sees them on the same grid.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from medsam_core.errors import InvalidImageError
from medsam_core.volume import Volume, nifti_on_grid, write_label_nifti

FILE_ENDING = ".nii.gz"
IMAGES, LABELS = "imagesTr", "labelsTr"


def case_paths(case: str) -> tuple[str, str]:
    """The image (channel 0) and label paths of one case, relative to the dataset folder."""
    return f"{IMAGES}/{case}_0000{FILE_ENDING}", f"{LABELS}/{case}{FILE_ENDING}"


def channel_name(modality: str) -> str:
    """nnU-Net normalises a channel named exactly "CT" with global HU statistics, anything else per image."""
    return "CT" if modality.strip().upper() == "CT" else (modality.strip() or "other")


def write_image_nifti(volume: Volume, path: str | os.PathLike[str]) -> Path:
    """The volume's raw values as NIfTI in its own voxel order (X, Y, Z) and affine (qform and sform).

    Integers keep their type (CT stays int16 HU); floats are written as float32.
    """
    import nibabel as nib

    target = Path(path)
    if not target.name.endswith((".nii", ".nii.gz")):
        raise InvalidImageError(f"A NIfTI image needs a .nii or .nii.gz name, not '{target.name}'.")
    pixels = volume.pixels if volume.pixels.dtype.kind in "iu" else volume.pixels.astype(np.float32)
    image = nifti_on_grid(pixels, volume)
    nib.save(image, str(target))
    return target


def write_case(folder: Path, case: str, volume: Volume, labels: np.ndarray) -> tuple[Path, Path]:
    """One training case: the image as channel 0 and its (Z, H, W) label map, both on the volume's grid."""
    image_rel, label_rel = case_paths(case)
    (folder / IMAGES).mkdir(parents=True, exist_ok=True)
    (folder / LABELS).mkdir(parents=True, exist_ok=True)
    image = write_image_nifti(volume, folder / image_rel)
    label = write_label_nifti(labels, volume, folder / label_rel)
    return image, label


def dataset_json(name: str, channel: str, label_names: list[str], num_training: int, **extra: Any) -> dict[str, Any]:
    """nnU-Net v2's dataset.json: background 0, then ``label_names`` as 1..L in their order."""
    if len(set(label_names)) != len(label_names) or "background" in label_names:
        raise InvalidImageError("nnU-Net needs distinct label names other than 'background'.")
    return {
        "name": name,
        "channel_names": {"0": channel},
        "labels": {"background": 0, **{label: value for value, label in enumerate(label_names, 1)}},
        "numTraining": num_training,
        "file_ending": FILE_ENDING,
        **extra,
    }
