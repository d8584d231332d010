"""Look at the report as a person would: in a real headless Chromium with the network off.

Skips with a message when Chromium or playwright is absent (`make test` installs both).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from finekit import Recipe, finetune

ARTIFACTS = Path(__file__).resolve().parents[1] / "build"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("Chromium absent (Debian: apt-get install chromium); `make test` installs it")


def test_report_renders_in_a_real_browser(tiny_recipe: Recipe) -> None:
    browser_path = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    result = finetune(tiny_recipe)
    url = (result.run_dir / "report.html").resolve().as_uri()
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=browser_path,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})

        def route(r):  # networking off: anything but the file and its data: URIs fails
            requests.append(r.request.url)
            if r.request.url.startswith(("file:", "data:")):
                r.continue_()
            else:
                r.abort()

        page.route("**/*", route)
        page.goto(url)
        page.wait_for_load_state("load")
        images = page.evaluate(
            "Array.from(document.images).map(i => [i.complete, i.naturalWidth, "
            "i.naturalHeight, i.getBoundingClientRect().width])"
        )
        text = page.inner_text("body")
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "report-screenshot.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert len(images) >= 4
    for complete, w, h, shown in images:
        assert complete and w > 0 and h > 0 and shown > 0  # decoded and displayed
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    acc = result.metrics["test"]["accuracy"]
    assert f"{acc:.4f}" in text and "Confusions" in text and "Leakage check" in text
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
