"""End to end: the UI served on loopback, driven by Debian's headless chromium through Playwright.

Types a query and checks the first hit is the one `Library.search` ranks first; uploads an audio file and
searches video with it; opens the library page. Screenshots of each page go to test-artifacts/. Skips when
chromium is not installed, except in CI (``CI=true``), where that is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import REPO
from test_app import build_library

from lbsearch.app import live
from lbsearch.library import Library
from lbsearch.modalities import MODALITIES
from lbsearch.search.request import FileQuery

ARTIFACTS = REPO / "test-artifacts"
QUERY = "a bird on a wire"
K = 12
TIMEOUT_MS = 120_000

pytestmark = pytest.mark.timeout(600)


def require_browser() -> None:
    missing = None
    if live.chromium() is None:
        missing = "Debian's chromium is not installed (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "the playwright package is not installed (pip install playwright; no browser download needed)"
    if missing is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{missing}: CI must provide it")
    pytest.skip(f"{missing}: the end-to-end browser test needs it")


@pytest.fixture(scope="module")
def served(tiny_checkpoints: Path, sample_media: Path, tmp_path_factory: pytest.TempPathFactory):
    require_browser()
    index, folder = build_library(tiny_checkpoints, sample_media, tmp_path_factory.mktemp("browser"))
    with live.running_app(index) as url:
        yield url, index, folder


def keep_only(page, modality: str) -> None:
    """Leave only ``modality`` selected among the page's "Search in" chips."""
    from playwright.sync_api import expect

    chips = page.locator('[data-testid="stButtonGroup"]').first.locator('button[data-variant="pills"]')
    for chip in chips.all():
        wanted = "true" if chip.inner_text().strip() == modality else "false"
        if chip.get_attribute("aria-pressed") != wanted:
            chip.click()
            expect(chip).to_have_attribute("aria-pressed", wanted)
            live.settle(page)


def expect_sections(page, titles: list[str]) -> None:
    """Wait for exactly these result sections, also once the script run is over (a run in progress can show a
    partial page)."""
    from playwright.sync_api import expect

    expect(result_titles(page)).to_have_text(titles)
    live.settle(page)
    expect(result_titles(page)).to_have_text(titles)


def result_titles(page):
    return page.locator('[data-testid="stMain"] h3')


def cards(page):
    return page.locator('[data-testid="stMain"] strong').filter(has_text=re.compile(r"^\d+\. "))


def test_search_upload_and_library_pages_in_chromium(served, sample_media):
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)  # the first query loads the text encoder
    url, index, _ = served
    sound = sample_media / "audio" / "1.wav"
    with Library.open(index) as lib:
        every_modality = {m: lib.search(QUERY, modalities=[m], k=K) for m in MODALITIES}
        by_text = every_modality["video"]
        by_sound = lib.search(like=FileQuery(str(sound)), modalities=["video"], k=K)
    shutil.rmtree(ARTIFACTS / "browser", ignore_errors=True)

    with live.browser_page() as page:
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        live.settle(page)
        # Streamlit's developer toolbar is hidden: nothing to deploy for a user of lbsearch.
        expect(page.locator('[data-testid="stAppDeployButton"]')).to_have_count(0)
        expect(page.get_by_role("button", name="Deploy")).to_have_count(0)
        page.get_by_label("What are you looking for?").fill(QUERY)
        page.keyboard.press("Enter")
        expect_sections(page, [f"{m} ({len(hits)})" for m, hits in every_modality.items()])
        keep_only(page, "video")
        expect_sections(page, [f"video ({len(by_text)})"])
        expect(cards(page).first).to_have_text(f"1. {Path(by_text[0].path).name}")
        expect(cards(page)).to_have_count(len(by_text))
        expect(page.locator('[data-testid="stMain"] video')).to_have_count(len(by_text))
        live.screenshot(page, ARTIFACTS / "browser" / "search.png")

        page.get_by_role("link", name="Query by example").click()
        expect(page.get_by_role("heading", name="Query by example")).to_be_visible()
        live.settle(page)
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(sound))
        live.settle(page)
        keep_only(page, "video")
        expect_sections(page, [f"video ({len(by_sound)})"])
        expect(cards(page).first).to_have_text(f"1. {Path(by_sound[0].path).name}")
        # The uploaded sound is drawn (waveform) and playable above the results.
        expect(page.locator('[data-testid="stMain"] audio')).to_have_count(1)
        live.screenshot(page, ARTIFACTS / "browser" / "example.png")

        page.get_by_role("link", name="Library").click()
        expect(page.get_by_role("heading", name="Index health")).to_be_visible()
        live.settle(page)
        expect(page.get_by_text("Check the indexes against the database")).to_be_visible()
        live.screenshot(page, ARTIFACTS / "browser" / "library.png")
    assert sorted(p.name for p in (ARTIFACTS / "browser").iterdir()) == ["example.png", "library.png", "search.png"]
