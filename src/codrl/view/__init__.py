"""``codrl view``: one self-contained HTML page showing how the context evolves along lifecycles.

    from codrl.view import write_view
    write_view("runs/quickstart")            # -> runs/quickstart/view.html

:mod:`codrl.view.data` reads run folders into plain data (curves, lifecycles, hints diffs,
filters, sampling); :mod:`codrl.view.charts` draws the overview as inline SVG;
:mod:`codrl.view.page` renders the page and serves it on 127.0.0.1.
"""

from codrl.view.data import EpisodeFilter, ViewData, find_reports, hints_diff, load_view
from codrl.view.page import VIEW_HTML, ViewFile, render_page, serve, write_view

__all__ = ["VIEW_HTML", "EpisodeFilter", "ViewData", "ViewFile", "find_reports", "hints_diff", "load_view",
           "render_page", "serve", "write_view"]
