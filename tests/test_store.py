"""Services on a real database (SQLite always, PostgreSQL when configured) with a real blob store."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from sqlalchemy import func, select

from medsam_core.errors import InvalidImageError
from portal.store.errors import ConflictError, NotFoundError, PermissionDeniedError, StoreError
from portal.store.models import (
    AnnotationRevision,
    AnnotationStatus,
    ApiToken,
    AuditEvent,
    Image,
    Mask,
    ModelVersion,
    Role,
)
from portal.store.services import annotations as ann
from portal.store.services import images, model_versions, projects, training_rows, users
from portal.store.services.masks import load_mask, record_mask
from tests.storeutil import new_user, png_file, square_mask, store_per_database, tx


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(request, tmp_path_factory):
    yield from store_per_database(request, tmp_path_factory, "store")


@pytest.fixture()
def admin(store):
    return new_user(store, Role.admin, "admin")


@pytest.fixture()
def project(store, admin):
    with store.transaction() as session:
        return projects.create_project(
            session, admin, f"p-{uuid.uuid4().hex[:6]}", "ct", [{"name": "liver", "color": "#ff0000"}, "tumour"]
        )


def count(store, model, *where):
    with store.transaction() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where))


def test_bundled_model_is_a_registered_base_version(store):
    base = tx(store, model_versions.base_version)
    assert base.family == "lite" and base.project_id is None and base.checkpoint_blob is None
    assert len(base.encoder_digest) == 64


def test_passwords_are_slow_hashed_and_tokens_sha256(store):
    user = new_user(store, Role.annotator)
    with store.transaction() as session:
        assert users.authenticate(session, user.username, "correct horse battery").id == user.id
        assert users.authenticate(session, user.username, "wrong") is None
        token = users.issue_token(session, user)
    with store.transaction() as session:
        stored = session.scalar(select(ApiToken).where(ApiToken.user_id == user.id))
        assert stored.token_sha256 == users.token_digest(token) and token not in stored.token_sha256
        assert users.user_for_token(session, token).id == user.id
        assert users.user_for_token(session, token + "x") is None
    with store.transaction() as session:
        assert session.get(type(user), user.id).password_hash.startswith("$argon2")
    with pytest.raises(StoreError, match="at least 8"), store.transaction() as session:
        users.create_user(session, "shorty", "123", Role.annotator)


def test_members_see_only_their_projects(store, admin, project):
    outsider = new_user(store, Role.annotator)
    member = new_user(store, Role.annotator)
    with store.transaction() as session:
        projects.add_member(session, admin, project.id, member)
    with store.transaction() as session:
        assert project.id in [p.id for p in projects.list_projects(session, member)]
        assert project.id not in [p.id for p in projects.list_projects(session, outsider)]
        with pytest.raises(NotFoundError, match=rf"project {project.id} not found \(or you are not a member\)"):
            projects.get_project(session, outsider, project.id)
        with pytest.raises(PermissionDeniedError, match="only a admin"):
            projects.create_project(session, member, "nope")


def test_add_image_dedupes_and_a_rejected_file_writes_nothing(store, admin, project, tmp_path):
    path = png_file(tmp_path, 1)
    first = tx(store, images.add_image, store.blobs, store.settings, admin, project.id, path)
    again = tx(store, images.add_image, store.blobs, store.settings, admin, project.id, path)
    assert [r.id for r in first] == [r.id for r in again] and first[0].width == 64 and first[0].height == 48
    found = tx(store, images.add_or_find_image, store.blobs, store.settings, admin, project.id, path, "renamed.png")
    assert not found.new and [r.id for r in found.rows] == [r.id for r in first]  # a screen can say so
    blobs_before = len(list(store.blobs.iter_blobs()))
    rows_before = count(store, Image)
    bad = tmp_path / "trunc.png"
    bad.write_bytes(path.read_bytes()[:40])
    with pytest.raises(InvalidImageError) as refused:
        tx(store, images.add_image, store.blobs, store.settings, admin, project.id, bad, "(1) scan.png")
    assert str(refused.value).startswith("(1) scan.png: ") and str(tmp_path) not in str(refused.value)
    assert count(store, Image) == rows_before and len(list(store.blobs.iter_blobs())) == blobs_before


def test_volume_becomes_one_row_per_slice(store, admin, project, tmp_path):
    import nibabel as nib

    nib.save(
        nib.Nifti1Image(np.arange(16 * 12 * 3, dtype=np.int16).reshape(16, 12, 3), np.eye(4)), tmp_path / "v.nii.gz"
    )
    rows = tx(
        store, images.add_image, store.blobs, store.settings, admin, project.id, tmp_path / "v.nii.gz", window="abdomen"
    )
    assert [r.slice_index for r in rows] == [0, 1, 2] and {r.num_slices for r in rows} == {3}
    assert (rows[0].height, rows[0].width) == (12, 16) and len({r.blob_sha for r in rows}) == 1


def test_dicom_is_stored_without_patient_identifiers(store, admin, project, tmp_path):
    import pydicom

    from tests.test_imageio import _dicom  # the I/O tests' DICOM builder

    path = _dicom(tmp_path / "ct.dcm", np.full((32, 32), 100, np.int16))
    ds = pydicom.dcmread(path)
    ds.PatientName, ds.PatientID = "Doe^Jane", "MRN-12345"
    ds.save_as(path)
    (row,) = tx(store, images.add_image, store.blobs, store.settings, admin, project.id, path)
    stored = store.blobs.get_bytes(row.blob_sha)
    assert b"Doe^Jane" not in stored and b"MRN-12345" not in stored
    ds = pydicom.dcmread(__import__("io").BytesIO(stored))
    assert ds.PatientIdentityRemoved == "YES" and ds.Rows == 32


def test_revisions_are_append_only_and_stale_saves_conflict(store, admin, project, tmp_path):
    annotator = new_user(store, Role.annotator, "ann")
    with store.transaction() as session:
        projects.add_member(session, admin, project.id, annotator)
    (image,) = tx(store, images.add_image, store.blobs, store.settings, admin, project.id, png_file(tmp_path, 2))
    base = tx(store, model_versions.base_version)
    proposal = tx(
        store, record_mask, store.blobs, annotator, image.id, square_mask(), base.id, {"boxes": [[10, 10, 30, 30]]}, 0.9
    )
    r1 = tx(
        store,
        ann.save_revision,
        store.blobs,
        annotator,
        image.id,
        "liver",
        square_mask(),
        0,
        base_mask_id=proposal.id,
        model_version_id=base.id,
        prompt={"boxes": [[10, 10, 30, 30]]},
    )
    r2 = tx(store, ann.save_revision, store.blobs, admin, image.id, "liver", square_mask(side=25), 1)
    with pytest.raises(ConflictError) as err:
        tx(store, ann.save_revision, store.blobs, annotator, image.id, "liver", square_mask(side=5), 1)
    assert err.value.current_revision == 2 and err.value.author == admin.username
    assert "revision 2 by" in str(err.value) and "nothing was overwritten" in str(err.value)
    history = tx(store, ann.revisions, admin, r1.annotation_id)
    assert [h.number for h in history] == [1, 2]
    assert load_mask(store.blobs, history[0].blob_sha).sum() == 400
    assert load_mask(store.blobs, history[1].blob_sha).sum() == 625
    assert history[0].base_mask_id == proposal.id and history[0].model_version_id == base.id
    with pytest.raises(StoreError, match="not a label class"):
        tx(store, ann.save_revision, store.blobs, admin, image.id, "spleen", square_mask(), 0)
    with pytest.raises(StoreError, match="mask is"):
        tx(store, ann.save_revision, store.blobs, admin, image.id, "liver", np.zeros((5, 5)), 2)
    assert r2.number == 2


def test_review_permissions_and_training_set(store, admin, project, tmp_path):
    annotator, reviewer = new_user(store, Role.annotator), new_user(store, Role.reviewer)
    with store.transaction() as session:
        for u in (annotator, reviewer):
            projects.add_member(session, admin, project.id, u)
    (image,) = tx(store, images.add_image, store.blobs, store.settings, admin, project.id, png_file(tmp_path, 3))
    rev = tx(store, ann.save_revision, store.blobs, annotator, image.id, "tumour", square_mask(), 0, submit=True)
    with pytest.raises(PermissionDeniedError, match="only a reviewer or admin may approve"):
        tx(store, ann.approve, annotator, rev.annotation_id)
    with pytest.raises(StoreError, match="say why"):
        tx(store, ann.reject, reviewer, rev.annotation_id, "")
    assert tx(store, ann.reject, reviewer, rev.annotation_id, "misses the rim").status == AnnotationStatus.rejected
    tx(store, ann.save_revision, store.blobs, annotator, image.id, "tumour", square_mask(side=22), 1)
    tx(store, ann.submit, annotator, rev.annotation_id)
    assert tx(store, ann.approve, reviewer, rev.annotation_id, "good").status == AnnotationStatus.approved
    (entry,) = tx(store, training_rows.training_set, project.id)
    assert entry[0].id == image.id and entry[1] == "tumour" and load_mask(store.blobs, entry[2]).sum() == 22 * 22


def test_promotion_needs_admin_and_rollback_restores(store, admin, project):
    annotator = new_user(store, Role.annotator)
    base = tx(store, model_versions.base_version)
    blob = store.blobs.put_bytes(b"pretend checkpoint " + uuid.uuid4().bytes)
    v1 = tx(
        store,
        model_versions.register_version,
        store.blobs,
        name="ft1",
        family="lite",
        encoder_digest=base.encoder_digest,
        model_digest="1" * 64,
        project_id=project.id,
        parent_id=base.id,
        checkpoint_blob=blob,
        metrics={"val_dice": 0.9},
    )
    v2 = tx(
        store,
        model_versions.register_version,
        store.blobs,
        name="ft2",
        family="lite",
        encoder_digest=base.encoder_digest,
        model_digest="2" * 64,
        project_id=project.id,
        parent_id=v1.id,
        checkpoint_blob=blob,
    )
    with pytest.raises(PermissionDeniedError):
        tx(store, model_versions.set_active, annotator, project.id, v1.id)
    assert tx(store, model_versions.active_version, project.id).id == base.id
    tx(store, model_versions.set_active, admin, project.id, v1.id)
    tx(store, model_versions.set_active, admin, project.id, v2.id)
    assert tx(store, model_versions.rollback, admin, project.id).active_model_version_id == v1.id
    with pytest.raises(StoreError, match="not in the blob store"):
        tx(
            store,
            model_versions.register_version,
            store.blobs,
            name="x",
            family="lite",
            encoder_digest="e" * 64,
            model_digest="3" * 64,
            project_id=project.id,
            checkpoint_blob="f" * 64,
        )


def test_deleting_an_image_removes_its_data_and_keeps_the_audit(store, admin, project, tmp_path):
    from datetime import timedelta

    from portal.store.services.gc import collect_garbage

    (image,) = tx(store, images.add_image, store.blobs, store.settings, admin, project.id, png_file(tmp_path, 4))
    rev = tx(store, ann.save_revision, store.blobs, admin, image.id, "liver", square_mask(x0=3), 0)
    tx(store, record_mask, store.blobs, admin, image.id, square_mask(x0=4), None, {"boxes": [[1, 1, 9, 9]]})
    tx(store, images.delete_image, admin, image.id)
    assert count(store, Image, Image.id == image.id) == 0
    assert count(store, Mask, Mask.image_id == image.id) == 0
    assert count(store, AnnotationRevision, AnnotationRevision.annotation_id == rev.annotation_id) == 0
    assert count(store, AuditEvent, AuditEvent.action == "image.delete", AuditEvent.target_id == image.id) == 1
    assert store.blobs.exists(image.blob_sha)  # until gc
    young = tx(store, collect_garbage, store.blobs, timedelta(hours=1))
    assert store.blobs.exists(image.blob_sha) and young.too_young >= 3
    tx(store, collect_garbage, store.blobs, timedelta(0))
    assert not store.blobs.exists(image.blob_sha) and not store.blobs.exists(rev.blob_sha)
    assert tx(store, model_versions.base_version)  # unrelated rows untouched
    assert count(store, ModelVersion) >= 1
