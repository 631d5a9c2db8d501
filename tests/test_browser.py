"""End-to-end in a real browser: Debian's chromium, driven by Playwright, against `medsam serve`.

One server (web + inference and training workers) for the module, on its own
MEDSAM_DATA_DIR. Users, a project and approved labels are created through the
services before it starts; everything else happens by clicking.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from playwright.sync_api import expect

from tests.browserutil import (
    browser_folder,
    choose,
    drag,
    image_frame,
    login,
    open_page,
    served,
    shot,
    wait_toast,
)
from tests.conftest import DEMO_BOX, DEMO_IMAGE

PASSWORD = "browser-pass-1"
LABEL = "organ"


def _synthetic(folder: Path, n: int) -> list[tuple[Path, np.ndarray]]:
    """Bright blobs on noise; the label is the blob's box (a shape the bundled model does not draw by itself)."""
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        rgb = rng.integers(20, 60, (192, 192, 3), dtype=np.uint8)
        yy, xx = np.mgrid[:192, :192]
        cy, cx, ry, rx = 60 + 9 * i % 70, 70 + 13 * i % 60, 25 + i % 3 * 5, 30 + i % 4 * 4
        blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        rgb[blob] = 200
        mask = np.zeros((192, 192), np.uint8)
        mask[cy - ry : cy + ry + 1, cx - rx : cx + rx + 1] = 1
        path = folder / f"train_{i}.png"
        PILImage.fromarray(rgb).save(path)
        out.append((path, mask))
    return out


@pytest.fixture(scope="module")
def portal(tmp_path_factory, data_dir):
    from portal.store.models import Role
    from portal.store.services import annotations, images, projects, users
    from portal.store.settings import Settings
    from portal.store.store import open_store
    from tests.storeutil import tx

    folder = browser_folder(tmp_path_factory, data_dir, "browser")
    env = {"MEDSAM_TRAINING_GPU": "false", "MEDSAM_JOB_HEARTBEAT_S": "0.5", "MEDSAM_PUBLIC_DEMO": "true"}
    settings = Settings(data_dir=folder, training_gpu=False)
    store = open_store(settings)
    ids = {}
    with store.transaction() as session:
        admin = users.create_user(session, "admin1", PASSWORD, Role.admin)
        for name, role in (("anna", Role.annotator), ("bob", Role.annotator), ("rita", Role.reviewer)):
            ids[name] = users.create_user(session, name, PASSWORD, role)
        work = projects.create_project(session, admin, "Abdomen CT", "ct", [LABEL])
        train = projects.create_project(session, admin, "Blobs", "other", [LABEL], allow_self_review=True)
        for name in ("anna", "bob", "rita"):
            projects.add_member(session, admin, work.id, ids[name])
    (demo_row,) = tx(store, images.add_image, store.blobs, store.settings, admin, work.id, DEMO_IMAGE)
    labelled = _synthetic(folder, 6)
    for path, mask in labelled:
        (row,) = tx(store, images.add_image, store.blobs, store.settings, admin, train.id, path)
        rev = tx(store, annotations.save_revision, store.blobs, admin, row.id, LABEL, mask, 0, submit=True)
        tx(store, annotations.approve, admin, rev.annotation_id)
    store.close()

    with served(folder, env) as (server, browser):
        yield {
            "url": server.url,
            "browser": browser,
            "settings": settings,
            "folder": folder,
            "work": work.id,
            "train": train.id,
            "demo_image": demo_row.id,
            "anna": ids["anna"].id,
        }


def _context(portal):
    return portal["browser"].new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)


def _store(portal):
    from portal.store.store import open_store

    return open_store(portal["settings"], register_base=False)


def test_demo_upload_drag_box_overlay_and_npy_download(portal):
    context = _context(portal)
    page = open_page(context, portal["url"] + "/demo/")
    page.locator("#seg-file input[type=file]").set_input_files(str(DEMO_IMAGE))
    page.locator("#seg-info").get_by_text("512x512").wait_for(timeout=60_000)
    at = image_frame(page, "#seg-annotator", 512, 512)
    x0, y0, x1, y1 = DEMO_BOX
    drag(page, at(x0, y0), at(x1, y1))
    page.locator("#seg-summary").get_by_text("Predicted IoU").wait_for(timeout=60_000)
    page.locator("#seg-overlay img").first.wait_for(timeout=30_000)
    shot(page, "demo_segment")
    with page.expect_download() as download:
        page.locator("#seg-dl-npy").click()
    assert download.value.suggested_filename == "ct_abdomen_mask.npy"
    mask = np.load(download.value.path(), allow_pickle=False)
    assert mask.shape == (512, 512) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1}
    ys, xs = np.nonzero(mask)
    # The mask lies inside the dragged box (a few pixels of slack for the mouse), and fills a fair part of it.
    assert xs.min() >= x0 - 4 and xs.max() <= x1 + 4 and ys.min() >= y0 - 4 and ys.max() <= y1 + 4
    assert mask.sum() > 0.2 * (x1 - x0) * (y1 - y0)
    with page.expect_download() as png:
        page.locator("#seg-dl-png").click()
    assert set(np.unique(np.asarray(PILImage.open(png.value.path())))) == {0, 255}
    assert page.errors == []
    context.close()


def test_an_unsupported_file_shows_its_error_and_nothing_is_kept(portal, tmp_path):
    context = _context(portal)
    page = login(context, portal["url"], "anna", PASSWORD)
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    page.locator("#seg-file input[type=file]").set_input_files(str(bad))
    message = wait_toast(page, "the file type was not recognised")
    assert "Supported formats" in message
    shot(page, "unsupported_file")
    context.close()


def _open_annotation(page, project_text: str):
    page.get_by_role("tab", name="Annotate").click()
    choose(page, "#project", project_text)
    page.locator("#ann-status").get_by_text("Image #").wait_for(timeout=60_000)


def test_annotate_brush_save_submit_then_reviewer_approves(portal):
    from portal.store.models import Annotation, AnnotationRevision, AnnotationStatus
    from portal.store.services.masks import load_mask

    context = _context(portal)
    page = login(context, portal["url"], "anna", PASSWORD)
    _open_annotation(page, "Abdomen CT")
    at = image_frame(page, "#ann-annotator", 512, 512)
    x0, y0, x1, y1 = DEMO_BOX
    drag(page, at(x0, y0), at(x1, y1))
    page.locator("#ann-status").get_by_text("Proposed mask").wait_for(timeout=60_000)
    # Brush: a stroke well outside the proposed mask, in the editor's canvas.
    page.locator("#ann-editor").get_by_role("button", name="Brush").first.click()
    paint = image_frame(page, "#ann-editor", 512, 512)
    drag(page, paint(300, 100), paint(400, 100), steps=12)
    shot(page, "annotate_brush")

    # Autosave: without pressing Save, a draft with the stroke lands in the database within a few seconds.
    store = _store(portal)
    deadline, draft = time.monotonic() + 60, None
    while time.monotonic() < deadline and draft is None:
        time.sleep(1)
        with store.transaction() as session:
            ann = session.query(Annotation).filter_by(image_id=portal["demo_image"], label=LABEL).one_or_none()
            latest = (
                None
                if ann is None
                else session.query(AnnotationRevision)
                .filter_by(annotation_id=ann.id, number=ann.current_revision)
                .one_or_none()
            )
            if (
                latest is not None
                and ann.status == AnnotationStatus.draft
                and load_mask(store.blobs, latest.blob_sha)[60:140, 300:400].any()
            ):
                draft = latest.number
    assert draft is not None, "no automatic draft with the brush stroke"
    page.locator("#ann-status").get_by_text("Draft saved automatically").wait_for(timeout=30_000)

    page.locator("#ann-save").click()
    page.locator("#ann-status").get_by_text(f"Draft saved: revision {draft + 1}").wait_for(timeout=60_000)
    page.locator("#ann-submit").click()
    page.locator("#ann-status").get_by_text(f"Submitted for review: revision {draft + 2}").wait_for(timeout=60_000)
    page.locator("#ann-history").scroll_into_view_if_needed()
    expect(page.locator("#ann-history")).to_contain_text("anna", timeout=30_000)
    shot(page, "annotate_history")

    with store.transaction() as session:
        ann = session.query(Annotation).filter_by(image_id=portal["demo_image"], label=LABEL).one()
        revs = (
            session.query(AnnotationRevision).filter_by(annotation_id=ann.id).order_by(AnnotationRevision.number).all()
        )
        assert ann.status == AnnotationStatus.submitted
        assert [r.number for r in revs] == list(range(1, draft + 3))
        mask = load_mask(store.blobs, revs[-1].blob_sha)
        assert revs[0].base_mask_id is not None and revs[0].prompt["boxes"]
    ys, xs = np.nonzero(mask[:200, 250:])  # the stroke, far from the proposed mask
    assert len(ys), "the brush stroke is in the saved mask"
    assert 60 <= ys.mean() <= 140 and 300 <= xs.mean() + 250 <= 400, (ys.mean(), xs.mean() + 250)
    assert mask[y0:y1, x0:x1].sum() > 1000, "the proposed mask is kept"
    context.close()

    reviewer = _context(portal)
    page = login(reviewer, portal["url"], "rita", PASSWORD)
    page.get_by_role("tab", name="Review").click()
    choose(page, "#project", "Abdomen CT")
    expect(page.locator("#rev-list")).to_contain_text("anna", timeout=60_000)
    page.locator("#rev-view img").first.wait_for(timeout=60_000)
    page.locator("#rev-comment textarea").fill("clean edge")
    shot(page, "review")
    page.locator("#rev-approve").click()
    page.locator("#rev-status").get_by_text("Approved annotation").wait_for(timeout=60_000)
    with store.transaction() as session:
        assert session.get(Annotation, ann.id).status == AnnotationStatus.approved
    store.close()
    reviewer.close()


def test_two_editors_the_second_gets_the_conflict_and_nothing_is_overwritten(portal):
    from portal.store.models import Annotation, AnnotationRevision

    pages, contexts = [], []
    for name in ("anna", "bob"):
        contexts.append(_context(portal))
        page = login(contexts[-1], portal["url"], name, PASSWORD)
        _open_annotation(page, "Abdomen CT")
        pages.append(page)
    store = _store(portal)
    with store.transaction() as session:
        ann = session.query(Annotation).filter_by(image_id=portal["demo_image"], label=LABEL).one()
        before = ann.current_revision
    for page in pages:  # both start from the same revision
        page.locator("#ann-status").get_by_text(f"revision {before}").wait_for(timeout=60_000)
        page.locator("#ann-editor").get_by_role("button", name="Brush").first.click()
    first, second = pages
    paint = image_frame(first, "#ann-editor", 512, 512)
    drag(first, paint(60, 60), paint(120, 60))
    first.locator("#ann-save").click()
    first.locator("#ann-status").get_by_text("Draft saved: revision").wait_for(timeout=60_000)
    time.sleep(1)  # (an automatic draft of the stroke may have come first)
    with store.transaction() as session:
        saved = session.query(Annotation).filter_by(id=ann.id).one().current_revision
    assert saved > before
    paint = image_frame(second, "#ann-editor", 512, 512)
    drag(second, paint(60, 400), paint(120, 400))
    second.locator("#ann-save").click()  # (its automatic draft, if first, meets the same conflict)
    message = wait_toast(second, f"revision {saved} by anna")
    assert "nothing was overwritten" in message
    second.locator("#ann-conflict").get_by_text(f"revision {saved} by anna").first.wait_for(timeout=30_000)
    shot(second, "conflict")
    with store.transaction() as session:
        numbers = [r.number for r in session.query(AnnotationRevision).filter_by(annotation_id=ann.id)]
        latest = session.query(AnnotationRevision).filter_by(annotation_id=ann.id, number=saved).one()
    assert max(numbers) == saved and latest.author_id == portal["anna"]
    store.close()
    for context in contexts:
        context.close()


def test_queue_a_one_epoch_decoder_finetune_and_see_it_under_models(portal):
    context = _context(portal)
    page = login(context, portal["url"], "admin1", PASSWORD)
    page.get_by_role("tab", name="Train").click()
    choose(page, "#project", "Blobs")
    page.locator("#train-epochs input").fill("1")
    page.locator("#train-lr input").fill("0.001")
    page.locator("#train-queue").click()
    page.locator("#train-status").get_by_text("Queued job").wait_for(timeout=60_000)
    job_id = int(page.locator("#train-status strong").first.inner_text())
    deadline = time.monotonic() + 600
    table = page.locator("#train-jobs")
    while time.monotonic() < deadline:
        text = table.text_content()
        if "succeeded" in text or "failed" in text:
            break
        time.sleep(1)
    text = table.text_content()
    assert "succeeded" in text, text
    time.sleep(3.5)  # one more timer tick draws the curves
    shot(page, "train")
    page.get_by_role("tab", name="Models").click()
    page.locator("#models-refresh").click()
    expect(page.locator("#models-table")).to_contain_text(f"job {job_id} (decoder", timeout=60_000)
    shot(page, "models")
    context.close()


def test_admin_imports_a_zip_prelabels_and_downloads_an_export(portal, tmp_path):
    import zipfile

    (a, mask), (b, _) = _synthetic(tmp_path, 2)
    for path in (a, b):  # mirrored, so they are new images, not the fixture's (uploads are deduplicated)
        PILImage.fromarray(np.asarray(PILImage.open(path))[:, ::-1].copy()).save(path)
    mask_png = tmp_path / "mask.png"
    PILImage.fromarray(mask[:, ::-1] * 255).save(mask_png)
    bundle = tmp_path / "labels.zip"
    with zipfile.ZipFile(bundle, "w") as zf:
        zf.write(a, "images/imp_a.png")
        zf.write(mask_png, "masks/imp_a.png")
        zf.write(b, "images/imp_b.png")  # no mask: stays unlabelled, so pre-labelling has work
    context = _context(portal)
    page = login(context, portal["url"], "admin1", PASSWORD)
    page.get_by_role("tab", name="Project admin").click()
    choose(page, "#project", "Blobs")
    page.locator("#admin-import input[type=file]").set_input_files(str(bundle))
    time.sleep(1)
    page.locator("#admin-import-btn").click()
    expect(page.locator("#admin-status")).to_contain_text("Imported 2 images and 1 annotations", timeout=60_000)

    page.locator("#admin-prelabel").click()
    page.locator("#admin-status").get_by_text("Pre-labelling queued").wait_for(timeout=60_000)
    expect(page.locator("#admin-job")).to_contain_text("succeeded", timeout=120_000)
    expect(page.locator("#admin-job")).to_contain_text("1/1 images")

    page.locator("#admin-export").click()
    page.locator("#admin-status").get_by_text("Export ready").wait_for(timeout=60_000)
    shot(page, "admin")
    with page.expect_download() as download:
        page.locator("#admin-export-download").click()
    with zipfile.ZipFile(download.value.path()) as zf:
        names = zf.namelist()
        manifest = __import__("json").loads(zf.read("manifest.json"))
    assert manifest["format"] == "npy" and any(n.startswith("masks/organ/") and "imp_a" in n for n in names)
    assert page.errors == []
    context.close()


def test_api_docs_list_the_routes_without_internet(portal):
    """Any request leaving this machine is refused, as on a hospital network: the docs must still render."""
    from urllib.parse import urlparse

    context = _context(portal)
    left_the_machine: list[str] = []

    def only_local(route):
        if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            left_the_machine.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
    page = context.new_page()
    try:
        page.goto(portal["url"] + "/api/docs")
        paths = page.locator(".opblock-summary-path")
        expect(paths.first).to_be_visible(timeout=30_000)
        shown = {p.get_attribute("data-path") or p.inner_text() for p in paths.all()}
        assert {"/api/v1/projects", "/api/v1/images/{iid}/segment", "/api/v1/auth/token"} <= shown, shown
        page.goto(portal["url"] + "/api/redoc")
        expect(page.get_by_text("/api/v1/images/{iid}/segment").first).to_be_attached(timeout=30_000)
        assert left_the_machine == []
    finally:
        context.close()
