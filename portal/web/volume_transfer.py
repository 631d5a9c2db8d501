"""A project's 3-D label maps in a zip: NIfTI, DICOM-SEG or nnU-Net v2's raw layout (``transfer.build_export``).

* ``nifti``: ``labels/<case>.nii.gz`` per volume, uint8 valued by the project's
  label classes in order (1..L), in the source's voxel order and affine, so it
  overlays the uploaded file (or, for a DICOM series, what dcm2niix makes of it).
* ``dicom-seg``: ``seg/<case>.dcm`` per DICOM-series volume, one segment per
  label, referencing the stored (de-identified) slices; NIfTI volumes are listed
  in the manifest's ``skipped``, since a SEG needs source instances to reference.
* ``nnunet``: ``imagesTr/<case>_0000.nii.gz`` (the volume's values on its grid),
  ``labelsTr/<case>.nii.gz`` and ``dataset.json``: unzip it as
  ``nnUNet_raw/DatasetXXX_Name`` and train.

Each volume is read in its own short transaction and written before the next is
read, so one decoded volume is held at a time and no lock is held while writing.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from medsam_core import nnunet
from medsam_core.dicom_seg import write_dicom_seg
from medsam_core.volume import write_label_nifti
from portal.store.errors import StoreError
from portal.store.models import User
from portal.store.services.volume_export import ExportCase, export_case, labelled_volumes
from portal.store.services.volumes_labels import combined_labels

VOLUME_FORMATS = ("nifti", "dicom-seg", "nnunet")


def plan_volumes(store, user: User, pid: int, fmt: str, approved_only: bool) -> list[tuple[int, str, str, str]]:
    """(id, filename, source format, nnU-Net channel) of each volume to export; a refusal is raised here,
    before the zip is opened, so a refused export writes nothing."""
    with store.transaction() as db:
        rows = [
            (r.id, r.filename, r.source_format, nnunet.channel_name(r.modality))
            for r in labelled_volumes(db, user, pid, approved_only=approved_only)
        ]
    which = "an approved" if approved_only else "a"
    if not rows:
        raise StoreError(
            f"the project has no volume with {which} 3-D label map to export as {fmt}; "
            "the npy, png and seed formats export 2-D annotations"
        )
    if fmt == "dicom-seg" and all(source != "dicom" for _, _, source, _ in rows):
        raise StoreError(
            "none of the project's labelled volumes is a DICOM series, and a DICOM-SEG must reference "
            "the series it was drawn on; export them as nifti instead"
        )
    channels = {channel for *_, channel in rows}
    if fmt == "nnunet" and len(channels) > 1:
        raise StoreError(
            f"nnU-Net trains on one kind of image per dataset, and these volumes are {', '.join(sorted(channels))}; "
            "put each modality in a project of its own"
        )
    return rows


def write_volumes(
    store,
    user: User,
    project: tuple[int, str, list[str]],
    fmt: str,
    approved_only: bool,
    rows: list[tuple[int, str, str, str]],
    zf: zipfile.ZipFile,
    work: Path,
    stem: Callable[[str], str],
) -> dict[str, Any]:
    """The format's files for ``rows`` (``plan_volumes``) into ``zf``; the manifest's ``items`` (one per volume
    written) and ``skipped``. ``project``: (id, name, label classes in order). A case is named
    ``<volume id>_<stem(filename)>``: unique by the id, readable by the stem (nnU-Net splits nothing off a
    name but ``_0000.nii.gz``). ``work``: a scratch folder, emptied after each volume."""
    _, project_name, labels = project
    items: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for vid, filename, source, _ in rows:
        if fmt == "dicom-seg" and source != "dicom":
            skipped.append({"volume_id": vid, "filename": filename, "reason": "a NIfTI volume: use the nifti format"})
            continue
        with store.transaction() as db:
            case = export_case(
                db, store.blobs, store.settings, user, vid, approved_only=approved_only, with_sources=fmt == "dicom-seg"
            )
        if fmt == "dicom-seg" and not case.labels.any():
            skipped.append({"volume_id": vid, "filename": filename, "reason": "every label map is empty"})
            continue
        work.mkdir(parents=True, exist_ok=True)
        files = _write_case(fmt, case, f"{vid}_{stem(filename)}", work)
        for rel, path in files.items():
            zf.write(path, rel)
        shutil.rmtree(work)
        items.append(_item(case, files))
    if fmt == "nnunet":
        dataset = nnunet.dataset_json(project_name, rows[0][3], labels, len(items))
        zf.writestr("dataset.json", json.dumps(dataset, indent=1))
    return {"items": items, "skipped": skipped}


def _write_case(fmt: str, case: ExportCase, name: str, work: Path) -> dict[str, Path]:
    """{path in the zip: file written} for one volume."""
    if fmt == "nifti":
        return {f"labels/{name}.nii.gz": write_label_nifti(case.labels, case.volume, work / f"{name}.nii.gz")}
    if fmt == "dicom-seg":
        assert case.sources is not None  # asked for above; DICOM volumes only
        return {f"seg/{name}.dcm": write_dicom_seg(case.labels, case.names, case.sources, work / f"{name}.dcm")}
    image, label = nnunet.write_case(work, name, case.volume, case.labels)
    image_rel, label_rel = nnunet.case_paths(name)
    return {image_rel: image, label_rel: label}


def _item(case: ExportCase, files: dict[str, Path]) -> dict[str, Any]:
    volume = case.volume
    return {
        "volume_id": case.volume_id,
        "filename": case.filename,
        "source_format": case.source_format,
        "modality": case.modality,
        "shape_zhw": list(volume.shape),
        "affine": [[float(v) for v in row] for row in volume.affine],
        "spacing_mm": list(volume.spacing),
        "orientation": "".join(volume.orientation),
        "series_instance_uid": volume.series_instance_uid,
        "labels": case.annotations,
        "files": sorted(files),
    }


def volume_slice_maps(store, user: User, pid: int, approved_only: bool) -> Iterator[tuple[int, int, np.ndarray]]:
    """(volume id, z, (H, W) label map) of every slice a 3-D label map marks, for the seed's 2-D layout;
    unmarked slices are left out, as ``medsam prepare`` drops slices without labels."""
    with store.transaction() as db:
        ids = [r.id for r in labelled_volumes(db, user, pid, approved_only=approved_only)]
    for vid in ids:
        with store.transaction() as db:
            labels, _ = combined_labels(db, store.blobs, user, vid, approved_only=approved_only)
        for z in np.flatnonzero(labels.any(axis=(1, 2))):
            yield vid, int(z), labels[z]
