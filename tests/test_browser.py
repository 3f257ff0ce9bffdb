"""End to end in a real browser: Debian's chromium driven by Playwright for Python, app on the tiny model.

Needs `apt-get install -y chromium` and `pip install playwright==1.65.2` (no
browser download: Playwright drives /usr/bin/chromium). Screenshots go to
tests/artifacts/ (ignored by git).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from tiny_app import serve_tiny_app

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} missing: apt-get install -y chromium"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="playwright missing: pip install playwright==1.65.2"),
]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    app, url, _ = serve_tiny_app(tmp_path_factory.mktemp("browser"))
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 900})
        pg.set_default_timeout(60_000)
        pg.goto(url)
        pg.get_by_text("flowcore: Flow-DPO").first.wait_for()
        yield pg
        browser.close()
    app.close()


def test_flow_tab_runs_and_shows_chunks(page):
    page.get_by_role("tab", name="Flow").click()
    assert page.get_by_text("This flow is untrained").is_visible()
    slider = page.locator("#chunk-size input[type=range]")
    slider.focus()
    for _ in range(2):  # 32 -> 16 tokens (step 8)
        page.keyboard.press("ArrowLeft")
    assert page.locator("#chunk-size input[type=number]").input_value() == "16"
    page.locator("#run-flow").click()
    page.locator("#flow-chunks .fc-end").wait_for()  # the flow has ended
    chunks = page.locator("#flow-chunks .fc-chunk")
    n = chunks.count()
    assert 1 <= n <= 6
    heads = [chunks.nth(i).locator(".fc-chunk-head").inner_text() for i in range(n)]
    for k, head in enumerate(heads, 1):
        assert f"chunk {k}" in head
        assert int(head.split("chunk")[1].split("tokens")[0].split()[-1]) <= 16  # the slider took effect
        assert "P(Yes) =" in head or "not asked" in head
    page.locator("#flow-rollouts .fc-summary").wait_for()  # rollouts done (1 per node by default)
    assert "Flow finished" in page.locator("#flow-status").inner_text()
    page.screenshot(path=str(ARTIFACTS / "flow.png"), full_page=True)


def test_compare_and_training_tabs_render(page):
    page.get_by_role("tab", name="Compare").click()
    page.get_by_role("button", name="Answer with all four models").click()
    page.get_by_text("python -m flowcore reproduce --preset cpu").first.wait_for()
    zero_shot = page.locator(".fc-column").first
    zero_shot.get_by_text("tokens,").wait_for(timeout=120_000)  # graded: "... · N tokens, ended ..."
    assert "0-shot (base model)" in zero_shot.inner_text()
    page.screenshot(path=str(ARTIFACTS / "compare.png"), full_page=True)
    page.get_by_role("tab", name="Training").click()
    page.get_by_text("Paper, Table 1").wait_for()
    page.locator("#progressive-plot .js-plotly-plot").wait_for()  # the newest run's chart is drawn
    assert "Flow-DPO (online)" in page.locator("#progressive-plot").inner_text()
    page.screenshot(path=str(ARTIFACTS / "training.png"), full_page=True)
