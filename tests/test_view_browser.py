"""`codrl view` in a real headless Chromium, driven by Playwright.

- The README quickstart (`codrl train --config configs/quickstart_cpu.yaml`, one step) on the
  embedded model, then `codrl view` on its folder: the curves render, a pack is picked, its tasks
  are stepped through, the hints diff read from the page matches the trajectories, the filters
  agree with :class:`codrl.view.EpisodeFilter`, two checkpoints are compared side by side.
- A 10,000-episode run (the real lifecycle runner and environment, a fast random engine): the
  page's size and load time are measured and written to ``view_scale.json`` in the test's folder.

Chromium comes from the system's packages (`scripts/install.sh --browser`) or ``CODRL_CHROMIUM``;
the tests skip, saying why, only where no browser is installed.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from codrl.backends.base import GenRequest
from codrl.backends.scripted import FunctionBackend
from codrl.envs import make_env
from codrl.eval.report import write_report
from codrl.rollout.config import RolloutConfig
from codrl.rollout.lifecycle import LifecycleRunner, make_jobs
from codrl.rollout.prompts import UPDATE_SYSTEM
from codrl.view import EpisodeFilter, hints_diff, load_view, write_view
from codrl.view.browser import HEADLESS_ARGS, find_chromium

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    exe = find_chromium()
    if exe is None:
        pytest.skip("no Chromium installed (scripts/install.sh --browser installs Debian's; or set CODRL_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=list(HEADLESS_ARGS))
        yield b
        b.close()


def open_page(browser: Any, path: Path) -> tuple[Any, list[str]]:
    """The page at ``path`` once its data are unpacked, and the list collecting its script errors."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("request", lambda r: errors.append(f"network request {r.url}") if not r.url.startswith(("file:", "data:", "blob:")) else None)
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=120_000)
    return page, errors


def set_filter(page: Any, **values: Any) -> None:
    for name, value in values.items():
        field = page.locator(f"#filters [name={name}]")
        if isinstance(value, bool):
            field.set_checked(value)
        elif name == "search":
            field.fill(value)
            page.wait_for_timeout(400)  # the search box waits for typing to pause
        else:
            field.select_option(str(value))


def match_count(page: Any) -> int:
    return int(page.inner_text("#match-count").split(" of ")[0].replace(",", ""))


# ---------------------------------------------------------------- the README quickstart, one step
# (the `quickstart` fixture of conftest.py: one run shared with the training tests)
def test_quickstart_page_in_browser(quickstart: Path, browser: Any, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "codrl.cli", "view", str(quickstart)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    html = quickstart / "view.html"
    assert f"wrote {html}" in proc.stdout
    page, errors = open_page(browser, html)

    # Overview: the curves are drawn (an SVG with lines, one legend entry per evaluation step).
    chart = page.locator("#chart-reward svg")
    box = chart.bounding_box()
    assert box and box["width"] > 300 and box["height"] > 150
    assert page.locator("#chart-reward svg path").count() > 10
    legend = page.inner_text("#chart-reward")
    assert "step 0" in legend and "step 1" in legend
    assert page.locator("#chart-gain svg").count() == 1  # the CoD gain over training
    assert page.locator("#summary-table tbody tr").count() == 2

    # Lifecycles: pick a pack of the step-1 evaluation and step through its tasks.
    view = load_view(quickstart)
    records = {(r["pack_id"], r["repeat"]): r for r in
               map(json.loads, (quickstart / "eval" / "step-000001" / "trajectories.jsonl").read_text().splitlines())}
    page.click(".tab[data-tab=lifecycles]")
    step1 = next(i for i, v in enumerate(view.variants) if v["label"] == "step 1 · cod")
    set_filter(page, variant=step1)
    assert match_count(page) == len(records)
    row = page.locator("#lc-list tbody tr").first
    pack, repeat = row.locator("td").nth(1).inner_text(), int(row.locator("td").nth(2).inner_text())
    row.click()
    record = records[(pack, repeat)]
    assert pack in page.inner_text("#lc-title")
    for k, ep in enumerate(record["episodes"]):
        assert page.inner_text("#task-title").startswith(f"Task {k + 1} of {len(record['episodes'])}")
        body = page.locator("#task-body")
        assert ep["turns"][-1]["reply"].strip()[:40] in body.inner_text()
        if ep["hints_out"] is None:
            assert body.locator(".hints-diff").count() == 0
        else:
            want = hints_diff(ep["hints_in"], ep["hints_out"])
            items = body.locator(".hints-diff li")
            got = [(items.nth(i).get_attribute("class"), items.nth(i).inner_text()) for i in range(items.count())]
            kind = {"+": "add", "-": "del", " ": "keep"}
            assert got == [(kind[op], line) for op, line in want]
        if k == 0:
            page.screenshot(path=str(tmp_path / "view_lifecycle.png"))
        if k + 1 < len(record["episodes"]):
            page.click("#task-next")
    assert page.locator("#task-next").is_disabled()
    # The address names the open task; reopening it shows that task again, and ← steps back.
    last = len(record["episodes"])
    assert page.evaluate("location.hash").endswith(f"&task={last}")
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    assert page.inner_text("#task-title").startswith(f"Task {last} of {last}")
    assert pack in page.inner_text("#lc-title")
    page.keyboard.press("ArrowLeft")
    assert page.inner_text("#task-title").startswith(f"Task {last - 1} of {last}")

    # The filters agree with EpisodeFilter on every field.
    set_filter(page, variant="")
    cases: list[tuple[dict[str, Any], EpisodeFilter]] = [
        ({"outcome": "failure"}, EpisodeFilter(outcome="failure")),
        ({"outcome": "success", "position": 1}, EpisodeFilter(outcome="success", positions=[1])),
        ({"outcome": "any", "position": "", "invalidFormat": True}, EpisodeFilter(invalid_format=True)),
        ({"invalidFormat": False, "invalidHints": True}, EpisodeFilter(invalid_hints=True)),
        ({"invalidHints": False, "search": "direction"}, EpisodeFilter(search="direction")),
    ]
    for form, flt in cases:
        set_filter(page, **form)
        want = sum(flt.matches(lc, view.variants[lc["v"]]["label"]) for lc in view.lifecycles)
        assert match_count(page) == want, form
    set_filter(page, search="")

    # Compare: the same pack and repeat after 0 and 1 training steps, side by side.
    page.click(".tab[data-tab=compare]")
    cols = page.locator("#cmp-view .cmp-col")
    assert cols.count() == 2
    assert {cols.nth(0).locator("h2").inner_text(), cols.nth(1).locator("h2").inner_text()} == {"step 0 · cod", "step 1 · cod"}
    assert cols.nth(0).locator(".cmp-task").count() == len(record["episodes"])
    page.screenshot(path=str(tmp_path / "view_compare.png"))
    page.click(".tab[data-tab=overview]")
    page.screenshot(path=str(tmp_path / "view_overview.png"), full_page=True)
    assert not errors, errors
    page.close()


# ---------------------------------------------------------------- 10,000 episodes
# About 10 bits per word, as English text has: the page's compression is not flattered by a tiny vocabulary.
_letters = random.Random(1)
WORDS = ["hole", "goal", "direction", *("".join(_letters.choice("etaoinshrdlucmfwypvbgk") for _ in range(_letters.randint(2, 9)))
                                        for _ in range(1024))]


def random_talker(seed: int = 0) -> FunctionBackend:
    """A fast stand-in engine with replies of realistic length: some reasoning, a random direction,
    and hints blocks of a few lines that keep some old lines and change others."""
    rng = random.Random(seed)

    def sentence(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."

    def reply(req: GenRequest) -> str:
        if req.messages[0]["content"] == UPDATE_SYSTEM:
            old = [ln for ln in req.messages[-1]["content"].splitlines() if ln.startswith("- ")][:4]
            kept = [ln for ln in old if rng.random() < 0.6]
            new = [f"- {sentence(rng.randint(6, 14))}" for _ in range(rng.randint(1, 3))]
            return "\n".join(kept + new)
        return f"{sentence(rng.randint(10, 30))} <answer>Direction {rng.randint(1, 4)}</answer>"

    return FunctionBackend(reply)


@pytest.fixture(scope="module")
def big_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """625 packs x K=4 x 2 repeats x {cod, nohint} = 10,000 episodes on FrozenLake-Obscure."""
    out = tmp_path_factory.mktemp("big") / "run"
    env = make_env("frozenlake")
    results = []
    for mode in ("cod", "nohint"):
        cfg = RolloutConfig(pack_size=4, repeats=2, mode=mode, use_reply_prefix=False, max_concurrent=256)
        packs = [(env, env.sample_pack("test", 0, i, 4)) for i in range(625)]
        results += LifecycleRunner(random_talker(), cfg).run(make_jobs(packs, cfg))
    write_report(results, out, title="frozenlake: 10,000 episodes", meta={"env": "frozenlake"})
    return out


def test_ten_thousand_episodes_load(big_run: Path, browser: Any, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    page_file = write_view(big_run, tmp_path / "view.html")
    write_s = time.perf_counter() - t0
    assert page_file.total_episodes == page_file.episodes == 10_000 and not page_file.sampled
    t0 = time.perf_counter()
    page, errors = open_page(browser, page_file.path)
    load_s = time.perf_counter() - t0
    ready_ms = int(page.evaluate("document.body.dataset.readyMs"))
    assert match_count(page) == 2_500
    assert page.locator("#lc-list tbody tr").count() == 50  # one page of the list is rendered
    page.click(".tab[data-tab=lifecycles]")
    set_filter(page, search="hole")
    assert 0 < match_count(page) <= 2_500
    page.click("#list-next")
    assert page.inner_text("#list-page").startswith("page 2 of")
    page.click(".tab[data-tab=compare]")
    assert page.locator("#cmp-view .cmp-col").count() == 2
    assert not errors, errors
    page.screenshot(path=str(tmp_path / "view_10k.png"))
    page.close()
    figures = {"episodes": page_file.episodes, "lifecycles": page_file.lifecycles,
               "page_mb": round(page_file.size_bytes / 1e6, 2), "data_mb": round(page_file.data_bytes / 1e6, 2),
               "trajectories_mb": round((big_run / "trajectories.jsonl").stat().st_size / 1e6, 2),
               "write_s": round(write_s, 2), "open_to_ready_s": round(load_s, 2), "script_ready_ms": ready_ms}
    (tmp_path / "view_scale.json").write_text(json.dumps(figures, indent=1))
    print("view_scale", json.dumps(figures))
    # A sampled page of the same run stays within its budget and says so.
    small = write_view(big_run, tmp_path / "small.html", max_episodes=2_000)
    assert small.sampled and small.episodes <= 2_000 and small.total_episodes == 10_000
    page, errors = open_page(browser, small.path)
    assert "Sampled:" in page.inner_text("#page-notes")
    assert not errors, errors
    page.close()
