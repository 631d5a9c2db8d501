"""The admin's and the annotator's portal in a real browser (Debian chromium, Playwright) against `medsam serve`.

One server for the module on its own MEDSAM_DATA_DIR; accounts, projects and
approved labels are seeded through the services before it starts. Covers what
issue 11 found missing: tabs by role, failures told in the status line with the
lists left alone, project creation without a false error, members and account
creation, thumbnails and deleting a clicked image, import hints that render,
and an uploaded checkpoint evaluated and promoted without force from the UI.
"""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from playwright.sync_api import expect

from tests.browserutil import browser_folder, choose, login, served, toast_texts

PASSWORD = "browser-pass-1"
RESTRICTED_TABS = ("Review", "Train", "Models", "Project admin")


def _blob_images(folder: Path, n: int, seed: int) -> list[tuple[Path, np.ndarray]]:
    """Bright blobs on noise, and the blob's box as its label."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        rgb = rng.integers(20, 60, (160, 160, 3), dtype=np.uint8)
        cy, cx, r = 50 + 11 * i % 60, 60 + 7 * i % 50, 22 + i % 3 * 4
        yy, xx = np.mgrid[:160, :160]
        rgb[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 210
        mask = np.zeros((160, 160), np.uint8)
        mask[cy - r : cy + r + 1, cx - r : cx + r + 1] = 1
        path = folder / f"blob_{seed}_{i}.png"
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

    folder = browser_folder(tmp_path_factory, data_dir, "browser_admin")
    env = {"MEDSAM_TRAINING_GPU": "false", "MEDSAM_JOB_HEARTBEAT_S": "0.5"}
    settings = Settings(data_dir=folder, training_gpu=False)
    store = open_store(settings)
    with store.transaction() as session:
        admin = users.create_user(session, "admin1", PASSWORD, Role.admin)
        anna = users.create_user(session, "anna", PASSWORD, Role.annotator)
        two = projects.create_project(session, admin, "Two labels", "ct", ["organ", "tumour"])
        scored = projects.create_project(session, admin, "Scored", "other", ["organ"], allow_self_review=True)
        projects.add_member(session, admin, two.id, anna)
    for path, _ in _blob_images(folder, 2, 1):
        tx(store, images.add_image, store.blobs, store.settings, admin, two.id, path)
    for path, mask in _blob_images(folder, 6, 2):
        (row,) = tx(store, images.add_image, store.blobs, store.settings, admin, scored.id, path)
        rev = tx(store, annotations.save_revision, store.blobs, admin, row.id, "organ", mask, 0, submit=True)
        tx(store, annotations.approve, admin, rev.annotation_id)
    store.close()

    with served(folder, env) as (server, browser):
        yield {"url": server.url, "browser": browser, "settings": settings, "two": two.id, "scored": scored.id}


def _page(portal, user: str):
    context = portal["browser"].new_context(viewport={"width": 1400, "height": 1000})
    return context, login(context, portal["url"], user, PASSWORD)


def _admin_tab(page, project: str) -> None:
    page.get_by_role("tab", name="Project admin").click()
    choose(page, "#project", project)


def _no_error_badge(page, selector: str) -> None:
    expect(page.locator(selector).locator(".error")).to_have_count(0)


def _zip(tmp_path: Path, entries: dict[str, bytes]) -> Path:
    path = tmp_path / "labels.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def _png(arr: np.ndarray) -> bytes:
    out = io.BytesIO()
    PILImage.fromarray(arr).save(out, format="PNG")
    return out.getvalue()


def test_an_annotator_sees_only_the_tabs_it_may_use(portal):
    context, page = _page(portal, "anna")
    expect(page.get_by_role("tab", name="Annotate")).to_be_visible()
    for name in RESTRICTED_TABS:
        expect(page.get_by_role("tab", name=name)).to_have_count(0)
    context.close()
    context, page = _page(portal, "admin1")
    for name in RESTRICTED_TABS:
        expect(page.get_by_role("tab", name=name)).to_be_visible()
    context.close()


def test_a_failed_import_is_told_in_the_status_line_and_a_new_project_raises_no_false_error(portal, tmp_path):
    context, page = _page(portal, "admin1")
    _admin_tab(page, "Two labels")
    expect(page.locator("#admin-images")).to_contain_text("blob_1_0", timeout=60_000)
    page.locator("#admin-export").click()
    expect(page.locator("#admin-status")).to_contain_text("Export ready", timeout=60_000)
    ((image, mask),) = _blob_images(tmp_path, 1, 3)
    odd = mask * 7
    odd[0, 0] = 9
    bundle = _zip(tmp_path, {"images/x.png": image.read_bytes(), "masks/x.png": _png(odd)})
    page.locator("#admin-import input[type=file]").set_input_files(str(bundle))
    page.locator("#admin-import-btn").click()
    status = page.locator("#admin-status")
    expect(status).to_contain_text("nothing was imported", timeout=60_000)
    expect(status).to_contain_text("masks/organ/ or masks/tumour/")  # the hint renders whole
    expect(status).not_to_contain_text("Export ready")
    _no_error_badge(page, "#admin-images")
    _no_error_badge(page, "#project")
    expect(page.locator("#admin-images")).to_contain_text("blob_1_0")
    expect(page.locator("#project input").first).to_have_value("Two labels (#%d)" % portal["two"])

    page.locator("#admin-name textarea").fill("Fresh project")
    page.locator("#admin-labels textarea").fill("organ")
    page.locator("#admin-create").click()
    expect(status).to_contain_text("Created project", timeout=60_000)
    expect(page.locator("#project input").first).to_have_value(
        __import__("re").compile(r"Fresh project \(#\d+\)"), timeout=30_000
    )
    page.get_by_role("tab", name="Models").click()  # the other tabs followed the new project without an error
    page.wait_for_timeout(1500)
    assert not [t for t in toast_texts(page) if "not in the list" in t or "Error" in t], toast_texts(page)
    assert page.errors == []
    context.close()


def test_a_binary_mask_in_a_two_label_project_imports_as_the_first_label(portal, tmp_path):
    context, page = _page(portal, "admin1")
    _admin_tab(page, "Two labels")
    ((image, mask),) = _blob_images(tmp_path, 1, 4)
    bundle = _zip(tmp_path, {"images/y.png": image.read_bytes(), "masks/y.png": _png(mask * 255)})
    page.locator("#admin-import input[type=file]").set_input_files(str(bundle))
    page.locator("#admin-import-btn").click()
    status = page.locator("#admin-status")
    expect(status).to_contain_text("Imported 1 images and 1 annotations", timeout=60_000)
    expect(status).to_contain_text("'organ', the first label")
    expect(status).to_contain_text("masks/tumour/")
    context.close()


def test_the_admin_creates_an_account_sees_the_members_and_deletes_a_clicked_image(portal):
    context, page = _page(portal, "admin1")
    _admin_tab(page, "Two labels")
    members = page.locator("#admin-members")
    expect(members).to_contain_text("anna", timeout=60_000)
    page.locator("#admin-new-user textarea").fill("nora")
    choose(page, "#admin-new-role", "reviewer")
    page.locator("#admin-create-user").click()
    status = page.locator("#admin-status")
    expect(status).to_contain_text("Created the account nora (reviewer)", timeout=60_000)
    expect(members).to_contain_text("nora")
    password = status.locator("code").first.inner_text()
    nora = portal["browser"].new_context()
    login(nora, portal["url"], "nora", password)  # the password shown once works
    nora.close()

    gallery = page.locator("#admin-images")
    expect(gallery.locator("img").nth(1)).to_be_visible(timeout=60_000)  # thumbnails, not a table of ids
    gallery.locator("img").first.click()
    expect(page.locator("#admin-selected")).to_contain_text("blob_1_0", timeout=30_000)
    page.locator("#admin-delete-ok input").check()
    page.locator("#admin-delete-image").click()
    expect(status).to_contain_text("Deleted image", timeout=60_000)
    expect(gallery).not_to_contain_text("blob_1_0")
    context.close()


def test_an_uploaded_checkpoint_is_evaluated_and_promoted_without_force(portal, tmp_path):
    from medsam_core.models import bundled_lite_checkpoint

    checkpoint = tmp_path / "same_weights.pth"
    shutil.copy(bundled_lite_checkpoint(), checkpoint)
    context, page = _page(portal, "admin1")
    page.get_by_role("tab", name="Models").click()
    choose(page, "#project", "Scored")
    page.get_by_text("Register a MedSAM / SAM checkpoint").click()
    page.locator("#ckpt-file input[type=file]").set_input_files(str(checkpoint))
    choose(page, "#ckpt-family", "lite")
    page.locator("#ckpt-name textarea").fill("uploaded-lite")
    page.locator("#ckpt-register").click()
    status = page.locator("#models-status")
    expect(status).to_contain_text("Registered", timeout=120_000)
    expect(status).to_contain_text("scores are in the table", timeout=300_000)  # followed by the timer
    from portal.store.models import ModelVersion
    from portal.store.store import open_store

    store = open_store(portal["settings"], register_base=False)
    with store.transaction() as session:
        vid = session.query(ModelVersion).filter_by(name="uploaded-lite").one().id
    store.close()
    expect(page.locator("#models-table")).to_contain_text("uploaded-lite")
    page.locator("#models-version input").fill(str(vid))
    page.locator("#models-activate").click()
    expect(status).to_contain_text("is active.", timeout=60_000)
    expect(status).not_to_contain_text("forced")
    context.close()
