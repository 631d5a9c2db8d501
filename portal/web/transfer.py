"""Project zips in and out, shared by the REST API (``portal.web.api.export``) and the UI's admin tab.

Export a project's annotations as a zip, and import a zip of images/ + masks/.

Export formats (each zip has a ``manifest.json``):
* ``npy`` / ``png``: ``images/`` (the uploaded files, 2-D images only) and
  ``masks/<label>/<name>.npy|png`` (uint8 0/1, or PNG 0/255) for every annotation at its
  latest revision. This layout imports back as it is.
* ``seed``: MedSAM's training layout ``imgs/`` + ``gts/`` written by the same
  ``medsam_core.prepare`` recipe as ``medsam prepare``; gts values are the project's label
  classes in order (1..L).

Import takes ``images/<stem>.*`` with ``masks/<stem>.*`` (0/255 or values 1..L, one per
label class) or ``masks/<label>/<stem>.*``. Everything is read and checked before the
first image is stored, so a bad zip writes nothing. Imported masks become *submitted*
annotations by the importing user: they still need a reviewer, like any other labels.
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image as PILImage

from medsam_core.errors import MedsamError
from medsam_core.evaluation import read_labels
from medsam_core.imageio import read_image
from portal.store.errors import ConflictError, StoreError
from portal.store.models import AnnotationStatus, User
from portal.store.services import annotations, images
from portal.store.services.masks import load_mask
from portal.store.services.projects import get_project, label_names
from portal.web.api.masks import npy_bytes, png_bytes
from portal.web.api.uploads import sniff_suffix

MAX_ZIP_ENTRIES = 20_000
UNZIP_FACTOR = 4  # a zip may expand to this many times the upload limit, no more (zip bombs)
FORMATS = ("npy", "png", "seed")


def scratch_dir(settings) -> Path:
    """Where export and import work folders live (on the data disk, not /tmp: zips can be large)."""
    folder = settings.data_dir / "exports"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "x"


def _name(image) -> str:
    stem = _safe(re.sub(r"(\.nii\.gz|\.[A-Za-z0-9]+)$", "", image.filename))
    return f"{image.id}_{stem}" + (f"_s{image.slice_index:03d}" if image.num_slices > 1 else "")


def build_export(store, user: User, pid: int, fmt: str, approved_only: bool, size: int, folder: Path) -> Path:
    with store.transaction() as session:
        project = get_project(session, user, pid)
        labels, project_name = label_names(project), project.name
    rows = annotations.current_annotations(store, user, pid, {AnnotationStatus.approved} if approved_only else None)
    by_id = {i.id: i for i in images.list_images(store, user, pid)}
    zip_path = folder / f"{_safe(project_name)}_{fmt}.zip"
    items = []
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        if fmt in ("npy", "png"):
            written: dict[int, str] = {}
            for row in rows:
                ann, rev, image = row["annotation"], row["revision"], by_id[row["annotation"].image_id]
                mask = load_mask(store, rev.blob_sha)
                path = f"masks/{_safe(ann.label)}/{_name(image)}.{fmt}"
                zf.writestr(path, npy_bytes(mask) if fmt == "npy" else png_bytes(mask))
                image_path = None
                if image.num_slices == 1:
                    if image.id not in written:
                        data = store.blobs.get_bytes(image.blob_sha)
                        written[image.id] = f"images/{_name(image)}{sniff_suffix(data[:544]) or ''}"
                        zf.writestr(written[image.id], data)
                    image_path = written[image.id]
                items.append({"image_id": image.id, "filename": image.filename, "slice_index": image.slice_index,
                              "label": ann.label, "status": ann.status.value, "revision": rev.number,
                              "author": row["author"], "model_version_id": rev.model_version_id,
                              "mask": path, "image": image_path})
        else:
            items = _seed(store, rows, by_id, labels, size, folder, zf)
        zf.writestr("manifest.json", json.dumps({
            "project": {"id": pid, "name": project_name, "labels": labels}, "format": fmt,
            "approved_only": approved_only, "exported_at": datetime.now(timezone.utc).isoformat(),
            "exported_by": user.username, "items": items}, indent=1))
    return zip_path


def _seed(store, rows, by_id, labels, size: int, folder: Path, zf: zipfile.ZipFile) -> list[dict]:
    """One label map per image (value = label class index), then MedSAM's own preprocessing."""
    from medsam_core.prepare import prepare_folder

    src, out = folder / "src", folder / "out"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    maps: dict[int, np.ndarray] = {}
    for row in rows:
        ann, image = row["annotation"], by_id[row["annotation"].image_id]
        target = maps.setdefault(image.id, np.zeros((image.height, image.width), np.uint8))
        target[load_mask(store, row["revision"].blob_sha) > 0] = labels.index(ann.label) + 1 \
            if ann.label in labels else 0
    for image_id, label_map in maps.items():
        image = by_id[image_id]
        PILImage.fromarray(images.display_pixels(store, image)).save(src / "images" / f"{_name(image)}.png")
        PILImage.fromarray(label_map).save(src / "masks" / f"{_name(image)}.png")
    if maps:
        prepare_folder(src, out, size=size, max_pixels=store.settings.max_image_pixels)
    for sub in ("imgs", "gts"):
        for path in sorted((out / sub).glob("*.npy")) if (out / sub).is_dir() else []:
            zf.write(path, f"{sub}/{path.name}")
    return [{"image_id": i, "filename": by_id[i].filename, "slice_index": by_id[i].slice_index,
             "name": _name(by_id[i]), "label_ids": {l: k + 1 for k, l in enumerate(labels)},
             "written": (out / "gts" / f"{_name(by_id[i])}.npy").exists()} for i in maps]


def _entries(zf: zipfile.ZipFile, limit_bytes: int) -> tuple[dict, dict]:
    """({stem: image entry}, {(stem, label folder or None): mask entry})."""
    infos = [i for i in zf.infolist() if not i.is_dir()]
    if len(infos) > MAX_ZIP_ENTRIES:
        raise StoreError(f"the zip holds {len(infos)} files; at most {MAX_ZIP_ENTRIES}")
    if sum(i.file_size for i in infos) > limit_bytes * UNZIP_FACTOR:
        raise StoreError("the zip expands to more than "
                         f"{UNZIP_FACTOR}x the upload limit; split it")
    found_images, found_masks = {}, {}
    for info in infos:
        parts = PurePosixPath(info.filename).parts
        if any(p.startswith(".") or p == "__MACOSX" for p in parts) or info.filename.endswith("manifest.json"):
            continue
        stem = re.sub(r"(\.nii\.gz|\.[A-Za-z0-9]+)$", "", parts[-1])
        if len(parts) >= 2 and parts[-2] == "images":
            found_images[stem] = info
        elif len(parts) >= 2 and parts[-2] == "masks":
            found_masks[(stem, None)] = info
        elif len(parts) >= 3 and parts[-3] == "masks":
            found_masks[(stem, parts[-2])] = info
    return found_images, found_masks


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, folder: Path, index: int) -> Path:
    with zf.open(info) as src:
        head = src.read(544)
    suffix = sniff_suffix(head) or ""
    target = folder / f"{index}{suffix}"
    with zf.open(info) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return target


def import_zip(store, user: User, pid: int, zip_path: Path, folder: Path, zip_name: str) -> dict:
    with store.transaction() as session:
        labels = label_names(get_project(session, user, pid))
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as exc:
        raise StoreError(f"'{zip_name}' is not a readable zip: {exc}") from None
    with zf:
        found_images, found_masks = _entries(zf, store.settings.max_upload_mb * 1024 * 1024)
        if not found_images:
            raise StoreError("the zip has no images/ folder with images in it")
        errors, plan = [], []
        orphans = sorted({stem for stem, _ in found_masks} - set(found_images))
        errors += [f"masks for '{s}' but no images/{s}.*" for s in orphans]
        for n, (stem, info) in enumerate(sorted(found_images.items())):
            try:
                path = _extract(zf, info, folder, n)
                image = read_image(path, max_pixels=store.settings.max_image_pixels)
                targets = []
                for (mstem, folder_label), minfo in found_masks.items():
                    if mstem != stem:
                        continue
                    mask = read_labels(_extract(zf, minfo, folder, f"{n}_m{len(targets)}"))
                    if image.num_slices > 1 or mask.shape != (image.height, image.width):
                        raise MedsamError(f"mask {minfo.filename} is {mask.shape}; the image is "
                                          f"{image.height}x{image.width} with {image.num_slices} slice(s)")
                    targets += _label_masks(mask, folder_label, labels, minfo.filename)
                plan.append((stem, info.filename, path, targets))
            except MedsamError as exc:
                errors.append(f"{info.filename}: {exc}")
    if errors:  # nothing was stored yet
        raise StoreError(f"nothing was imported; {len(errors)} problem(s): " + "; ".join(errors[:20]))
    report = {"images": 0, "annotations": 0, "skipped": []}
    for stem, filename, path, targets in plan:
        rows = images.add_image(store, user, pid, path, PurePosixPath(filename).name)
        report["images"] += 1
        for label, mask in targets:
            try:
                annotations.save_revision(store, user, rows[0].id, label, mask, 0, submit=True,
                                          comment=f"imported from {zip_name}")
                report["annotations"] += 1
            except ConflictError:
                report["skipped"].append(f"{filename} '{label}': already annotated; kept the existing work")
    return report


def _label_masks(mask: np.ndarray, folder_label: str | None, labels: list[str], name: str) -> list:
    values = [int(v) for v in np.unique(mask) if v != 0]
    if folder_label is not None:
        if folder_label not in labels:
            raise MedsamError(f"'{folder_label}' is not a label class of this project ({', '.join(labels)})")
        return [(folder_label, mask > 0)] if values else []
    if values and max(values) <= len(labels):
        return [(labels[v - 1], mask == v) for v in values]
    if len(values) == 1 and len(labels) == 1:
        return [(labels[0], mask > 0)]  # a 0/255 mask for a one-class project
    raise MedsamError(f"{name} has values {values[:10]}; use 0/255 for a one-class project, or 1..{len(labels)} "
                      f"for the classes {', '.join(labels)}, or masks/<label>/ folders")


