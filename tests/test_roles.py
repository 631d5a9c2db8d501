"""Who may do what, in the services (what the UI calls) and through the real server (what the API answers).

Only whoever queued a job, or an admin, cancels it; only admins queue
project-wide pre-labelling and precompute; nobody approves a revision they
saved unless the project allows self-review; and outside one's projects every
id is "not found" in the same words whether it exists or not. Job bodies are
typed: a wrong type is a 422 naming the field, never a 500.
"""

from __future__ import annotations

import base64
import io
import re
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from portal.store.errors import NotFoundError, PermissionDeniedError, StoreError
from portal.store.models import AnnotationStatus, Job, JobKind, JobState, Review, Role, User
from portal.store.services import annotations as ann
from portal.store.services import images, jobs, model_versions, projects, training
from portal.store.services.masks import get_mask, record_mask
from tests.conftest import DEMO_BOX, DEMO_IMAGE
from tests.storeutil import new_user, png_file, square_mask, store_per_database, tx
from tests.test_api import api, call, ok  # noqa: F401 - the real server fixture, one for this module
from workers.queue import JobQueue

dispatch = JobQueue()  # its broker is never touched here: every call is refused, or cancels a row never sent

MISSING = 987_654_321


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(request, tmp_path_factory):
    yield from store_per_database(request, tmp_path_factory, "roles")


@pytest.fixture()
def world(store, tmp_path):
    """Project A with an admin, a reviewer and an annotator; an outsider reviewer who belongs to B only."""
    admin = new_user(store, Role.admin, "admin")
    reviewer, annotator = new_user(store, Role.reviewer, "rev"), new_user(store, Role.annotator, "ann")
    outsider = new_user(store, Role.reviewer, "out")
    with store.transaction() as session:
        a = projects.create_project(session, admin, f"secret-{uuid.uuid4().hex[:6]}", "ct", ["liver"])
        b = projects.create_project(session, admin, f"other-{uuid.uuid4().hex[:6]}", "ct", ["liver"])
        for user in (reviewer, annotator):
            projects.add_member(session, admin, a.id, user)
        projects.add_member(session, admin, b.id, outsider)
    (image,) = tx(
        store, images.add_image, store.blobs, store.settings, admin, a.id, png_file(tmp_path, uuid.uuid4().int % 10_000)
    )
    return {
        "admin": admin,
        "reviewer": reviewer,
        "annotator": annotator,
        "outsider": outsider,
        "a": a,
        "b": b,
        "image": image,
        "item": {"image_id": image.id, "boxes": [[5, 5, 30, 30]]},
    }


def job_count(store, project_id: int) -> int:
    """Jobs of every kind, fine-tunes included."""
    with store.transaction() as session:
        return session.scalar(select(func.count()).select_from(Job).where(Job.project_id == project_id))


def training_row(store, project_id: int, requested_by: int) -> Job:
    """A queued fine-tune as the service would leave it (nothing is sent to a broker, so nothing runs)."""
    with store.transaction() as session:
        job = Job(
            kind=JobKind.finetune,
            project_id=project_id,
            requested_by=requested_by,
            params={"epochs": 1},
            epoch_metrics=[],
        )
        session.add(job)
        session.flush()
        return job


def test_only_whoever_queued_a_job_or_an_admin_cancels_it(store, world):
    w = world
    theirs = tx(store, jobs.create_job, JobKind.precompute_embeddings, {}, project_id=w["a"].id, actor=w["reviewer"])
    with pytest.raises(PermissionDeniedError, match=f"queued by {w['reviewer'].username}; only they or an admin"):
        dispatch.cancel(store, theirs.id, w["annotator"])
    untouched = tx(store, jobs.get_job, theirs.id)
    assert untouched.state == JobState.queued and not untouched.cancel_requested
    assert dispatch.cancel(store, theirs.id, w["reviewer"]).state == JobState.cancelled
    another = tx(store, jobs.create_job, JobKind.precompute_embeddings, {}, project_id=w["a"].id, actor=w["reviewer"])
    assert dispatch.cancel(store, another.id, w["admin"]).state == JobState.cancelled
    finetune = training_row(store, w["a"].id, w["admin"].id)
    with pytest.raises(PermissionDeniedError, match="only they or an admin"):
        dispatch.cancel(store, finetune.id, w["reviewer"])  # reviewers once could
    with pytest.raises(NotFoundError, match="not found"):
        dispatch.cancel(store, finetune.id, w["outsider"])
    assert not tx(store, jobs.get_job, finetune.id).cancel_requested


def test_prelabel_and_precompute_are_for_admins_in_every_path(store, world):
    w = world
    for user in (w["annotator"], w["reviewer"]):
        with pytest.raises(PermissionDeniedError, match="only a admin may queue pre-labelling"):
            dispatch.submit_segment_batch(store, user, w["a"].id, None, [w["item"]])
        with pytest.raises(PermissionDeniedError, match="only a admin may queue embedding precompute"):
            dispatch.submit_precompute(store, user, w["a"].id, None)
    with pytest.raises(NotFoundError, match=rf"project {w['a'].id} not found \(or you are not a member\)"):
        dispatch.submit_precompute(store, w["outsider"], w["a"].id, None)
    assert job_count(store, w["a"].id) == 0


def test_wrong_types_from_any_caller_are_messages_not_crashes(store, world):
    w = world
    admin, pid, iid = w["admin"], w["a"].id, w["image"].id
    bad_items = (
        ([{"image_id": "abc", "boxes": [[5, 5, 30, 30]]}], "item 1: image_id"),
        ([{"image_id": iid, "boxes": [[5, 5, 30]]}], r"item 1: boxes\[0\]"),
        ([{"image_id": iid, "boxes": [[5, 5, 30, float("nan")]]}], "finite"),
        ([w["item"], {"image_id": iid, "points": "here"}], "item 2: points"),
        ([{"image_id": iid, "boxes": [[5, 5, 30, 30]], "box": 1}], "item 1: box"),
        ("not a list", "items"),
    )
    for items, message in bad_items:
        with pytest.raises(StoreError, match=message):
            dispatch.submit_segment_batch(store, admin, pid, None, items)
    for params, message in (
        ({"lr": "abc"}, "lr must be a number between 0 and 1"),
        ({"lr": [1]}, "lr must be"),
        ({"lr": float("inf")}, "lr must be"),
        ({"epochs": True}, "epochs must be"),
        ({"epochs": 2.5}, "epochs must be"),
        ({"seed": "7"}, "seed must be"),
        ({"early_stopping": 0}, "early stopping must be"),
        ({"bogus": 1}, r"unknown training parameter\(s\): bogus"),
    ):
        with pytest.raises(StoreError, match=message):
            tx(store, training.create_job, store.blobs, store.settings, admin, pid, params)
    assert job_count(store, pid) == 0


def test_nobody_approves_a_revision_they_saved(store, world):
    w = world
    iid, reviewer, annotator, admin = w["image"].id, w["reviewer"], w["annotator"], w["admin"]
    own = tx(store, ann.save_revision, store.blobs, reviewer, iid, "liver", square_mask(), 0, submit=True)
    with pytest.raises(PermissionDeniedError, match="someone else must approve it: ask another reviewer"):
        tx(store, ann.approve, reviewer, own.annotation_id)
    with store.transaction() as session:
        assert (
            session.scalar(select(func.count()).select_from(Review).where(Review.annotation_id == own.annotation_id))
            == 0
        )
    # Rejecting one's own work only sends it back, so it is allowed.
    assert tx(store, ann.reject, reviewer, own.annotation_id, "redo the rim").status == AnnotationStatus.rejected
    # Someone else's newer revision of an annotation the reviewer started is theirs to approve.
    tx(store, ann.save_revision, store.blobs, annotator, iid, "liver", square_mask(side=22), 1, submit=True)
    assert tx(store, ann.approve, reviewer, own.annotation_id).status == AnnotationStatus.approved
    mine = tx(store, ann.save_revision, store.blobs, admin, iid, "liver", square_mask(side=24), 2, submit=True)
    with pytest.raises(PermissionDeniedError, match="allow_self_review"):
        tx(store, ann.approve, admin, mine.annotation_id)  # admins too
    with store.transaction() as session:
        projects.update_project(session, admin, w["a"].id, allow_self_review=True)
    assert tx(store, ann.approve, admin, mine.annotation_id).status == AnnotationStatus.approved


def same_words(first: Exception, second: Exception, first_id: int, second_id: int) -> bool:
    return str(first).replace(str(first_id), "#") == str(second).replace(str(second_id), "#")


def test_only_admins_learn_whether_an_account_exists(store, world):
    """Adding a member looks the name up only after the caller's rights are checked."""
    w = world
    answers = set()
    for name in (w["reviewer"].username, "nobody-at-all"):
        for caller in (w["annotator"], w["outsider"]):
            with pytest.raises(PermissionDeniedError, match="only a admin may add project members") as info:
                with store.transaction() as session:
                    projects.add_member_by_name(session, caller, w["a"].id, name, "admin")
            answers.add(str(info.value).split(";")[1])
    assert len(answers) == 1  # the same words whether the account exists or not
    with store.transaction() as session:
        added = projects.add_member_by_name(session, w["admin"], w["b"].id, w["reviewer"].username)
    assert added.id == w["reviewer"].id


def test_approval_is_refused_when_the_annotation_moved_on(store, world, monkeypatch):
    """The transition is conditional on the revision that was checked, not on whatever is current."""
    w = world
    rev = tx(
        store, ann.save_revision, store.blobs, w["annotator"], w["image"].id, "liver", square_mask(), 0, submit=True
    )
    real_check = ann._check_not_own

    def a_save_lands_meanwhile(session, actor, annotation, project):
        real_check(session, actor, annotation, project)
        annotation.current_revision += 1  # as a concurrent save would leave the row, seen by the UPDATE

    monkeypatch.setattr(ann, "_check_not_own", a_save_lands_meanwhile)
    with pytest.raises(StoreError, match="changed while you looked at it"):
        tx(store, ann.approve, w["reviewer"], rev.annotation_id)
    monkeypatch.undo()
    with store.transaction() as session:
        assert session.get(ann.Annotation, rev.annotation_id).status == AnnotationStatus.submitted


def test_outside_ones_projects_everything_is_not_found_in_the_same_words(store, world):
    w = world
    outsider, pid, iid = w["outsider"], w["a"].id, w["image"].id
    base = tx(store, model_versions.base_version)
    mask = tx(
        store, record_mask, store.blobs, w["annotator"], iid, square_mask(), base.id, {"boxes": [[10, 10, 30, 30]]}
    )
    rev = tx(store, ann.save_revision, store.blobs, w["annotator"], iid, "liver", square_mask(), 0)
    job = tx(store, jobs.create_job, JobKind.precompute_embeddings, {}, project_id=pid, actor=w["admin"])
    finetune = training_row(store, pid, w["admin"].id)
    version = tx(
        store,
        model_versions.register_version,
        store.blobs,
        name="a-only",
        family="lite",
        encoder_digest=base.encoder_digest,
        model_digest=uuid.uuid4().hex * 2,
        project_id=pid,
    )

    def project(i):
        with store.transaction() as session:
            projects.get_project(session, outsider, i)

    lookups = {
        "project": (project, pid),
        "image": (lambda i: tx(store, images.get_image, outsider, i), iid),
        "image delete": (lambda i: tx(store, images.delete_image, outsider, i), iid),
        "mask": (lambda i: tx(store, get_mask, outsider, i), mask.id),
        "annotation": (lambda i: tx(store, ann.revisions, outsider, i), rev.annotation_id),
        "annotation approve": (lambda i: tx(store, ann.approve, outsider, i), rev.annotation_id),
        "job": (lambda i: tx(store, jobs.get_job, i, outsider), job.id),
        "training job": (lambda i: tx(store, jobs.get_job, i, outsider, kinds={JobKind.finetune}), finetune.id),
        "model version": (
            lambda i: tx(
                store, training.create_job, store.blobs, store.settings, outsider, w["b"].id, {"parent_version_id": i}
            ),
            version.id,
        ),
    }
    for name, (look, real_id) in lookups.items():
        with pytest.raises(NotFoundError) as real:
            look(real_id)
        with pytest.raises(NotFoundError) as missing:
            look(MISSING)
        assert same_words(real.value, missing.value, real_id, MISSING), (name, str(real.value), str(missing.value))
        assert "not found (or you are not a member" in str(real.value), name
        assert w["a"].name not in str(real.value) and f"project {pid}" not in str(real.value).replace(
            f"project {pid} not found", ""
        ), (name, str(real.value))
    assert tx(store, images.get_image, w["annotator"], iid).id == iid  # members still see it


# ------------------------------------------------------------------ through the real server


def raw(api, method: str, path: str, text: str, user: str = "boss"):
    """JSON the client library would refuse to write (NaN, Infinity), sent as it is."""
    return call(api, method, path, user=user, content=text.encode(), headers={"Content-Type": "application/json"})


def server_store(api):
    from portal.store.settings import Settings
    from portal.store.store import open_store

    return open_store(Settings(data_dir=api["folder"]), register_base=False)


@pytest.fixture(scope="module")
def roles_project(api):
    """A project with anna (annotator) and rita (reviewer); otto is no member."""
    project = ok(call(api, "POST", "/projects", json={"name": "roles-ct", "labels": ["lesion"]}), 201)
    for name in ("anna", "rita"):
        ok(call(api, "POST", f"/projects/{project['id']}/members", json={"username": name}))
    image = ok(
        call(
            api,
            "POST",
            f"/projects/{project['id']}/images",
            files={"file": ("ct.png", DEMO_IMAGE.read_bytes(), "image/png")},
        ),
        201,
    )
    return {"pid": project["id"], "name": project["name"], "iid": image["id"]}


def test_http_job_bodies_are_typed(api, roles_project):
    pid, iid = roles_project["pid"], roles_project["iid"]
    box = f"[{', '.join(map(str, DEMO_BOX))}]"
    prelabel = [
        ('{"items": [{"image_id": "abc", "boxes": [%s]}]}' % box, ["items", 0, "image_id"]),
        ('{"items": [{"image_id": %d, "boxes": [[1, 2, 3]]}]}' % iid, ["items", 0, "boxes", 0]),
        ('{"items": [{"image_id": %d, "boxes": [[1, 2, 3, NaN]]}]}' % iid, ["items", 0, "boxes", 0, 3]),
        ('{"items": [{"image_id": %d, "boxes": [%s, %s]}]}' % (iid, box, box), ["items", 0, "boxes"]),
        ('{"items": []}', ["items"]),
        ('{"items": "all"}', ["items"]),
        ('{"items": [{"image_id": %d}], "model_version_id": "1"}' % iid, ["model_version_id"]),
    ]
    finetune = [
        ('{"lr": "abc"}', ["lr"]),
        ('{"lr": [1]}', ["lr"]),
        ('{"lr": NaN}', ["lr"]),
        ('{"lr": Infinity}', ["lr"]),
        ('{"lr": 0}', ["lr"]),
        ('{"epochs": 2.5}', ["epochs"]),
        ('{"epochs": true}', ["epochs"]),
        ('{"epochs": 100000}', ["epochs"]),
        ('{"mode": "encoder"}', ["mode"]),
        ('{"batch_size": "8"}', ["batch_size"]),
        ('{"val_fraction": 1.5}', ["val_fraction"]),
        ('{"bogus": 1}', ["bogus"]),
        ('{"parent_version_id": "x"}', ["parent_version_id"]),
    ]
    cases = [(f"/projects/{pid}/prelabel", text, loc) for text, loc in prelabel]
    cases += [(f"/projects/{pid}/training-jobs", text, loc) for text, loc in finetune]
    cases += [(f"/projects/{pid}/precompute", '{"model_version_id": 1.5}', ["model_version_id"])]
    for path, text, loc in cases:
        r = raw(api, "POST", path, text)
        assert r.status_code == 422, (path, text, r.status_code, r.text[:300])
        assert r.json()["detail"][0]["loc"] == ["body", *loc], (text, r.json()["detail"])
    store = server_store(api)
    try:
        assert job_count(store, pid) == 0
    finally:
        store.close()
    good = ok(
        call(
            api,
            "POST",
            f"/projects/{pid}/prelabel",
            json={"items": [{"image_id": iid, "boxes": [DEMO_BOX], "points": None}]},
        ),
        201,
    )
    assert good["params"]["items"][0]["image_id"] == iid
    assert api["client"].get("/healthz").status_code == 200


def detail(response) -> str:
    return response.json()["detail"]


def test_http_roles(api, roles_project):
    pid, iid, name = roles_project["pid"], roles_project["iid"], roles_project["name"]
    item = {"items": [{"image_id": iid, "boxes": [DEMO_BOX]}]}
    for user in ("anna", "rita"):
        r = call(api, "POST", f"/projects/{pid}/prelabel", user=user, json=item)
        assert r.status_code == 403 and "only a admin may queue pre-labelling" in detail(r), r.text
        r = call(api, "POST", f"/projects/{pid}/precompute", user=user)
        assert r.status_code == 403 and "only a admin may queue embedding precompute" in detail(r), r.text
    assert call(api, "POST", f"/projects/{pid}/prelabel", user="otto", json=item).status_code == 404

    store = server_store(api)
    try:
        with store.transaction() as session:
            people = {u.username: u for u in session.scalars(select(User))}
        queued = tx(store, jobs.create_job, JobKind.precompute_embeddings, {}, project_id=pid, actor=people["boss"])
        finetune = training_row(store, pid, people["rita"].id)
    finally:
        store.close()
    refused = call(api, "DELETE", f"/jobs/{queued.id}", user="rita")
    assert refused.status_code == 403 and "queued by boss; only they or an admin" in detail(refused)
    assert ok(call(api, "GET", f"/jobs/{queued.id}", user="rita"))["state"] == "queued"
    assert ok(call(api, "DELETE", f"/jobs/{queued.id}"))["state"] == "cancelled"
    assert call(api, "DELETE", f"/training-jobs/{finetune.id}", user="anna").status_code == 403
    assert ok(call(api, "DELETE", f"/training-jobs/{finetune.id}", user="rita"))["state"] == "cancelled"

    mask = np.zeros((512, 512), np.uint8)
    mask[260:340, 100:180] = 255
    buf = io.BytesIO()
    PILImage.fromarray(mask).save(buf, format="PNG")
    body = {"mask_png_base64": base64.b64encode(buf.getvalue()).decode(), "base_revision": 0, "status": "submitted"}
    aid = ok(call(api, "PUT", f"/images/{iid}/annotations/lesion", user="rita", json=body))["annotation_id"]
    own = call(api, "POST", f"/annotations/{aid}/review", user="rita", json={"decision": "approve"})
    assert own.status_code == 403 and "someone else must approve it" in detail(own)
    assert ok(call(api, "POST", f"/annotations/{aid}/review", json={"decision": "approve"}))["status"] == "approved"
    ok(call(api, "PATCH", f"/projects/{pid}", json={"allow_self_review": True}))
    ok(call(api, "PUT", f"/images/{iid}/annotations/lesion", user="rita", json={**body, "base_revision": 1}))
    assert (
        ok(call(api, "POST", f"/annotations/{aid}/review", user="rita", json={"decision": "approve"}))["status"]
        == "approved"
    )

    for path, real_id in (
        (f"/projects/{pid}", pid),
        (f"/images/{iid}", iid),
        (f"/jobs/{queued.id}", queued.id),
        (f"/training-jobs/{finetune.id}", finetune.id),
        (f"/annotations/{aid}/revisions", aid),
        (f"/projects/{pid}/export", pid),
    ):
        real = call(api, "GET", path, user="otto")
        missing = call(api, "GET", re.sub(rf"/{real_id}(?=/|$)", f"/{MISSING}", path), user="otto")
        assert real.status_code == missing.status_code == 404, (path, real.text, missing.text)
        assert detail(real).replace(str(real_id), "#") == detail(missing).replace(str(MISSING), "#"), path
        assert name not in detail(real) and "not a member" in detail(real)
    log = Path(api["folder"], "serve.log").read_text()
    assert "Traceback" not in log, log[-3000:]
