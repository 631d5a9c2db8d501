"""Mouse-up to overlay in a real browser, for ``bench/portal_latency.py --browser``.

Debian's chromium driven by Playwright (the same launch settings and drag
helpers as the browser tests). The time is taken inside the page: a
capture-phase ``pointerup`` listener stamps the start (the box tool
prevents the compatibility ``mouseup`` event), and a requestAnimationFrame
loop stamps the first frame in which the overlay's images have new sources and
have all loaded. What is measured is what the user waits for: the box tool's
change event, the Gradio queue, the decode, the PNG encode of the layers, and
the browser fetching and drawing them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.browserutil import CHROMIUM, CHROMIUM_ARGS, drag, image_frame  # noqa: E402

DEMO = REPO / "demo" / "ct_abdomen.png"
BOXES = ([95, 255, 190, 350], [300, 230, 420, 330])  # two organs, so consecutive overlays always differ

ARM_JS = """() => {
  const sources = () => Array.from(document.querySelectorAll('#seg-overlay img')).map(i => i.src).sort().join('|');
  const before = sources();
  window.__t0 = null; window.__t1 = null;
  window.addEventListener('pointerup', () => { window.__t0 = performance.now(); }, {capture: true, once: true});
  const check = () => {
    const imgs = Array.from(document.querySelectorAll('#seg-overlay img'));
    if (window.__t0 !== null && imgs.length && sources() !== before && imgs.every(i => i.complete && i.naturalWidth)) {
      window.__t1 = performance.now(); return;
    }
    requestAnimationFrame(check);
  };
  requestAnimationFrame(check);
}"""


def _open(browser, url: str, user: str, password: str):
    """The public demo page; the logged-in portal's Segment tab when the demo is switched off."""
    import urllib.request

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    try:
        public = urllib.request.urlopen(url + "/demo/", timeout=10).status == 200
    except OSError:
        public = False
    page.goto(url + ("/demo/" if public else "/"), wait_until="load")
    page.wait_for_selector(".gradio-container", timeout=60_000)
    if not public:
        page.locator("input[type=text], input:not([type])").first.fill(user)
        page.locator("input[type=password]").first.fill(password)
        page.get_by_role("button", name="Login").click()
        page.wait_for_selector("#seg-file", timeout=60_000)
    return context, page


def browser_latency(url: str, user: str, password: str, prompts: int = 10) -> list[float]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context, page = _open(browser, url, user, password)
        page.locator("#seg-file input[type=file]").set_input_files(str(DEMO))
        page.locator("#seg-info").get_by_text("512x512").wait_for(timeout=60_000)
        clear = page.get_by_role("button", name="Clear boxes")
        at = image_frame(page, "#seg-annotator", 512, 512)
        times = []
        for k in range(prompts + 1):  # the first warms the page and the demo's embedding cache
            clear.click()
            time.sleep(0.5)
            x0, y0, x1, y1 = BOXES[k % 2]
            page.evaluate(ARM_JS)
            drag(page, at(x0 + k, y0), at(x1, y1 - k))
            page.wait_for_function("() => window.__t1 !== null", timeout=60_000)
            ms = page.evaluate("() => window.__t1 - window.__t0")
            if k:
                times.append(ms)
        context.close()
        browser.close()
    print(f"browser, mouse-up to overlay drawn over {len(times)} box drags (chromium, demo page): "
          f"p50 {np.percentile(times, 50):.0f} ms, p95 {np.percentile(times, 95):.0f} ms, "
          f"max {max(times):.0f} ms")
    return times


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--user", default="bench")
    p.add_argument("--prompts", type=int, default=10)
    a = p.parse_args()
    browser_latency(a.url.rstrip("/"), a.user, sys.stdin.readline().rstrip("\n"), a.prompts)
