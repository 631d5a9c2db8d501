"""The annotator's loop in a real browser (issue 11): queue moves, rejection comments, messages, undo.

One `medsam serve` for the module, on its own MEDSAM_DATA_DIR; users, projects,
images and a rejected annotation are made through the services before it
starts, and everything else happens by clicking, as a new annotator would.
No model run is needed: submitting an empty mask is enough to move the queue.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browserutil import browser_folder, login, open_page, served, wait_toast
from tests.storeutil import png_file, square_mask

PASSWORD = "browser-pass-1"
LABEL = "organ"
REJECTION = "the edge misses the left lobe"
SIZE = (96, 128)  # height, width of the seeded images


@pytest.fixture(scope="module")
def portal(tmp_path_factory, data_dir):
    from portal.store.models import Role
    from portal.store.services import annotations, images, projects, users
    from portal.store.settings import Settings
    from portal.store.store import open_store
    from tests.storeutil import tx

    folder = browser_folder(tmp_path_factory, data_dir, "annotator")
    settings = Settings(data_dir=folder, training_gpu=False)
    store = open_store(settings)
    with store.transaction() as session:
        admin = users.create_user(session, "admin1", PASSWORD, Role.admin)
        anna = users.create_user(session, "anna", PASSWORD, Role.annotator)
        rita = users.create_user(session, "rita", PASSWORD, Role.reviewer)
        loop = projects.create_project(session, admin, "Loop", "ct", [LABEL])
        fixes = projects.create_project(session, admin, "Fixes", "ct", [LABEL])
        for project in (loop, fixes):
            for user in (anna, rita):
                projects.add_member(session, admin, project.id, user)
    queue = [
        tx(store, images.add_image, store.blobs, settings, admin, loop.id, png_file(folder, 300 + i, SIZE))[0].id
        for i in range(4)
    ]
    (sent_back,) = tx(store, images.add_image, store.blobs, settings, admin, fixes.id, png_file(folder, 400, SIZE))
    rev = tx(
        store, annotations.save_revision, store.blobs, anna, sent_back.id, LABEL, square_mask(SIZE), 0, submit=True
    )
    tx(store, annotations.reject, rita, rev.annotation_id, REJECTION)
    store.close()

    with served(folder, {"MEDSAM_TRAINING_GPU": "false", "MEDSAM_PUBLIC_DEMO": "true"}) as (server, browser):
        yield {
            "url": server.url,
            "browser": browser,
            "settings": settings,
            "queue": queue,
            "sent_back": sent_back.id,
            "folder": folder,
        }


def _context(portal):
    """A fresh browser profile; the editor's canvas is slow on a loaded 2-core machine, so waits are long."""
    context = portal["browser"].new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(120_000)
    return context


def choose(page, selector: str, option_text: str) -> None:
    """browserutil.choose, without waiting for navigations a Gradio click never starts (it hung here)."""
    page.locator(f"{selector} input").first.click(no_wait_after=True)
    page.get_by_role("option").filter(has_text=option_text).first.click(no_wait_after=True)


def _annotate(page, project: str) -> None:
    page.get_by_role("tab", name="Annotate").click(no_wait_after=True)
    page.locator("#ann-status").get_by_text("Image #").wait_for(timeout=60_000)  # the first project settles
    choose(page, "#project", project)
    page.locator("#ann-status").get_by_text("Image #").wait_for(timeout=60_000)


def _on_image(page, image_id: int) -> None:
    page.locator("#ann-status").get_by_text(f"Image #{image_id} ").wait_for(timeout=60_000)


def _listed(page) -> list[str]:
    """The image list's entries, as the dropdown shows them."""
    page.locator("#ann-image input").first.click()
    options = page.get_by_role("option")
    options.first.wait_for(timeout=30_000)
    texts = options.all_inner_texts()
    page.keyboard.press("Escape")
    return texts


def test_submit_moves_on_and_previous_next_follow_the_listed_queue(portal):
    first, second, third, _ = portal["queue"]
    context = _context(portal)
    page = login(context, portal["url"], "anna", PASSWORD)
    _annotate(page, "Loop")
    _on_image(page, first)
    page.locator("#ann-submit").click()
    _on_image(page, second)  # moved on by itself
    entry = next(t for t in _listed(page) if t.startswith(f"#{first} "))
    assert "submitted" in entry and "unlabelled" not in entry, entry

    page.locator("#ann-next").click()
    _on_image(page, third)
    page.locator("#ann-prev").click()
    _on_image(page, second)
    page.locator("body").press("Alt+p")
    _on_image(page, first)  # the submitted image keeps its place in the list
    page.locator("#ann-prev").click()
    wait_toast(page, "first image of the queue")
    _on_image(page, first)  # no wrapping to the last one
    page.locator("body").press("Alt+n")
    _on_image(page, second)
    assert page.errors == []
    context.close()


def test_the_reviewers_rejection_reaches_the_annotator(portal):
    context = _context(portal)
    page = login(context, portal["url"], "anna", PASSWORD)
    _annotate(page, "Fixes")
    page.locator("#ann-mode").get_by_text("Needs my fix").click()
    _on_image(page, portal["sent_back"])
    status = page.locator("#ann-status")
    expect(status).to_contain_text("Rejected by rita", timeout=30_000)
    expect(status).to_contain_text(REJECTION)
    (entry,) = _listed(page)
    assert "rejected" in entry and "rita" in entry and REJECTION in entry, entry
    history = page.locator("#ann-history")
    history.scroll_into_view_if_needed()
    expect(history).to_contain_text(REJECTION, timeout=30_000)
    expect(history).to_contain_text("rejected")
    context.close()


def _no_server_folder(message: str) -> None:
    assert "/tmp" not in message and "medsam-ui" not in message and "gradio" not in message.lower(), message
    assert not re.search(r"[0-9a-f]{20,}", message), message  # no upload folder's random name either


def test_a_hostile_upload_name_shows_its_name_and_no_server_folder(portal, tmp_path):
    name = "(copy) scan 'x'.txt"
    bad = tmp_path / name
    bad.write_text("not an image")
    context = _context(portal)
    page = open_page(context, portal["url"] + "/demo/")
    page.locator("#seg-file input[type=file]").set_input_files(str(bad))
    message = wait_toast(page, "the file type was not recognised")
    assert f"\n{name}: the file type" in message, message  # (the toast's text starts with "Error ×")
    _no_server_folder(message)
    context.close()

    context = _context(portal)
    page = login(context, portal["url"], "admin1", PASSWORD)
    page.get_by_role("tab", name="Project admin").click(no_wait_after=True)
    choose(page, "#project", "Loop")
    page.locator("#admin-upload input[type=file]").set_input_files(str(bad))
    page.locator("#admin-upload .file-preview, #admin-upload table").first.wait_for(timeout=30_000)
    page.locator("#admin-upload-btn").click()
    status = page.locator("#admin-status")
    expect(status).to_contain_text("the file type was not recognised", timeout=60_000)
    _no_server_folder(status.inner_text())
    assert f"{name}: the file type" in status.inner_text()
    context.close()


def test_re_uploading_an_image_says_it_is_already_there_and_adds_nothing(portal):
    first = portal["queue"][0]
    context = _context(portal)
    page = login(context, portal["url"], "admin1", PASSWORD)
    page.get_by_role("tab", name="Project admin").click(no_wait_after=True)
    choose(page, "#project", "Loop")
    page.locator("#admin-upload input[type=file]").set_input_files(str(portal["folder"] / "img_300.png"))
    page.locator("#admin-upload .file-preview, #admin-upload table").first.wait_for(timeout=30_000)
    page.locator("#admin-upload-btn").click()
    status = page.locator("#admin-status")
    expect(status).to_contain_text(f"already in the project as image {first}", timeout=60_000)
    expect(status).to_contain_text("nothing was added")
    assert "✓" not in status.inner_text()
    context.close()
