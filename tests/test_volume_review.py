"""A volume's 3-D label map in the review listings (issue 12): listed, counted, reviewed and sent back as a
2-D mask is, through the same ``worklists`` reads the Review and Annotate tabs show."""

from __future__ import annotations

import uuid

import pytest

from portal.store.models import Role, Volume
from portal.store.services import annotations as ann
from portal.store.services import images, projects, volumes, volumes_labels, worklists
from portal.web.ui.volume_queue import item_of, work_list
from tests.storeutil import new_user, png_file, store_per_database, tx
from tests.volumeutil import tiny_brats, tumour_zhw


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(request, tmp_path_factory):
    yield from store_per_database(request, tmp_path_factory, "volume_review")


@pytest.fixture(scope="module")
def world(store, sample_data, tmp_path_factory):
    """One project with a 4-slice volume and one 2-D image; an annotator, a reviewer and an outsider."""
    admin, annotator = new_user(store, Role.admin), new_user(store, Role.annotator, "ann")
    reviewer, outsider = new_user(store, Role.reviewer, "rev"), new_user(store, Role.reviewer, "out")
    with store.transaction() as db:
        project = projects.create_project(db, admin, f"volrev-{uuid.uuid4().hex[:6]}", "mr", ["tumour"])
        for user in (annotator, reviewer):
            projects.add_member(db, admin, project.id, user)
    folder = tmp_path_factory.mktemp("review")
    image, label = tiny_brats(sample_data, folder)
    added = tx(store, volumes.add_volume, store.blobs, store.settings, admin, project.id, [image])
    tx(store, images.add_image, store.blobs, store.settings, admin, project.id, png_file(folder, 7))
    return {
        "annotator": annotator,
        "reviewer": reviewer,
        "outsider": outsider,
        "project": project,
        "volume": added.volume,
        "truth": tumour_zhw(label),
    }


def read(store, fn, *args):
    with store.transaction() as db:
        return fn(db, *args)


def test_a_submitted_label_map_is_listed_counted_reviewed_and_its_rejection_reaches_the_annotator(store, world):
    w, reviewer, annotator = world, world["reviewer"], world["annotator"]
    pid, volume = w["project"].id, w["volume"]
    rev = tx(store, volumes_labels.save_label_map, store.blobs, annotator, volume.id, "tumour", w["truth"], 0)
    assert read(store, worklists.submitted, reviewer, pid) == []  # a draft waits for nobody
    counts = {row[0]: row[1:] for row in read(store, worklists.status_counts, reviewer)}
    # images (4 slices and a PNG), unlabelled (the PNG: the map labels the slices), draft, submitted, ...
    assert counts[w["project"].name] == [5, 1, 1, 0, 0, 0]
    tx(store, ann.submit, annotator, rev.annotation_id)

    (row,) = read(store, worklists.submitted, reviewer, pid)
    assert row == {
        "annotation_id": rev.annotation_id,
        "image_id": None,
        "volume_id": volume.id,
        "filename": f"{volume.filename} (3-D)",
        "label": "tumour",
        "revision": 1,
        "author": annotator.username,
    }
    counts = {row[0]: row[1:] for row in read(store, worklists.status_counts, reviewer)}
    assert counts[w["project"].name] == [5, 1, 0, 1, 0, 0]
    owner, revision = read(store, worklists.review_item, reviewer, rev.annotation_id)
    assert isinstance(owner, Volume) and owner.id == volume.id and revision.blob_sha == rev.blob_sha
    assert read(store, projects.annotation_colour, reviewer, rev.annotation_id)[0] == "tumour"
    assert [(r.number, r.author) for r in read(store, worklists.revision_history, reviewer, rev.annotation_id)] == [
        (1, annotator.username)
    ]
    for look in (worklists.review_item, worklists.review_history, projects.annotation_colour):
        with pytest.raises(Exception, match="not found"):
            read(store, look, w["outsider"], rev.annotation_id)

    tx(store, ann.reject, reviewer, rev.annotation_id, "slice 2 misses the rim")
    assert read(store, worklists.submitted, reviewer, pid) == []
    counts = {row[0]: row[1:] for row in read(store, worklists.status_counts, reviewer)}
    assert counts[w["project"].name] == [5, 1, 0, 0, 0, 1]
    (why,) = read(store, worklists.review_history, annotator, rev.annotation_id)
    assert (why.decision, why.reviewer, why.comment) == ("rejected", reviewer.username, "slice 2 misses the rim")
    (fix,) = read(store, work_list, annotator, pid, "tumour", "fix")
    assert fix["image_id"] == item_of(volume.id) and fix["rejection"].comment == "slice 2 misses the rim"
