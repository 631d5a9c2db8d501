"""Project exports of volumes: NIfTI label maps on the source grid, DICOM-SEG of the shared CT series read
back with highdicom onto the right slices, nnU-Net v2's raw layout checked against its documented rules,
and the seed's 2-D layout taking the slices a 3-D label map marks."""

from __future__ import annotations

import json
import uuid
import zipfile
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medsam_core.volume import labels_onto
from medsam_core.volume_evaluation import find_volume_pairs
from portal.store.errors import StoreError
from portal.store.models import Role
from portal.store.services import annotations as ann
from portal.store.services import projects, volumes, volumes_labels
from portal.store.services.volumes_read import load_volume
from portal.web.transfer import build_export
from tests.storeutil import new_user, store_per_database, tx
from tests.volumeutil import dicom_series, tiny_brats, tumour_zhw

LIVER, SPLEEN = 5, 1  # TotalSegmentator's values in the series' reference map


@pytest.fixture(scope="module", params=["sqlite"])
def store(request, tmp_path_factory):
    yield from store_per_database(request, tmp_path_factory, "vexport")


@pytest.fixture(scope="module")
def people(store):
    return new_user(store, Role.admin), new_user(store, Role.reviewer)


def _project(store, people, modality: str, labels: list[str]):
    admin, reviewer = people
    with store.transaction() as db:
        project = projects.create_project(db, admin, f"vx-{uuid.uuid4().hex[:6]}", modality, labels)
        projects.add_member(db, admin, project.id, reviewer)
    return project.id


def _label(store, people, volume_id: int, label: str, mask: np.ndarray, *, approve: bool) -> None:
    admin, reviewer = people
    revision = tx(store, volumes_labels.save_label_map, store.blobs, admin, volume_id, label, mask, 0, submit=approve)
    if approve:
        tx(store, ann.approve, reviewer, revision.annotation_id)


@pytest.fixture(scope="module")
def mr(store, people, sample_data, tmp_path_factory):
    """Two tiny BRATS crops (other z ranges, so other content): tumour approved, oedema left a draft."""
    folder = tmp_path_factory.mktemp("mr")
    pid = _project(store, people, "mr", ["tumour", "oedema"])
    image, label = tiny_brats(sample_data, folder)
    second_image, second_label = folder / "second.nii.gz", folder / "second_label.nii.gz"
    nib.save(nib.load(image).slicer[:, :, 1:4], second_image)
    nib.save(nib.load(label).slicer[:, :, 1:4], second_label)
    cases = []
    for path, label_path in ((image, label), (second_image, second_label)):
        added = tx(store, volumes.add_volume, store.blobs, store.settings, people[0], pid, [path])
        truth = tumour_zhw(label_path)
        _label(store, people, added.volume.id, "tumour", truth, approve=True)
        _label(store, people, added.volume.id, "oedema", ~truth, approve=False)
        cases.append({"id": added.volume.id, "path": path, "truth": truth})
    return {"pid": pid, "cases": cases}


@pytest.fixture(scope="module")
def ct(store, people, sample_data):
    """The shared 20-slice CT series with liver and spleen from its reference map, lined up by geometry."""
    pid = _project(store, people, "ct", ["liver", "spleen"])
    added = tx(store, volumes.add_volume, store.blobs, store.settings, people[0], pid, dicom_series(sample_data))
    with store.transaction() as db:
        volume = load_volume(db, store.blobs, store.settings, added.volume)
    reference = labels_onto(volume, nib.load(sample_data / "volumes" / "ct_dicom_series" / "labels.nii.gz"))
    _label(store, people, added.volume.id, "liver", reference == LIVER, approve=True)
    _label(store, people, added.volume.id, "spleen", reference == SPLEEN, approve=True)
    expected = np.where(reference == LIVER, 1, np.where(reference == SPLEEN, 2, 0)).astype(np.uint8)
    return {"pid": pid, "row": added.volume, "volume": volume, "expected": expected, "files": dicom_series(sample_data)}


def export(store, user, pid: int, fmt: str, folder: Path, *, approved_only: bool = True, size: int = 1024):
    folder.mkdir(parents=True, exist_ok=True)
    path = build_export(store, user, pid, fmt, approved_only, size, folder)
    out = folder / "unzipped"
    with zipfile.ZipFile(path) as zf:
        zf.extractall(out)
    return out, json.loads((out / "manifest.json").read_text())


def test_nifti_export_has_the_sources_shape_and_affine(store, people, mr, tmp_path):
    out, manifest = export(store, people[0], mr["pid"], "nifti", tmp_path)
    assert manifest["format"] == "nifti" and manifest["approved_only"] is True
    assert [item["volume_id"] for item in manifest["items"]] == [case["id"] for case in mr["cases"]]
    for case, item in zip(mr["cases"], manifest["items"], strict=True):
        source, exported = nib.load(case["path"]), nib.load(out / item["files"][0])
        assert exported.shape == source.shape and np.allclose(exported.affine, source.affine)
        data = np.asanyarray(exported.dataobj)
        assert data.dtype == np.uint8 and set(np.unique(data)) <= {0, 1}  # tumour only: oedema is a draft
        assert np.array_equal(data.transpose(2, 1, 0), case["truth"].astype(np.uint8))
        assert [(lab["label"], lab["value"], lab["status"]) for lab in item["labels"]] == [("tumour", 1, "approved")]
    _, everything = export(store, people[0], mr["pid"], "nifti", tmp_path / "all", approved_only=False)
    assert {lab["label"] for lab in everything["items"][0]["labels"]} == {"tumour", "oedema"}


def test_nifti_export_of_a_dicom_series_lines_up_in_simpleitk(store, people, ct, tmp_path):
    """ITK reads the series and the exported map on one grid, and the liver sits on soft tissue (~90 HU)."""
    out, manifest = export(store, people[0], ct["pid"], "nifti", tmp_path)
    (item,) = manifest["items"]
    assert item["source_format"] == "dicom" and item["shape_zhw"] == [20, 512, 512]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(ct["files"][0].parent)))  # sorted by ITK, by position
    series = reader.Execute()
    label = sitk.ReadImage(str(out / item["files"][0]))
    assert label.GetSize() == series.GetSize()
    assert np.allclose(label.GetOrigin(), series.GetOrigin(), atol=1e-3)
    assert np.allclose(label.GetDirection(), series.GetDirection(), atol=1e-5)
    assert np.allclose(label.GetSpacing(), series.GetSpacing(), atol=1e-4)
    hu, labels = sitk.GetArrayFromImage(series), sitk.GetArrayFromImage(label)  # both (z, y, x) in ITK's order
    assert 40 < hu[labels == 1].mean() < 140 and (labels == 2).any()


def test_dicom_seg_reads_back_with_highdicom_onto_the_right_slices(store, people, ct, mr, tmp_path):
    out, manifest = export(store, people[0], ct["pid"], "dicom-seg", tmp_path)
    (item,) = manifest["items"]
    seg = hd.seg.segread(out / item["files"][0])
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["liver", "spleen"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == item["series_instance_uid"]
    uids = ct["row"].sop_instance_uids  # the stored (de-identified) slices, in Z order
    referenced = {sop for _, _, sop in seg.get_source_image_uids()}
    marked = np.flatnonzero(ct["expected"].any(axis=(1, 2)))
    assert referenced == {uids[z] for z in marked}  # frames only on the labelled slices, each the right one
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=list(uids), combine_segments=True, assert_missing_frames_are_empty=True
    )
    assert pixels.shape == ct["expected"].shape and np.array_equal(pixels, ct["expected"])
    with pytest.raises(StoreError, match="DICOM series"):
        export(store, people[0], mr["pid"], "dicom-seg", tmp_path / "mr")


def test_nnunet_export_follows_the_dataset_format(store, people, mr, tmp_path):
    out, manifest = export(store, people[0], mr["pid"], "nnunet", tmp_path)
    dataset = json.loads((out / "dataset.json").read_text())
    check_nnunet_dataset(out, dataset)
    assert dataset["channel_names"] == {"0": "mr"} and dataset["numTraining"] == 2
    assert dataset["labels"] == {"background": 0, "tumour": 1, "oedema": 2}
    for case, item in zip(mr["cases"], manifest["items"], strict=True):
        image_rel, label_rel = item["files"]
        source, image = nib.load(case["path"]), nib.load(out / image_rel)
        assert np.allclose(image.affine, source.affine) and np.array_equal(image.get_fdata(), source.get_fdata())
        assert np.array_equal(np.asanyarray(nib.load(out / label_rel).dataobj).transpose(2, 1, 0), case["truth"])
    assert len(find_volume_pairs(out)) == 2  # `medsam evaluate --volumes` reads it too


def check_nnunet_dataset(folder: Path, dataset: dict) -> None:
    """nnU-Net v2's documented rules (documentation/dataset_format.md), what its verify_dataset_integrity
    checks: required keys, labels 0..n consecutive with background 0, numTraining cases, each case's
    channel 0 and label with the same geometry (ITK's view: size, origin, spacing, direction)."""
    assert {"channel_names", "labels", "numTraining", "file_ending"} <= set(dataset)
    assert dataset["file_ending"] == ".nii.gz" and list(dataset["channel_names"]) == ["0"]
    values = sorted(dataset["labels"].values())
    assert dataset["labels"]["background"] == 0 and values == list(range(len(values)))
    labels = sorted((folder / "labelsTr").glob("*.nii.gz"))
    images = sorted((folder / "imagesTr").glob("*.nii.gz"))
    assert len(labels) == dataset["numTraining"] == len(images)
    for label_path in labels:
        case = label_path.name.removesuffix(".nii.gz")
        image = sitk.ReadImage(str(folder / "imagesTr" / f"{case}_0000.nii.gz"))
        label = sitk.ReadImage(str(label_path))
        assert image.GetSize() == label.GetSize() and image.GetDimension() == 3
        assert np.allclose(image.GetOrigin(), label.GetOrigin()) and np.allclose(image.GetSpacing(), label.GetSpacing())
        assert np.allclose(image.GetDirection(), label.GetDirection())
        assert set(np.unique(sitk.GetArrayFromImage(label)).tolist()) <= set(values)


def test_the_seed_layout_takes_the_marked_slices_and_volume_formats_need_labels(store, people, mr, tmp_path):
    out, manifest = export(store, people[0], mr["pid"], "seed", tmp_path, size=256)
    marked = sum(int(case["truth"].any(axis=(1, 2)).sum()) for case in mr["cases"])
    gts = sorted((out / "gts").glob("*.npy"))
    assert len(gts) == marked == len(manifest["items"])
    first = np.load(gts[0], allow_pickle=False)
    assert first.shape == (256, 256) and set(np.unique(first).tolist()) == {0, 1}
    empty, folder = _project(store, people, "mr", ["tumour"]), tmp_path / "refused"
    folder.mkdir()
    with pytest.raises(StoreError, match="no volume with an approved 3-D label map"):
        build_export(store, people[0], empty, "nnunet", True, 1024, folder)
    assert not any(folder.iterdir())  # refused before the zip was opened
