"""The Annotate tab's box panel and brush editor in a real browser (issue 11, item 5, and Ctrl+Z).

One `medsam serve` for the module, on its own MEDSAM_DATA_DIR; the users, the
project (its label class has a colour of its own) and the images are made
through the services before it starts. No test waits for a decoded mask: the
box panel's prompt is read from the widget itself, and the editor's strokes
from the saved revision.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image as PILImage
from playwright.sync_api import expect

from tests.browserutil import browser_folder, drag, image_frame, login, served

PASSWORD = "browser-pass-1"
LABEL, COLOUR = "organ", (0, 192, 255)  # a colour no default has
BIG = (1366, 2048)  # height, width: the old editor showed it at a quarter of its size
SMALL = (128, 128)


def _picture(folder, name: str, size: tuple[int, int], base: int = 20):
    """A dark, smooth picture (small as a PNG), so the label colour stands out over it."""
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    grey = (base + 20 * (yy / h) + 20 * (xx / w)).astype(np.uint8)
    path = folder / f"{name}.png"
    PILImage.fromarray(np.dstack([grey] * 3)).save(path)
    return path


@pytest.fixture(scope="module")
def portal(tmp_path_factory, data_dir):
    from portal.store.models import Role
    from portal.store.services import images, projects, users
    from portal.store.settings import Settings
    from portal.store.store import open_store
    from tests.storeutil import tx

    folder = browser_folder(tmp_path_factory, data_dir, "editor")
    settings = Settings(data_dir=folder, training_gpu=False)
    store = open_store(settings)
    with store.transaction() as session:
        admin = users.create_user(session, "admin1", PASSWORD, Role.admin)
        anna = users.create_user(session, "anna", PASSWORD, Role.annotator)
        project = projects.create_project(session, admin, "Editor", "ct", [{"name": LABEL, "color": "#00c0ff"}])
        projects.add_member(session, admin, project.id, anna)
    ids = {
        name: tx(store, images.add_image, store.blobs, settings, admin, project.id, _picture(folder, name, *how))[0].id
        for name, how in (("undo", (SMALL, 30)), ("small", (SMALL,)), ("big", (BIG,)))
    }
    store.close()
    with served(folder, {"MEDSAM_TRAINING_GPU": "false"}) as (server, browser):
        yield {"url": server.url, "browser": browser, "settings": settings, "ids": ids}


def _page(portal, image: str):
    """Anna's Annotate tab on one image (the queue starts with a small one: the big one is slow to show)."""
    context = portal["browser"].new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(120_000)
    page = login(context, portal["url"], "anna", PASSWORD)
    page.get_by_role("tab", name="Annotate").click(no_wait_after=True)
    image_id = portal["ids"][image]
    if image != "undo":
        page.locator("#ann-status").get_by_text("Image #").wait_for()
        page.locator("#ann-image input").first.click(no_wait_after=True)
        page.get_by_role("option").filter(has_text=f"#{image_id} ").first.click(no_wait_after=True)
    page.locator("#ann-status").get_by_text(f"Image #{image_id} ").wait_for()
    page.locator("#ann-editor").get_by_text("processing").wait_for(state="hidden")  # the picture is in
    return context, page


def _saved_mask(portal, image: str) -> np.ndarray:
    from portal.store.models import Annotation, AnnotationRevision
    from portal.store.services.masks import load_mask
    from portal.store.store import open_store

    store = open_store(portal["settings"])
    try:
        with store.transaction() as session:
            ann = session.query(Annotation).filter_by(image_id=portal["ids"][image], label=LABEL).one()
            rev = session.query(AnnotationRevision).filter_by(annotation_id=ann.id, number=ann.current_revision).one()
            return load_mask(store.blobs, rev.blob_sha)
    finally:
        store.close()


def _stroke(page, dx: float = 90, dy: float = 60) -> None:
    """A diagonal brush stroke through the middle of the editor's canvas."""
    page.locator("#ann-editor").get_by_role("button", name="Brush").first.click(no_wait_after=True)
    # The picture's own canvas: the editor has several, and for a big picture the first is not the one shown.
    canvases = page.locator("#ann-editor canvas")
    boxes = [b for b in (canvases.nth(i).bounding_box() for i in range(canvases.count())) if b]
    box = max(boxes, key=lambda b: min(b["width"], 1000) * min(b["height"], 1000))
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    drag(page, (cx - dx, cy - dy), (cx + dx, cy + dy), steps=6)


def _longest_step(mask: np.ndarray) -> int:
    """The widest stair step of the stroke's top edge, in image pixels, over its middle half."""
    cols = np.nonzero(mask.any(axis=0))[0]
    cols = cols[len(cols) // 4 : 3 * len(cols) // 4]
    top = mask[:, cols].argmax(axis=0)
    longest = run = 1
    for a, b in zip(top, top[1:], strict=False):
        run = run + 1 if a == b else 1
        longest = max(longest, run)
    return longest


def test_the_brush_draws_at_full_resolution_in_the_label_colour(portal):
    context, page = _page(portal, "big")
    _stroke(page)
    area = page.locator("#ann-editor").bounding_box()  # (an element screenshot waits for a still canvas)
    shot = np.asarray(PILImage.open(io.BytesIO(page.screenshot(clip=area))).convert("RGB"))
    r, g, b = (shot[..., i].astype(int) for i in range(3))
    painted = (b > 120) & (g > 0.55 * b) & (g < 0.95 * b) & (r < 60)  # the label's colour (0, 192, 255), maybe blended
    # A few hundred pixels at the editor's zoom; any other brush colour gives none.
    assert painted.sum() > 50, "the stroke is drawn in the label's colour"
    # The autosave that follows the stroke: it is sent once the editor has uploaded its 1024 px layer, while a
    # Save clicked at once may still carry the layer from before the stroke (the autosave then saves it).
    page.locator("#ann-status").get_by_text("Draft saved automatically").wait_for()
    mask = _saved_mask(portal, "big") > 0
    assert mask.shape == BIG and mask.sum() > 500
    ys, xs = np.nonzero(mask)
    assert xs.max() - xs.min() > 100 and ys.max() - ys.min() > 60, "a diagonal stroke"
    # The old editor worked on a 512 px copy: every edge came back in 4 px steps.
    assert _longest_step(mask) <= 3, _longest_step(mask)
    assert page.errors == []
    context.close()


def _live(page) -> dict:
    return page.evaluate("() => ({box: window.__medsamLive.box, points: window.__medsamLive.points})")


def test_box_panel_zooms_around_the_cursor_pans_and_keeps_image_pixels(portal):
    context, page = _page(portal, "small")
    h, w = SMALL
    at = image_frame(page, "#ann-annotator", w, h)
    (x0, y0), (x1, y1) = at(0, 0), at(w, h)
    assert x1 - x0 >= 3 * w and y1 - y0 >= 3 * h, "a 128 px image is drawn scaled up, not tiny"
    point = at(40, 50)
    page.mouse.move(*point)
    page.mouse.wheel(0, -600)  # zoom in around the cursor
    drag(page, point, (point[0] + 120, point[1] + 90))
    box = _live(page)["box"]
    assert box is not None and abs(box[0] - 40) <= 1 and abs(box[1] - 50) <= 1, box  # the point stayed put
    zoom = (120 / (x1 - x0) * w) / (box[2] - box[0])
    assert zoom > 1.5, f"the wheel zoomed in ({box})"
    assert abs((box[3] - box[1]) * zoom - 90 / (y1 - y0) * h) <= 1.5, box
    # Middle-button drag pans: the same screen point is now 30 screen px further left in the image.
    page.mouse.move(*point)
    page.mouse.down(button="middle")
    page.mouse.move(point[0] + 30, point[1], steps=5)
    page.mouse.up(button="middle")
    assert _live(page)["box"] == box, "panning leaves the prompt alone"
    drag(page, point, (point[0] + 60, point[1] + 60))
    moved = _live(page)["box"]
    expected = 40 - 30 / (x1 - x0) * w / zoom
    assert abs(moved[0] - expected) <= 1 and abs(moved[1] - 50) <= 1, (moved, expected)
    assert page.errors == []
    context.close()


def test_ctrl_z_undoes_the_last_stroke_or_the_last_prompt(portal):
    context, page = _page(portal, "undo")
    editor = page.locator("#ann-editor")
    undo, redo = editor.get_by_role("button", name="Undo"), editor.get_by_role("button", name="Redo")
    _stroke(page, 40, 30)
    expect(undo).to_be_enabled()
    page.mouse.click(5, 5)  # focus leaves the canvas, as after any click elsewhere on the page
    page.keyboard.press("Control+z")
    expect(redo).to_be_enabled()  # the stroke went to the editor's redo history
    expect(undo).to_be_disabled()
    page.locator("#ann-save").click()
    page.locator("#ann-status").get_by_text("Draft saved: revision").wait_for()
    assert not _saved_mask(portal, "undo").any(), "the undone stroke is not saved"

    h, w = SMALL
    at = image_frame(page, "#ann-annotator", w, h)
    drag(page, at(10, 10), at(60, 60))
    first = _live(page)["box"]
    drag(page, at(70, 70), at(120, 110))
    assert _live(page)["box"] != first
    page.keyboard.press("Control+z")
    assert _live(page)["box"] == first, "Ctrl+Z brought the previous box back"
    page.keyboard.press("Control+z")
    assert _live(page)["box"] is None
    assert page.errors == []
    context.close()
