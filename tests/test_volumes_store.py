"""Volumes in the store: NIfTI and DICOM series uploads, slices that stay 2-D images, 3-D label maps with
the revisions, conflicts and review of 2-D masks, and refusals that write nothing."""

from __future__ import annotations

import shutil
import uuid

import numpy as np
import pydicom
import pytest
from sqlalchemy import func, select

from medsam_core.errors import InvalidImageError, MedsamError
from medsam_core.imageio import read_image
from medsam_core.volume import read_dicom_series, read_volume
from portal.store.errors import ConflictError, NotFoundError, PermissionDeniedError, StoreError
from portal.store.models import Annotation, AnnotationStatus, Image, Role, Volume
from portal.store.services import annotations as ann
from portal.store.services import images, projects, volumes, volumes_labels
from portal.store.services.volumes_read import load_volume, slice_pixels, source_datasets
from tests.storeutil import new_user, store_per_database, tx
from tests.volumeutil import dicom_series, tiny_brats, tumour_zhw


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(request, tmp_path_factory):
    yield from store_per_database(request, tmp_path_factory, "volumes")


@pytest.fixture(scope="module")
def team(store):
    admin = new_user(store, Role.admin)
    reviewer = new_user(store, Role.reviewer)
    with store.transaction() as db:
        project = projects.create_project(db, admin, f"vol-{uuid.uuid4().hex[:6]}", "mr", ["tumour", "oedema"])
        projects.add_member(db, admin, project.id, reviewer)
    return {"admin": admin, "reviewer": reviewer, "project": project}


@pytest.fixture(scope="module")
def brats(store, team, sample_data, tmp_path_factory):
    image, label = tiny_brats(sample_data, tmp_path_factory.mktemp("tiny"))
    added = tx(store, volumes.add_volume, store.blobs, store.settings, team["admin"], team["project"].id, [image])
    return {"added": added, "image": image, "label": label}


def counts(store) -> tuple[int, int, int]:
    with store.transaction() as db:
        return (
            db.scalar(select(func.count()).select_from(Volume)),
            db.scalar(select(func.count()).select_from(Image)),
            sum(1 for _ in store.blobs.iter_blobs()),
        )


def test_a_nifti_volume_keeps_its_geometry_and_its_slices_encode_as_before(store, team, brats):
    added = brats["added"]
    source = read_volume(brats["image"])
    assert added.new and (added.volume.depth, added.volume.height, added.volume.width) == source.shape == (4, 64, 64)
    assert np.allclose(added.volume.affine, source.affine) and added.volume.orientation == "LPS"
    assert [s.slice_index for s in added.slices] == [0, 1, 2, 3]
    assert {s.volume_id for s in added.slices} == {added.volume.id}
    with store.transaction() as db:
        row = volumes.get_volume(db, team["admin"], added.volume.id)
        for image in volumes.slice_rows(db, row.id):
            shown = slice_pixels(db, store.blobs, store.settings, row, image)
            # one cache key: the 2-D path, the per-slice reader of old and the volume path see the same pixels
            assert np.array_equal(shown, images.display_pixels(store.blobs, image, store.settings))
            assert np.array_equal(shown, read_image(brats["image"]).display(slice_index=image.slice_index))
    again = tx(
        store, volumes.add_volume, store.blobs, store.settings, team["admin"], team["project"].id, [brats["image"]]
    )
    assert not again.new and again.volume.id == added.volume.id and len(again.slices) == 4


def test_a_dicom_series_is_stored_de_identified_one_blob_per_slice(store, team, sample_data, tmp_path):
    files = dicom_series(sample_data)
    shuffled = [files[i] for i in np.random.default_rng(0).permutation(len(files))]
    added = tx(store, volumes.add_volume, store.blobs, store.settings, team["admin"], team["project"].id, shuffled)
    original = read_dicom_series(files)
    row = added.volume
    assert added.new and row.source_format == "dicom" and row.modality == "CT" and row.depth == 20
    assert np.allclose(row.affine, original.affine) and row.slice_positions == list(original.slice_positions)
    originals = {uid_of(pydicom.dcmread(f, stop_before_pixels=True)) for f in files}
    assert len(set(row.sop_instance_uids)) == 20 and not set(row.sop_instance_uids) & originals  # UIDs replaced
    assert len({s.blob_sha for s in added.slices}) == 20 and row.blob_sha is None
    assert all("instance" in s.filename and "CT" in s.filename for s in added.slices)
    with store.transaction() as db:
        datasets = source_datasets(db, store.blobs, store.settings, row)
        loaded = load_volume(db, store.blobs, store.settings, row)
        first = volumes.slice_rows(db, row.id)[0]
        assert np.array_equal(
            slice_pixels(db, store.blobs, store.settings, row, first, "abdomen"),
            read_image(_file_of(files, original, 0)).display(window="abdomen"),
        )
    assert [uid_of(d) for d in datasets] == row.sop_instance_uids
    assert all(not str(d.get("PatientName", "")) and d.PatientIdentityRemoved == "YES" for d in datasets)
    assert np.array_equal(loaded.pixels, original.pixels)
    again = tx(store, volumes.add_volume, store.blobs, store.settings, team["admin"], team["project"].id, files[::-1])
    assert not again.new and again.volume.id == row.id


def uid_of(ds) -> str:
    """The shared series leaves SOPInstanceUID empty and keeps it in the file meta only."""
    return str(ds.get("SOPInstanceUID") or ds.file_meta.MediaStorageSOPInstanceUID)


def _file_of(files, volume, z):
    """The original file of slice z, by its position along the normal."""
    at = {}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        at[
            round(float(np.dot(np.cross(*np.reshape(ds.ImageOrientationPatient, (2, 3))), ds.ImagePositionPatient)), 3)
        ] = f
    return at[round(volume.slice_positions[z], 3)]


def test_bad_uploads_are_refused_and_write_nothing(store, team, sample_data, brats, tmp_path):
    files = dicom_series(sample_data)
    other = tmp_path / "other_series.dcm"
    ds = pydicom.dcmread(files[3])
    ds.SeriesInstanceUID = "1.2.3.4.5"
    ds.save_as(other)
    text = tmp_path / "notes.dcm"
    text.write_text("not an image at all")
    before = counts(store)
    add = lambda paths: tx(  # noqa: E731
        store, volumes.add_volume, store.blobs, store.settings, team["admin"], team["project"].id, paths
    )
    with pytest.raises(InvalidImageError, match="series") as mixed:
        add([*files[:3], other])
    assert str(tmp_path) not in str(mixed.value)
    with pytest.raises(InvalidImageError, match="notes.dcm"):
        add([*files[:3], text])
    with pytest.raises(StoreError, match="mixture"):
        add([brats["image"], files[0]])
    with pytest.raises(InvalidImageError, match="one slice"):
        add([files[0]])
    with pytest.raises(MedsamError, match="window"):
        tx(
            store,
            volumes.add_volume,
            store.blobs,
            store.settings,
            team["admin"],
            team["project"].id,
            files,
            window="nonsense",
        )
    assert counts(store) == before


def test_label_maps_have_revisions_conflicts_and_review(store, team, brats):
    vid = brats["added"].volume.id
    truth = tumour_zhw(brats["label"])
    admin, reviewer = team["admin"], team["reviewer"]
    first = tx(store, volumes_labels.save_label_map, store.blobs, admin, vid, "tumour", truth, 0)
    assert first.number == 1
    with pytest.raises(ConflictError) as stale:
        tx(store, volumes_labels.save_label_map, store.blobs, reviewer, vid, "tumour", ~truth, 0)
    assert stale.value.current_revision == 1 and admin.username in str(stale.value)
    with pytest.raises(StoreError, match="label map is"):
        tx(store, volumes_labels.save_label_map, store.blobs, admin, vid, "tumour", truth[:2], 1)
    with pytest.raises(StoreError, match="not a label class"):
        tx(store, volumes_labels.save_label_map, store.blobs, admin, vid, "liver", truth, 0)
    second = tx(store, volumes_labels.save_label_map, store.blobs, admin, vid, "tumour", truth[::-1], 1, submit=True)
    assert second.number == 2
    annotation, revision, mask = tx(store, volumes_labels.read_label_map, store.blobs, reviewer, vid, "tumour")
    assert revision.number == 2 and mask.dtype == bool and np.array_equal(mask, truth[::-1])
    assert np.array_equal(tx(store, volumes_labels.read_label_map, store.blobs, admin, vid, "tumour", 1)[2], truth)
    assert annotation.image_id is None and annotation.status == AnnotationStatus.submitted
    with pytest.raises(PermissionDeniedError, match="yourself"):
        tx(store, ann.approve, admin, annotation.id)
    assert tx(store, ann.approve, reviewer, annotation.id).status == AnnotationStatus.approved
    assert [r.number for r, _ in tx(store, ann.revision_history, reviewer, annotation.id)] == [1, 2]
    tx(store, volumes_labels.save_label_map, store.blobs, admin, vid, "oedema", truth & False, 0)
    combined, names = tx(store, volumes_labels.combined_labels, store.blobs, admin, vid)
    assert names == {1: "tumour", 2: "oedema"} and np.array_equal(combined == 1, truth[::-1])
    only, _ = tx(store, volumes_labels.combined_labels, store.blobs, admin, vid, approved_only=True)
    assert np.array_equal(only, combined)
    stranger = new_user(store, Role.annotator)
    with pytest.raises(NotFoundError):
        tx(store, volumes_labels.read_label_map, store.blobs, stranger, vid, "tumour")


def test_the_packed_label_map_is_small_and_exact():
    rng = np.random.default_rng(1)
    mask = rng.random((7, 33, 45)) > 0.7
    data = volumes_labels.label_map_to_bytes(mask)
    assert np.array_equal(volumes_labels.label_map_from_bytes(data), mask)
    assert len(data) < mask.size // 8 + 1000


def test_deleting_a_volume_takes_its_slices_and_label_maps(store, team, sample_data, tmp_path):
    image = tmp_path / "copy.nii.gz"
    shutil.copy(tiny_brats(sample_data, tmp_path / "t")[0], image)
    import nibabel as nib

    nii = nib.load(image)
    nib.save(nib.Nifti1Image(np.asanyarray(nii.dataobj) + 1.0, nii.affine), image)  # other content
    added = tx(store, volumes.add_volume, store.blobs, store.settings, team["admin"], team["project"].id, [image])
    vid = added.volume.id
    tx(store, volumes_labels.save_label_map, store.blobs, team["admin"], vid, "tumour", np.ones((4, 64, 64), bool), 0)
    with pytest.raises(PermissionDeniedError):
        tx(store, volumes.delete_volume, new_user(store, Role.annotator), vid)
    tx(store, volumes.delete_volume, team["admin"], vid)
    with store.transaction() as db:
        assert db.scalar(select(func.count()).select_from(Image).where(Image.volume_id == vid)) == 0
        assert db.scalar(select(func.count()).select_from(Annotation).where(Annotation.volume_id == vid)) == 0
    again = tx(store, volumes.add_volume, store.blobs, store.settings, team["admin"], team["project"].id, [image])
    assert again.new  # deleting one slice in the 2-D tools deletes the whole volume, not only its slices
    tx(store, images.delete_image, team["admin"], again.slices[2].id)
    with store.transaction() as db:
        assert db.get(Volume, again.volume.id) is None
        assert db.scalar(select(func.count()).select_from(Image).where(Image.sha256 == again.volume.sha256)) == 0
