"""Screenshots of the UI's pages for the README: docs/screenshots/{search,example,library}.png.

    python3 scripts/screenshots.py                       # generates and indexes the demo library (demo models)
    python3 scripts/screenshots.py --index DIR --query "a dog" --example clip.wav   # an existing library

Serves the app on loopback and drives Debian's headless chromium (apt-get install chromium) through Playwright.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lbsearch.app import live  # noqa: E402
from lbsearch.errors import LbsearchError  # noqa: E402

OUT = REPO / "docs" / "screenshots"
# The README shows the top of each page: the controls and the first rows of hits.
README_HEIGHT = 1700


def demo_library(folder: Path) -> tuple[Path, str, Path]:
    """Generate and index the demo library: (index, a text query with a known answer, a sound of it)."""
    from lbsearch.demo import run_demo
    from lbsearch.toyworld import read_manifest

    report = run_demo(folder, scenes=24)
    text = next(q.query for q in report.queries if q.kind.startswith("text"))
    sound = next(e.files["audio"] for e in read_manifest(report.library) if "audio" in e.files)
    return report.index, text, Path(sound)


def capture(index: Path, query: str, example: Path, out: Path) -> list[Path]:
    with live.running_app(index) as url, live.browser_page() as page:
        page.set_default_timeout(120_000)
        page.goto(url)
        live.settle(page)
        page.get_by_label("What are you looking for?").fill(query)
        page.keyboard.press("Enter")
        page.wait_for_selector('[data-testid="stMain"] h3')
        shots = [live.screenshot(page, out / "search.png")]

        page.get_by_role("link", name="Query by example").click()
        page.get_by_role("heading", name="Query by example").wait_for()
        live.settle(page)
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(example))
        page.wait_for_selector('[data-testid="stMain"] h3')
        shots.append(live.screenshot(page, out / "example.png"))

        page.get_by_role("link", name="Library").click()
        page.get_by_role("heading", name="Index health").wait_for()
        shots.append(live.screenshot(page, out / "library.png"))
    return shots


def top_of_page(path: Path, height: int) -> None:
    """Cut a whole-page screenshot down to its first ``height`` pixels."""
    from PIL import Image

    with Image.open(path) as image:
        top = image.crop((0, 0, image.width, min(height, image.height)))
    top.save(path, optimize=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, help="an indexed library (default: generate the demo library)")
    parser.add_argument("--query", help="the text query of the search page (needed with --index)")
    parser.add_argument("--example", type=Path, help="the file uploaded on the query-by-example page")
    parser.add_argument("--out", type=Path, default=OUT, help=f"where the PNGs go (default {OUT})")
    args = parser.parse_args()
    if live.chromium() is None:
        print("chromium is not installed: apt-get install chromium", file=sys.stderr)
        return 1
    if args.index is not None and (args.query is None or args.example is None):
        parser.error("--index needs --query and --example")
    try:
        with tempfile.TemporaryDirectory(prefix="lbsearch-screenshots-") as scratch:
            if args.index is None:
                index, query, example = demo_library(Path(scratch))
            else:
                index, query, example = args.index, args.query, args.example
            for shot in capture(index, query, example, args.out):
                top_of_page(shot, README_HEIGHT)
                print(shot)
    except LbsearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
