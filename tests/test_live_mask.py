"""The Annotate tab's live mask widget in chromium: box, points, parity with the server, a tampered client.

Uses the browser tests' server (the ``portal`` fixture of test_browser). No timings
are asserted here; ``bench/portal_browser.py`` measures them.
"""

from __future__ import annotations

import time

import numpy as np

from portal.web.ui.live_mask import PARITY_DICE, dice, unpack
from tests.browserutil import drag, image_frame, login
from tests.conftest import DEMO_BOX
from tests.test_browser import PASSWORD, _context, _open_annotation, _store, portal  # noqa: F401

LAST = "() => window.__medsamLive && window.__medsamLive.last"
# A tampered client: every decode answer it receives claims every pixel, and it sends that mask back.
FORGE_JS = """(() => {
  const real = window.fetch;
  window.fetch = async (...args) => {
    const response = await real(...args);
    const url = String((args[0] && args[0].url) || args[0]);
    if (!url.includes('component_server')) return response;
    const body = await response.clone().json().catch(() => null);
    if (!body || typeof body.bits !== 'string') return response;
    body.bits = btoa(String.fromCharCode(255).repeat(Math.ceil(body.width * body.height / 8)));
    return new Response(JSON.stringify(body), {status: 200, headers: {'content-type': 'application/json'}});
  };
})();"""


def _latest_mask(portal):
    """The newest recorded mask of the demo image: (array, model version, prompt)."""
    from portal.store.models import Mask
    from portal.store.services.masks import load_mask

    store = _store(portal)
    try:
        with store.transaction() as session:
            row = session.query(Mask).filter_by(image_id=portal["demo_image"]).order_by(Mask.id.desc()).first()
            if row is None:
                return None, None, None
            found = (row.blob_sha, row.model_version_id, row.prompt)
        return load_mask(store.blobs, found[0]) > 0, found[1], found[2]
    finally:
        store.close()


def _next_drawn(page, count: int) -> dict:
    """Waits for the widget's ``count``-th final mask and returns what it drew."""
    page.wait_for_function(f"() => window.__medsamDrawn >= {count}", timeout=60_000)
    return page.evaluate(LAST)


def _ready(page):
    page.evaluate(
        "() => { window.__medsamDrawn = 0; "
        "document.addEventListener('medsam-mask', () => { window.__medsamDrawn += 1; }); }"
    )
    page.locator("#ann-annotator .live-wrap[data-ready]").wait_for(timeout=120_000)
    return image_frame(page, "#ann-annotator", 512, 512)


def _proposal_matches(page, portal, last: dict, text: str) -> np.ndarray:
    """The proposal recorded for the widget's prompt is the server's own decode, equal to what was drawn."""
    want = {"boxes": last["prompt"]["boxes"] or None, "points": last["prompt"]["points"] or None}
    deadline = time.monotonic() + 60
    stored, version, prompt = _latest_mask(portal)
    while prompt != want and time.monotonic() < deadline:
        time.sleep(0.3)
        stored, version, prompt = _latest_mask(portal)
    assert prompt == want and version is not None, (prompt, want)
    page.locator("#ann-status").get_by_text(text).wait_for(timeout=60_000)
    drawn = unpack(last["bits"], last["height"], last["width"])
    assert dice(drawn, stored) >= PARITY_DICE, dice(drawn, stored)
    return stored


def test_live_box_and_points_draw_the_servers_mask_and_record_it(portal):
    context = _context(portal)
    page = login(context, portal["url"], "anna", PASSWORD)
    _open_annotation(page, "Abdomen CT")
    at = _ready(page)
    x0, y0, x1, y1 = DEMO_BOX
    drag(page, at(x0, y0), at(x1, y1))
    box = _next_drawn(page, 1)
    assert box["prompt"]["points"] == [] and abs(box["prompt"]["boxes"][0][0] - x0) <= 2
    mask = _proposal_matches(page, portal, box, "Dice 1.000")
    ys, xs = np.nonzero(mask)
    assert xs.min() >= x0 - 4 and xs.max() <= x1 + 4 and ys.min() >= y0 - 4 and ys.max() <= y1 + 4

    page.mouse.click(*at(140, 300))  # an include point inside the box
    with_point = _next_drawn(page, 2)
    assert with_point["prompt"]["points"][0][2] == 1 and with_point["prompt"]["boxes"]
    page.keyboard.down("Shift")
    page.mouse.click(*at(100, 260))  # shift-click: exclude
    page.keyboard.up("Shift")
    excluded = _next_drawn(page, 3)
    assert [p[2] for p in excluded["prompt"]["points"]] == [1, 0]
    _proposal_matches(page, portal, excluded, "Dice 1.000")

    page.locator("#ann-annotator .live-clear").click()
    page.mouse.click(*at(140, 300))  # a point alone (SAM's multimask choice, as on the server)
    alone = _next_drawn(page, 4)
    assert alone["prompt"] == {
        "boxes": [],
        "points": [[alone["prompt"]["points"][0][0], alone["prompt"]["points"][0][1], 1]],
    }
    _proposal_matches(page, portal, alone, "Dice 1.000")
    assert page.errors == []
    context.close()


def test_a_tampered_client_mask_is_reported_and_never_stored(portal):
    """A client that draws (and sends back) a mask the model did not make: the server keeps its own."""
    context = _context(portal)
    page = login(context, portal["url"], "anna", PASSWORD)

    page.add_init_script(FORGE_JS)  # for every page load from now on, the login page's reload included
    page.reload(wait_until="load")
    page.wait_for_selector("#who", timeout=60_000)
    _open_annotation(page, "Abdomen CT")
    at = _ready(page)
    x0, y0, x1, y1 = DEMO_BOX
    drag(page, at(x0, y0), at(x1, y1))
    last = _next_drawn(page, 1)
    assert unpack(last["bits"], last["height"], last["width"]).all()  # the browser shows the forged mask
    page.locator("#ann-status").get_by_text("Proposed mask").wait_for(timeout=60_000)
    stored, version, _ = _latest_mask(portal)
    assert stored is not None and version is not None and not stored.all() and stored.sum() < 0.2 * stored.size
    status = page.locator("#ann-status").inner_text()
    assert "Dice 1.000" not in status and "Browser mask vs server: Dice 0." in status, status
    context.close()
