"""The volume viewer in a real browser (issue 12, item 5): box, propagate, scroll, correct, save, export;
and a submitted label map reviewed in the Review tab, its rejection read back in the viewer.

One `medsam serve` (web and its inference worker) on its own MEDSAM_DATA_DIR.
The volume is a 6-slice 96x96 crop of a shared BRATS volume around the
tumour, stored through the volume service before the server starts; the rest
is clicking and keys, as an annotator would.
"""

from __future__ import annotations

import re
import time

import nibabel as nib
import numpy as np
import pytest
from playwright.sync_api import expect

from tests.browserutil import browser_folder, drag, image_frame, login, served, shot
from tests.volumeutil import brats_paths

PASSWORD = "browser-pass-1"
LABEL = "tumour"
CROP = (slice(34, 130), slice(114, 210), slice(93, 99))  # voxel x, y, z: 96 x 96 x 6 through the tumour
SIDE, DEPTH = 96, 6


@pytest.fixture(scope="module")
def portal(tmp_path_factory, data_dir, sample_data):
    from portal.store.models import Role
    from portal.store.services import projects, users, volumes
    from portal.store.settings import Settings
    from portal.store.store import open_store
    from tests.storeutil import tx

    folder = browser_folder(tmp_path_factory, data_dir, "volume")
    image, label = brats_paths(sample_data)
    crop, crop_label = folder / "tiny_brats.nii.gz", nib.load(label).slicer[CROP]
    nib.save(nib.load(image).slicer[CROP], crop)
    truth = np.asanyarray(crop_label.dataobj).transpose(2, 1, 0) > 0  # (Z, H, W), as the portal shows it
    settings = Settings(data_dir=folder, training_gpu=False)
    store = open_store(settings)
    with store.transaction() as session:
        admin = users.create_user(session, "admin1", PASSWORD, Role.admin)
        anna = users.create_user(session, "anna", PASSWORD, Role.annotator)
        rita = users.create_user(session, "rita", PASSWORD, Role.reviewer)
        project = projects.create_project(session, admin, "Brain MR", "mr", [LABEL])
        for member in (anna, rita):
            projects.add_member(session, admin, project.id, member)
    added = tx(store, volumes.add_volume, store.blobs, settings, admin, project.id, [crop])
    store.close()
    env = {"MEDSAM_TRAINING_GPU": "false", "MEDSAM_JOB_HEARTBEAT_S": "0.5"}
    with served(folder, env) as (server, browser):
        yield {
            "url": server.url,
            "browser": browser,
            "settings": settings,
            "volume": added.volume.id,
            "crop": crop,
            "truth": truth,
        }


def _label_map(portal):
    from portal.store.services.volumes_labels import read_label_map
    from portal.store.store import open_store
    from tests.storeutil import tx

    store = open_store(portal["settings"], register_base=False)
    try:
        from portal.store.services import worklists

        anna = tx(store, worklists.account, "anna")
        _, rev, labels = tx(store, read_label_map, store.blobs, anna, portal["volume"], LABEL)
        return rev.number, labels
    finally:
        store.close()


def _status(page) -> str:
    return page.locator("#vol-status").inner_text()


def _on_slice(page, z: int) -> int:
    """Waits for slice ``z`` and returns its labelled area as the status line tells it."""
    expect(page.locator("#vol-status")).to_contain_text(f"Slice {z} of", timeout=60_000)
    return int(re.search(r"on this slice: (\d+) px", _status(page)).group(1))


def _coloured_pixels(page) -> int:
    """Pixels of the label's colour family (red) on the viewer's slice canvas: the overlay drawn there."""
    return page.evaluate(
        """() => {
        const c = document.querySelector('#vol-annotator canvas'), g = c.getContext('2d');
        const d = g.getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] > 180 && d[i + 1] < 90 && d[i + 2] < 90) n++;
        return n; }"""
    )


def test_box_propagate_scroll_correct_save_and_export(portal, tmp_path):
    truth = portal["truth"]
    context = portal["browser"].new_context(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
    context.set_default_timeout(120_000)
    page = login(context, portal["url"], "anna", PASSWORD)
    page.get_by_role("tab", name="Annotate").click(no_wait_after=True)
    expect(page.locator("#vol-title")).to_contain_text("Volume #", timeout=60_000)
    page.locator("#ann-image input").first.click()
    entries = page.get_by_role("option").all_inner_texts()
    page.keyboard.press("Escape")
    assert len(entries) == 1 and f"volume, {DEPTH} slices" in entries[0], entries  # one item, not six slices

    key = _on_slice(page, DEPTH // 2)
    assert key == 0
    page.locator(f"#vol-annotator .live-wrap[data-ready='{_slice_id(portal, DEPTH // 2)}']").wait_for()
    ys, xs = np.nonzero(truth[DEPTH // 2])
    at = image_frame(page, "#vol-annotator", SIDE, SIDE)
    drag(page, at(xs.min() - 2, ys.min() - 2), at(xs.max() + 2, ys.max() + 2))
    expect(page.locator("#vol-status")).to_contain_text("Proposed on slice 3", timeout=60_000)

    page.locator("#vol-propagate").click()
    expect(page.locator("#vol-status")).to_contain_text("Propagated", timeout=300_000)
    assert "progress" in page.locator("#vol-progress").inner_html()
    propagated, labels = _label_map(portal)
    dice = 2 * (labels & truth).sum() / (labels.sum() + truth.sum())
    assert labels.any(axis=(1, 2)).all() and dice > 0.7, dice  # every slice got the tumour
    page.locator("#vol-viewer").evaluate("el => el.scrollIntoView()")
    shot(page, "volume_viewer")

    # Scroll with the keys (the viewer has focus once its hint is clicked): the overlay is on that slice too.
    page.locator("#vol-keys").click()
    page.keyboard.press("ArrowUp")
    area = _on_slice(page, DEPTH // 2 + 1)
    assert area == int(labels[DEPTH // 2 + 1].sum()) > 0
    page.keyboard.press("PageDown")
    area = _on_slice(page, 0)
    assert area == int(labels[0].sum()) > 0
    time.sleep(1)  # the widget draws the new slice's picture once it has loaded
    assert _coloured_pixels(page) > 50

    # Correct slice 0 with a tighter box (the brush editor is the 2-D one, tested there): only slice 0 changes.
    page.locator(f"#vol-annotator .live-wrap[data-ready='{_slice_id(portal, 0)}']").wait_for()
    ys, xs = np.nonzero(labels[0])
    box = (xs.min(), ys.min(), xs.max(), (ys.min() + ys.max()) // 2)  # the top half of the propagated mask
    at = image_frame(page, "#vol-annotator", SIDE, SIDE)  # the page has scrolled since
    drag(page, at(box[0], box[1]), at(box[2], box[3]))
    expect(page.locator("#vol-status")).to_contain_text("Proposed on slice 0", timeout=60_000)
    page.locator("#vol-save").click()
    expect(page.locator("#vol-status")).to_contain_text("Draft saved: revision", timeout=60_000)
    saved, after = _label_map(portal)
    assert saved == propagated + 1
    ys, _ = np.nonzero(after[0])
    assert after[0].any() and not np.array_equal(after[0], labels[0]) and ys.max() <= box[3] + 4
    assert np.array_equal(after[1:], labels[1:])  # the other slices as propagated

    page.locator("#vol-export-nifti").click()
    download_button = page.locator("#vol-download")
    download_button.wait_for(state="visible", timeout=60_000)
    with page.expect_download() as info:
        download_button.click()
    out = tmp_path / info.value.suggested_filename
    info.value.save_as(out)
    exported, source = nib.load(out), nib.load(portal["crop"])
    assert exported.shape == source.shape and np.allclose(exported.affine, source.affine)
    assert np.array_equal(np.asanyarray(exported.dataobj).transpose(2, 1, 0) > 0, after)
    assert page.errors == []
    context.close()


def _submit_as_anna(portal) -> None:
    """anna submits the true tumour as the next revision of the map, whatever the other test left."""
    from portal.store.services import volumes_labels, worklists
    from portal.store.store import open_store
    from tests.storeutil import tx

    store = open_store(portal["settings"], register_base=False)
    try:
        anna = tx(store, worklists.account, "anna")
        found = tx(store, volumes_labels.find_annotation, anna, portal["volume"], LABEL)
        base = 0 if found is None else found.current_revision
        tx(
            store,
            volumes_labels.save_label_map,
            store.blobs,
            anna,
            portal["volume"],
            LABEL,
            portal["truth"],
            base,
            submit=True,
        )
    finally:
        store.close()


def test_a_reviewer_rejects_a_label_map_and_the_annotator_reads_why_in_the_viewer(portal):
    _submit_as_anna(portal)
    context = portal["browser"].new_context(viewport={"width": 1400, "height": 1100})
    context.set_default_timeout(60_000)
    page = login(context, portal["url"], "rita", PASSWORD)
    page.get_by_role("tab", name="Review").click()
    expect(page.locator("#rev-list")).to_contain_text("(3-D)")
    expect(page.locator("#rev-note")).to_contain_text(f"of {DEPTH} slices labelled")
    page.locator("#rev-view img").first.wait_for()
    page.locator("#rev-comment textarea").fill("the rim of slice 2 is missing")
    page.locator("#rev-reject").click()
    expect(page.locator("#rev-status")).to_contain_text("Rejected annotation")
    assert page.errors == []
    context.close()

    context = portal["browser"].new_context(viewport={"width": 1400, "height": 1100})
    context.set_default_timeout(60_000)
    page = login(context, portal["url"], "anna", PASSWORD)
    page.get_by_role("tab", name="Annotate").click(no_wait_after=True)
    expect(page.locator("#vol-title")).to_contain_text("rejected")
    expect(page.locator("#vol-status")).to_contain_text("Rejected by rita")
    expect(page.locator("#vol-status")).to_contain_text("the rim of slice 2 is missing")
    assert page.errors == []
    context.close()


def _slice_id(portal, z: int) -> int:
    from portal.store.services import volumes
    from portal.store.store import open_store

    store = open_store(portal["settings"], register_base=False)
    try:
        with store.transaction() as db:
            return volumes.slice_rows(db, portal["volume"])[z].id
    finally:
        store.close()
