"""Render a run folder into one self-contained HTML file, and serve it on 127.0.0.1.

The page is a Jinja2 template with its stylesheet and script inlined; charts are inline SVG from
matplotlib; the lifecycles travel as gzip-compressed, base64-encoded JSON that the page unpacks
with the browser's ``DecompressionStream``. Nothing is fetched at view time.
"""

from __future__ import annotations

import base64
import functools
import gzip
import http.server
import json
import math
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from codrl import __version__
from codrl.view.charts import gain_svg, history_svg, reward_svg
from codrl.view.data import EpisodeFilter, ViewData, gain_by_step, load_view, reward_panels, summary_rows

#: File name :func:`write_view` uses inside the run folder.
VIEW_HTML = "view.html"


@dataclass
class ViewFile:
    """What :func:`write_view` wrote."""

    path: Path
    size_bytes: int
    data_bytes: int  # the embedded lifecycles, compressed and encoded
    lifecycles: int
    episodes: int
    total_episodes: int
    sampled: bool


def _fmt(v: Any, digits: int = 3, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if digits == 0:
        return f"{int(v):,}"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _pct(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{100 * v:.0f}%"


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("codrl.view", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = _fmt
    env.filters["pct"] = _pct
    return env


def _asset(name: str) -> str:
    return resources.files("codrl.view").joinpath("templates", name).read_text(encoding="utf-8")


def encode_data(obj: Any) -> str:
    """``obj`` as compact JSON, gzip-compressed (deterministic: no file time), base64-encoded."""
    raw = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return base64.b64encode(gzip.compress(raw, compresslevel=9, mtime=0)).decode("ascii")


def decode_data(text: str) -> Any:
    """Inverse of :func:`encode_data` (tests read pages back with it)."""
    return json.loads(gzip.decompress(base64.b64decode(text)).decode("utf-8"))


def _kind(view: ViewData) -> str:
    if any(f.step is not None for f in view.folders):
        return "training run"
    if any("cells/" in f.rel for f in view.folders):
        return "evaluation matrix"
    return "evaluation"


def _notes(view: ViewData, max_chars: int) -> list[str]:
    notes = []
    if view.prefilter.active:
        shown = {k: v for k, v in view.prefilter.model_dump().items() if v not in ("", [], False, "any")}
        notes.append(f"Only lifecycles matching {shown} were kept in this file.")
    if view.sampled:
        notes.append(f"Sampled: {len(view.lifecycles):,} of the {view.total_lifecycles:,} lifecycles "
                     f"({view.shown_episodes:,} of {view.total_episodes:,} episodes) are in this file, whole packs "
                     f"drawn at random to stay under {view.max_episodes:,} episodes; the curves and the table use "
                     "every episode. Rerun with --max-episodes 0 to keep all.")
    notes.append(f"Texts longer than {max_chars:,} characters are cut; trajectories.jsonl has them in full.")
    return notes


def render_page(view: ViewData, *, history: list[dict[str, Any]] | None = None, max_chars: int = 6_000) -> str:
    """The HTML of one view page."""
    panels = reward_panels(view.folders)
    kind = _kind(view)
    training = kind == "training run"
    gains = gain_by_step(view.folders) if training else {}
    if training:
        curve_help = "One panel per environment, one curve per evaluation step (light: early, dark: late)."
    elif kind == "evaluation matrix":
        curve_help = "One panel per evaluation set, one curve per model."
    else:
        curve_help = "One panel per environment, one curve per context."
    run_name = Path(view.run_dir).name or view.run_dir
    return _environment().get_template("view.html.j2").render(
        version=__version__, run_name=run_name, kind=kind, folders=view.folders,
        total_lifecycles=view.total_lifecycles, total_episodes=view.total_episodes,
        shown_episodes=view.shown_episodes,
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        notes=_notes(view, max_chars), curve_help=curve_help,
        reward_svg=reward_svg(panels, ordered_series=training),
        gain_svg=gain_svg(gains) if any(len(p) > 1 for p in gains.values()) else None,
        history_svg=history_svg(history) if history else None,
        rows=summary_rows(view.folders),
        css=_asset("view.css"), js=_asset("view.js"), data_b64=encode_data(view.page_json()))


def _read_history(run_dir: Path) -> list[dict[str, Any]] | None:
    path = run_dir / "history.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return [h for h in data if isinstance(h, dict)] if isinstance(data, list) else None


def write_view(run_dir: Path | str, out: Path | str | None = None, *, max_episodes: int = 20_000,
               max_chars: int = 6_000, seed: int = 0, prefilter: EpisodeFilter | None = None) -> ViewFile:
    """Write the view page of ``run_dir`` (default ``<run_dir>/view.html``) and describe it."""
    run_dir = Path(run_dir)
    view = load_view(run_dir, max_episodes=max_episodes, max_chars=max_chars, seed=seed, prefilter=prefilter)
    html = render_page(view, history=_read_history(run_dir), max_chars=max_chars)
    path = Path(out) if out is not None else run_dir / VIEW_HTML
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
    start = html.index('id="codrl-data">') + len('id="codrl-data">')
    return ViewFile(path, path.stat().st_size, html.index("</script>", start) - start, len(view.lifecycles),
                    view.shown_episodes, view.total_episodes, view.sampled)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


def serve(page: Path | str, port: int = 0, host: str = "127.0.0.1") -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve the folder of ``page`` on ``host:port`` (0: a free port) in a background thread.

    Returns the server (``shutdown()`` stops it) and the page's URL. Only the loopback address is
    meant: the page holds every prompt and reply of the run.
    """
    page = Path(page).resolve()
    handler = functools.partial(_QuietHandler, directory=str(page.parent))
    server = http.server.ThreadingHTTPServer((host, port), handler)
    threading.Thread(target=server.serve_forever, name="codrl-view", daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}/{page.name}"
