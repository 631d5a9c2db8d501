"""The UI's listings (``portal.store.services.worklists``): members see their project's rows, nobody else does.

Each read takes the acting user; outside one's projects every one of them is
"not found" in the same words as a missing id, and what members get back is
the rows the tabs show.
"""

from __future__ import annotations

import uuid

import pytest

from portal.store.errors import NotFoundError, PermissionDeniedError
from portal.store.models import JobKind, Role
from portal.store.services import annotations as ann
from portal.store.services import images, jobs, model_versions, projects, training, worklists
from portal.store.services.masks import record_mask
from tests.storeutil import new_user, png_file, square_mask, store_per_database, tx

MISSING = 987_654


@pytest.fixture(scope="module", params=["sqlite"])
def store(request, tmp_path_factory):
    yield from store_per_database(request, tmp_path_factory, "worklists")


@pytest.fixture()
def world(store, tmp_path):
    """Project A (admin, annotator, reviewer) with two images; an outsider who belongs to project B only."""
    admin = new_user(store, Role.admin, "admin")
    annotator, reviewer = new_user(store, Role.annotator, "ann"), new_user(store, Role.reviewer, "rev")
    outsider = new_user(store, Role.reviewer, "out")
    with store.transaction() as session:
        a = projects.create_project(session, admin, f"wl-{uuid.uuid4().hex[:6]}", "ct", ["liver", "lesion"])
        b = projects.create_project(session, admin, f"wl-other-{uuid.uuid4().hex[:6]}", "ct", ["liver"])
        for user in (annotator, reviewer):
            projects.add_member(session, admin, a.id, user)
        projects.add_member(session, admin, b.id, outsider)
    first, second = (
        tx(
            store,
            images.add_image,
            store.blobs,
            store.settings,
            admin,
            a.id,
            png_file(tmp_path, uuid.uuid4().int % 10_000),
        )[0]
        for _ in range(2)
    )
    return {
        "admin": admin,
        "annotator": annotator,
        "reviewer": reviewer,
        "outsider": outsider,
        "a": a,
        "b": b,
        "first": first,
        "second": second,
    }


def read(store, fn, *args):
    with store.transaction() as session:
        return fn(session, *args)


def test_outside_ones_projects_every_listing_is_not_found_like_a_missing_id(store, world):
    w, outsider = world, world["outsider"]
    rev = tx(
        store, ann.save_revision, store.blobs, w["annotator"], w["first"].id, "liver", square_mask(), 0, submit=True
    )
    pid, iid, aid = w["a"].id, w["first"].id, rev.annotation_id
    lookups = {
        "labels": (lambda i: read(store, worklists.project_labels, outsider, i), pid),
        "images": (lambda i: read(store, worklists.project_images, outsider, i), pid),
        "unannotated": (lambda i: read(store, worklists.unannotated_images, outsider, i), pid),
        "queue": (lambda i: read(store, worklists.image_queue, outsider, i, "liver", "unlabelled"), pid),
        "submitted": (lambda i: read(store, worklists.submitted, outsider, i), pid),
        "training jobs": (lambda i: read(store, worklists.training_jobs, outsider, i), pid),
        "versions": (lambda i: read(store, worklists.version_rows, outsider, i), pid),
        "annotation of image": (lambda i: read(store, worklists.current_annotation, outsider, i, "liver"), iid),
        "pre-label mask": (lambda i: read(store, worklists.prelabel_mask, outsider, i), iid),
        "history": (lambda i: read(store, worklists.revision_history, outsider, i), aid),
        "reviews": (lambda i: read(store, worklists.review_history, outsider, i), aid),
        "review item": (lambda i: read(store, worklists.review_item, outsider, i), aid),
    }
    for name, (look, real_id) in lookups.items():
        with pytest.raises(NotFoundError) as real:
            look(real_id)
        with pytest.raises(NotFoundError) as missing:
            look(MISSING)
        assert str(real.value).replace(str(real_id), "#") == str(missing.value).replace(str(MISSING), "#"), name
        assert "not found (or you are not a member" in str(real.value), name
        assert w["a"].name not in str(real.value), name
    assert pid not in [i for _, i in read(store, worklists.project_choices, outsider)]
    assert [row[0] for row in read(store, worklists.status_counts, outsider)] == [w["b"].name]


def test_members_get_the_queue_history_and_review_rows(store, world):
    w, annotator = world, world["annotator"]
    first, second = w["first"].id, w["second"].id
    draft = tx(store, ann.save_revision, store.blobs, annotator, first, "liver", square_mask(), 0)
    queue = read(store, worklists.image_queue, annotator, w["a"].id, "liver", "unlabelled")
    assert [(r["image_id"], r["status"]) for r in queue] == [(second, "unlabelled"), (first, "draft")]
    assert read(store, worklists.unannotated_images, annotator, w["a"].id)[0].id == second

    found, latest = read(store, worklists.current_annotation, annotator, first, "liver")
    assert (found.id, latest.number) == (draft.annotation_id, 1)
    assert read(store, worklists.current_annotation, annotator, first, "lesion") == (None, None)

    submitted = tx(store, ann.save_revision, store.blobs, annotator, first, "liver", square_mask(x0=5), 1, submit=True)
    history = read(store, worklists.revision_history, w["reviewer"], draft.annotation_id)
    assert [(r.number, r.author) for r in history] == [(2, annotator.username), (1, annotator.username)]
    rows = read(store, worklists.submitted, w["reviewer"], w["a"].id)
    assert [(r["annotation_id"], r["revision"], r["author"]) for r in rows] == [
        (draft.annotation_id, 2, annotator.username)
    ]
    image, revision = read(store, worklists.review_item, w["reviewer"], draft.annotation_id)
    assert (image.id, revision.number, revision.blob_sha) == (first, 2, submitted.blob_sha)
    counts = {row[0]: row[1:] for row in read(store, worklists.status_counts, w["reviewer"])}
    assert counts[w["a"].name] == [2, 1, 0, 1, 0, 0]  # images, unlabelled, draft, submitted, approved, rejected


def test_a_rejection_reaches_the_annotator_in_the_fix_queue_and_the_history(store, world):
    w, annotator, reviewer = world, world["annotator"], world["reviewer"]
    rev = tx(store, ann.save_revision, store.blobs, annotator, w["first"].id, "liver", square_mask(), 0, submit=True)
    assert read(store, worklists.review_history, annotator, rev.annotation_id) == []
    tx(store, ann.reject, reviewer, rev.annotation_id, "the edge misses the left lobe")

    (row,) = read(store, worklists.image_queue, annotator, w["a"].id, "liver", "fix")
    why = row["rejection"]
    assert (row["image_id"], row["status"]) == (w["first"].id, "rejected")
    assert (why.reviewer, why.comment, why.revision, why.decision) == (
        reviewer.username,
        "the edge misses the left lobe",
        1,
        "rejected",
    )
    assert why.created_at is not None
    unlabelled = read(store, worklists.image_queue, annotator, w["a"].id, "liver", "unlabelled")
    assert [r["rejection"] for r in unlabelled if r["status"] == "unlabelled"] == [None]

    # Fixed and submitted again, then approved: the history keeps both decisions, newest first.
    tx(store, ann.save_revision, store.blobs, annotator, w["first"].id, "liver", square_mask(x0=4), 1, submit=True)
    tx(store, ann.approve, reviewer, rev.annotation_id, "good now")
    history = read(store, worklists.review_history, annotator, rev.annotation_id)
    assert [(h.revision, h.decision, h.reviewer, h.comment) for h in history] == [
        (2, "approved", reviewer.username, "good now"),
        (1, "rejected", reviewer.username, "the edge misses the left lobe"),
    ]
    assert read(store, worklists.image_queue, annotator, w["a"].id, "liver", "fix") == []


def test_queue_steps_keep_the_listed_order_and_never_wrap():
    order = [5, 3, 8]
    assert [worklists.step(order, 3, 1), worklists.step(order, 3, -1)] == [8, 5]
    assert [worklists.step(order, 8, 1), worklists.step(order, 5, -1)] == [None, None]  # no wrapping
    assert worklists.step(order, 99, 1) == 5 and worklists.step([], 5, 1) is None
    statuses = {5: "submitted", 3: "unlabelled", 8: "draft", 9: "unlabelled"}
    assert worklists.next_to_do([5, 3, 8, 9], statuses, 5, "unlabelled") == 3
    assert worklists.next_to_do([5, 3, 8, 9], statuses, 3, "unlabelled") == 9  # unlabelled before drafts
    assert worklists.next_to_do([3, 8, 9], {**statuses, 9: "submitted"}, 9, "unlabelled") == 3  # a skipped one
    assert worklists.next_to_do([3, 8], {3: "submitted", 8: "approved"}, 3, "unlabelled") is None
    assert worklists.next_to_do([3, 8], {3: "submitted", 8: "draft"}, 3, "fix") is None


def test_prelabel_proposals_and_the_admin_only_user_lookup(store, world):
    w = world
    base = tx(store, model_versions.base_version)
    assert read(store, worklists.prelabel_mask, w["annotator"], w["second"].id) is None
    job = tx(store, jobs.create_job, JobKind.segment_batch, {}, project_id=w["a"].id, actor=w["admin"])
    mask = tx(
        store,
        record_mask,
        store.blobs,
        None,
        w["second"].id,
        square_mask(),
        base.id,
        {"boxes": [[1, 1, 20, 20]]},
        job_id=job.id,
        item_index=0,
    )
    assert read(store, worklists.prelabel_mask, w["annotator"], w["second"].id).id == mask.id
    assert read(store, worklists.find_user, w["admin"], w["annotator"].username).id == w["annotator"].id
    with pytest.raises(PermissionDeniedError):
        read(store, worklists.find_user, w["annotator"], w["admin"].username)


def test_version_rows_carry_the_evaluation_scores_and_the_active_mark(store, world):
    w = world
    base = tx(store, model_versions.base_version)
    child = tx(
        store,
        model_versions.register_version,
        store.blobs,
        name="tuned",
        family="lite",
        encoder_digest=base.encoder_digest,
        model_digest=uuid.uuid4().hex * 2,
        project_id=w["a"].id,
        parent_id=base.id,
        metrics={"baseline_val_dice": 0.5, "best_val_dice": 0.6},
    )
    rows = {r.version.id: r for r in read(store, worklists.version_rows, w["reviewer"], w["a"].id)}
    assert rows[base.id].active and not rows[child.id].active
    assert (rows[child.id].val_dice_before, rows[child.id].val_dice, rows[child.id].evaluated_images) == (
        0.5,
        0.6,
        None,
    )  # the training's own figures until evaluations are recorded
    tx(store, training.record_evaluation, base.id, w["a"].id, 0.71, None, 3)
    tx(store, training.record_evaluation, child.id, w["a"].id, 0.83, None, 3)
    evaluation = tx(
        store, jobs.create_job, JobKind.evaluate, {"model_version_id": child.id}, project_id=w["a"].id, actor=w["admin"]
    )
    rows = {r.version.id: r for r in read(store, worklists.version_rows, w["reviewer"], w["a"].id)}
    assert (rows[child.id].val_dice_before, rows[child.id].val_dice, rows[child.id].evaluated_images) == (0.71, 0.83, 3)
    assert rows[child.id].pending_evaluation == evaluation.id and rows[base.id].pending_evaluation is None
    assert all(r.version.project_id in (None, w["a"].id) for r in rows.values())
