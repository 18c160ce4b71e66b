"""The report: one self-contained HTML page per run, and a page comparing runs.

``render(run_dir)`` writes ``run_dir/report.html`` from what the run directory holds;
``compare(run_dirs, out)`` writes one page with the runs side by side. Figures are drawn
with matplotlib's Agg backend (:mod:`babysit.report.figures`) and embedded as base64 PNG;
the page (:mod:`babysit.report.html`) needs no network and no JavaScript.

Example
-------
>>> import tempfile, pathlib
>>> run_dir = pathlib.Path(tempfile.mkdtemp())
>>> _ = (run_dir / "config.yaml").write_text("name: tiny\\n")
>>> render(run_dir).name
'report.html'
"""

from babysit.report.html import compare, render

__all__ = ["compare", "render"]
