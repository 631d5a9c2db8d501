"""Project zips in and out, shared by the REST API (``portal.web.api.export``) and the UI's admin tab.

Export a project's annotations as a zip, and import a zip of images/ + masks/.

Export formats (each zip has a ``manifest.json``):
* ``npy`` / ``png``: ``images/`` (the uploaded files, 2-D images only) and
  ``masks/<label>/<name>.npy|png`` (uint8 0/1; the PNG is a palette PNG of values 0/1 drawn
  in the label's colour, ``label_colour``) for every annotation at its latest revision.
  This layout imports back as it is.
* ``seed``: MedSAM's training layout ``imgs/`` + ``gts/`` written by the same
  ``medsam_core.prepare`` recipe as ``medsam prepare``; gts values are the project's label
  classes in order (1..L). Slices of volumes come in as 2-D images: those with a 2-D
  annotation, and every slice a 3-D label map marks.
* ``nifti``, ``dicom-seg``, ``nnunet``: the 3-D label maps of volumes (``volume_transfer``).

Import takes ``images/<stem>.*`` with ``masks/<stem>.*`` (0/255 or values 1..L, one per
label class; a one-value mask in a project of several labels is taken as the first label,
and the report's notes say so) or ``masks/<label>/<stem>.*``. Everything is read and checked before the
first image is stored, so a bad zip writes nothing. Imported masks become *submitted*
annotations by the importing user: they still need a reviewer, like any other labels.
"""

from __future__ import annotations

import json
import re
import zipfile
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image as PILImage

from medsam_core.errors import MedsamError
from medsam_core.evaluation import read_labels
from medsam_core.imageio import read_image
from portal.store.errors import ConflictError, StoreError
from portal.store.label_colours import label_colour, rgb_of
from portal.store.models import AnnotationStatus, User
from portal.store.services import annotations, images
from portal.store.services.masks import load_mask
from portal.store.services.projects import get_project, label_names
from portal.web.api.masks import mask_npy_bytes, png_bytes
from portal.web.api.uploads import sniff_suffix
from portal.web.volume_transfer import VOLUME_FORMATS, plan_volumes, volume_slice_maps, write_volumes
from portal.web.zip_reading import (
    DAMAGED,
    UNZIP_FACTOR,
    Budget,
    entries,
    extract,
    name_stem,
    shown,
    why,
)

FORMATS = ("npy", "png", "seed", "nifti", "dicom-seg", "nnunet")  # the last three: ``volume_transfer``
STEM_CHARS = 40  # of an image's name inside an export; the id in front keeps names unique


def scratch_dir(settings) -> Path:
    """Where export and import work folders live (on the data disk, not /tmp: zips can be large)."""
    folder = settings.data_dir / "exports"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "x"


def _name(image) -> str:
    """Entry and file names in an export: the id makes them unique, the capped stem keeps them readable and
    short enough for any file system, whatever the upload was called."""
    return f"{image.id}_{_stem(image.filename)}" + (f"_s{image.slice_index:03d}" if image.num_slices > 1 else "")


def _stem(filename: str) -> str:
    return _safe(name_stem(filename))[:STEM_CHARS].rstrip("._-") or "x"


def build_export(store, user: User, pid: int, fmt: str, approved_only: bool, size: int, folder: Path) -> Path:
    """Rows are read in one short transaction; the zip is written after it, so no lock is held meanwhile."""
    with store.transaction() as session:
        project = get_project(session, user, pid)
        labels, project_name, classes = label_names(project), project.name, list(project.label_classes)
        rows = annotations.current_annotations(
            session, user, pid, {AnnotationStatus.approved} if approved_only else None
        )
        by_id = {i.id: i for i in images.list_images(session, user, pid)}
    plan = plan_volumes(store, user, pid, fmt, approved_only) if fmt in VOLUME_FORMATS else []
    zip_path = folder / f"{_safe(project_name)}_{fmt}.zip"
    items = []
    extra: dict = {}
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        if fmt in VOLUME_FORMATS:
            project = (pid, project_name, labels)
            extra = write_volumes(store, user, project, fmt, approved_only, plan, zf, folder / "volumes", _stem)
            items = extra.pop("items")
        elif fmt in ("npy", "png"):
            written: dict[int, str] = {}
            for row in rows:
                ann, rev, image = row["annotation"], row["revision"], by_id[row["annotation"].image_id]
                mask = load_mask(store.blobs, rev.blob_sha)
                path = f"masks/{_safe(ann.label)}/{_name(image)}.{fmt}"
                palette = [rgb_of(label_colour(classes, ann.label))]
                zf.writestr(path, mask_npy_bytes(mask) if fmt == "npy" else png_bytes(mask > 0, palette))
                image_path = None
                if image.num_slices == 1:
                    if image.id not in written:
                        data = store.blobs.get_bytes(image.blob_sha)
                        written[image.id] = f"images/{_name(image)}{sniff_suffix(data[:544]) or ''}"
                        zf.writestr(written[image.id], data)
                    image_path = written[image.id]
                items.append(
                    {
                        "image_id": image.id,
                        "filename": image.filename,
                        "slice_index": image.slice_index,
                        "label": ann.label,
                        "status": ann.status.value,
                        "revision": rev.number,
                        "author": row["author"],
                        "model_version_id": rev.model_version_id,
                        "mask": path,
                        "image": image_path,
                    }
                )
        else:
            slices = volume_slice_maps(store, user, pid, approved_only)
            items = _seed(store, rows, slices, by_id, labels, size, folder, zf)
        zf.writestr(
            "manifest.json",
            json.dumps(
                {
                    "project": {"id": pid, "name": project_name, "labels": labels},
                    "format": fmt,
                    "approved_only": approved_only,
                    "exported_at": datetime.now(timezone.utc).isoformat(),
                    "exported_by": user.username,
                    "items": items,
                    **extra,
                },
                indent=1,
            ),
        )
    return zip_path


def _seed(store, rows, slices, by_id, labels, size: int, folder: Path, zf: zipfile.ZipFile) -> list[dict]:
    """One label map per image (value = label class index), then MedSAM's own preprocessing.

    ``slices``: (volume id, z, label map) of the slices 3-D label maps mark; a slice with a 2-D
    annotation as well gets both, the 3-D map winning where they overlap."""
    from medsam_core.prepare import prepare_folder

    src, out = folder / "src", folder / "out"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    maps: dict[int, np.ndarray] = {}
    for row in rows:
        ann, image = row["annotation"], by_id[row["annotation"].image_id]
        target = maps.setdefault(image.id, np.zeros((image.height, image.width), np.uint8))
        target[load_mask(store.blobs, row["revision"].blob_sha) > 0] = (
            labels.index(ann.label) + 1 if ann.label in labels else 0
        )
    slice_ids = {(i.volume_id, i.slice_index): i.id for i in by_id.values() if i.volume_id is not None}
    for volume_id, z, label_map in slices:
        target = maps.setdefault(slice_ids[(volume_id, z)], np.zeros(label_map.shape, np.uint8))
        target[label_map > 0] = label_map[label_map > 0]
    for image_id, label_map in maps.items():
        image = by_id[image_id]
        rgb = images.display_pixels(store.blobs, image, store.settings)
        PILImage.fromarray(rgb).save(src / "images" / f"{_name(image)}.png")
        PILImage.fromarray(label_map).save(src / "masks" / f"{_name(image)}.png")
    if maps:
        prepare_folder(src, out, size=size, max_pixels=store.settings.max_image_pixels)
    for sub in ("imgs", "gts"):
        for path in sorted((out / sub).glob("*.npy")) if (out / sub).is_dir() else []:
            zf.write(path, f"{sub}/{path.name}")
    return [
        {
            "image_id": i,
            "filename": by_id[i].filename,
            "slice_index": by_id[i].slice_index,
            "name": _name(by_id[i]),
            "label_ids": {lab: k + 1 for k, lab in enumerate(labels)},
            "written": (out / "gts" / f"{_name(by_id[i])}.npy").exists(),
        }
        for i in maps
    ]


def _plain(exc: Exception, path: Path, entry: str) -> str:
    """The readers name the file they read, a server path here: name the zip entry instead."""
    return f"{shown(entry)}: " + str(exc).replace(f"{path}: ", "").replace(str(path), "the file")


def _plan(
    store, zf: zipfile.ZipFile, zip_name: str, labels: list[str], folder: Path, notes: list[str]
) -> tuple[list, list]:
    """Every image and mask read and checked; (plan, problems), with what was inferred appended to ``notes``.
    Damaged or hostile zips raise StoreError."""
    settings = store.settings
    limit = settings.max_upload_mb * 1024 * 1024
    found_images, found_masks = entries(zf, limit)
    if not found_images:
        raise StoreError("the zip has no images/ folder with images in it")
    budget = Budget(limit * UNZIP_FACTOR)
    orphans = sorted({stem for stem, _ in found_masks} - set(found_images))
    errors, plan = [f"masks for '{s}' but no images/{s}.*" for s in orphans], []
    for n, (stem, info) in enumerate(sorted(found_images.items())):
        path = extract(zf, info, folder, str(n), budget, zip_name)
        try:
            image = read_image(path, max_pixels=settings.max_image_pixels)
        except MedsamError as exc:
            errors.append(_plain(exc, path, info.filename))
            continue
        targets = []
        for (mstem, folder_label), minfo in found_masks.items():
            if mstem != stem:
                continue
            mpath = extract(zf, minfo, folder, f"{n}_m{len(targets)}", budget, zip_name)
            try:
                mask = read_labels(mpath, settings.max_image_pixels)
                if image.num_slices > 1 or mask.shape != (image.height, image.width):
                    raise MedsamError(
                        f"the mask is {mask.shape}; the image is "
                        f"{image.height}x{image.width} with {image.num_slices} slice(s)"
                    )
                pairs, note = _label_masks(mask, folder_label, labels, "the mask")
                targets += pairs
                if note:
                    notes.append(f"{shown(minfo.filename)}: {note}")
            except MedsamError as exc:
                errors.append(_plain(exc, mpath, minfo.filename))
        plan.append((stem, info.filename, path, targets))
    return plan, errors


def import_zip(store, user: User, pid: int, zip_path: Path, folder: Path, zip_name: str) -> dict:
    """A bad zip, however it is bad, is a StoreError raised before the first image is stored.

    Reading and checking the zip takes long and writes nothing, so it runs
    outside any transaction; the writes then share one, so an import lands
    whole or not at all.
    """
    with store.transaction() as session:
        labels = label_names(get_project(session, user, pid))
    try:
        zf = zipfile.ZipFile(zip_path)
    except DAMAGED as exc:
        raise StoreError(f"'{shown(zip_name)}' is not a readable zip: {why(exc)}") from None
    with zf:
        notes: list[str] = []
        plan, errors = _plan(store, zf, zip_name, labels, folder, notes)
    if errors:  # nothing was stored yet
        raise StoreError(f"nothing was imported; {len(errors)} problem(s): " + "; ".join(errors[:20]))
    with store.transaction() as session:
        report = _store_plan(session, store.blobs, store.settings, user, pid, plan, zip_name)
    return {**report, "notes": notes}


def _store_plan(session, blobs, settings, user: User, pid: int, plan: list, zip_name: str) -> dict:
    report: dict = {"images": 0, "annotations": 0, "skipped": []}
    for _key, filename, path, targets in plan:
        rows = images.add_image(session, blobs, settings, user, pid, path, PurePosixPath(filename).name)
        report["images"] += 1
        for label, mask in targets:
            try:  # a lost race rolls back only its own savepoint
                annotations.save_revision(
                    session, blobs, user, rows[0].id, label, mask, 0, submit=True, comment=f"imported from {zip_name}"
                )
                report["annotations"] += 1
            except ConflictError:
                report["skipped"].append(f"{filename} '{label}': already annotated; kept the existing work")
    return report


def _label_masks(mask: np.ndarray, folder_label: str | None, labels: list[str], name: str) -> tuple[list, str | None]:
    """The (label, mask) pairs of one mask file, and a note when a label was inferred rather than given.

    A mask with one non-zero value (the ordinary 0/255 or 0/1 file) in a
    project with several labels and no ``masks/<label>/`` folder is taken as
    the first label and the import report says so: refusing it would turn
    every plain binary mask away, and the annotations still go to a reviewer.
    """
    values = [int(v) for v in np.unique(mask) if v != 0]
    if folder_label is not None:
        if folder_label not in labels:
            raise MedsamError(
                f"'{folder_label}' is not a label class of this project ({', '.join(labels)}); use {_folders(labels)}"
            )
        return ([(folder_label, mask > 0)] if values else []), None
    if values and max(values) <= len(labels):
        return [(labels[v - 1], mask == v) for v in values], None
    if len(values) == 1:
        note = (
            None
            if len(labels) == 1
            else (
                f"a one-value mask (0/{values[0]}) was taken as '{labels[0]}', the first label; "
                f"put it in {_folders(labels[1:])} for another label"
            )
        )
        return [(labels[0], mask > 0)], note
    raise MedsamError(
        f"{name} has values {values[:10]}; use 0/255 for one label, values 1..{len(labels)} for "
        f"the classes {', '.join(labels)} in order, or one folder per label: {_folders(labels)}"
    )


def _folders(labels: list[str]) -> str:
    """The actual folder names, never a ``<label>`` placeholder (a status line rendered as HTML eats it)."""
    return " or ".join(f"masks/{label}/" for label in labels)
