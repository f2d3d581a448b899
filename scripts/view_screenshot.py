"""Screenshot a `codrl view` page in headless Chromium (how docs/img/view.png is made).

    python scripts/view_screenshot.py runs/quickstart/view.html docs/img/view.png --tab lifecycles --task 2

Needs Playwright (a test dependency) and a system Chromium (`scripts/install.sh --browser`, or
CODRL_CHROMIUM naming an executable).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright

from codrl.view.browser import HEADLESS_ARGS, find_chromium


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("page", type=Path, help="a view.html written by codrl view")
    ap.add_argument("out", type=Path, help="PNG to write")
    ap.add_argument("--tab", choices=["overview", "lifecycles", "compare"], default="lifecycles")
    ap.add_argument("--task", type=int, default=1, help="lifecycles tab: the task (1-based) to show")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=860)
    args = ap.parse_args()
    exe = find_chromium()
    if exe is None:
        raise SystemExit("error: no Chromium found; run scripts/install.sh --browser or set CODRL_CHROMIUM")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=list(HEADLESS_ARGS))
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto(args.page.resolve().as_uri())
        page.wait_for_selector("body[data-ready='1']", timeout=120_000)
        page.click(f".tab[data-tab={args.tab}]")
        if args.tab == "lifecycles":
            for _ in range(args.task - 1):
                page.click("#task-next")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out), full_page=args.tab == "overview")
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
