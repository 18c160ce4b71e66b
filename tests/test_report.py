"""The report: one self-contained page per run (written by every run), the comparison page,
and the ``babysit report`` / ``babysit compare`` commands.

Self-contained means: every image is an embedded PNG that decodes, nothing refers to a
network address, there is no script (the page works with JavaScript off), and the page of
an example stays under 3 MB. The pathological run (SGD at lr 50, which explodes) must show
its finding's title; the healthy one none.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil

import matplotlib.image
import pytest

from babysit import config
from babysit.checks.findings import FINDINGS
from babysit.report import compare, render
from babysit.report.figures import PNG_SIGNATURE, png_bytes
from babysit.report.html import compare_page, data_uri, differing_keys
from babysit.run import run
from helpers import FAST, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

IMG = re.compile(r"<img\b[^>]*>")
SRC = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three short real runs: healthy, exploding (lr 50), and a logistic regression."""
    root = tmp_path_factory.mktemp("runs")
    specs = {
        "healthy": FAST,
        "exploding": [*FAST, "optimizer.lr=50"],
        "logreg": [*FAST, "model.hidden=[]"],
    }
    return {name: run(config.load(None, overrides), out=root / name, quiet=True) for name, overrides in specs.items()}


def images(page: str) -> list[bytes]:
    tags = IMG.findall(page)
    decoded = [base64.b64decode(m, validate=True) for tag in tags for m in SRC.findall(tag)]
    assert len(decoded) == len(tags), "every <img> is an embedded base64 PNG"
    return decoded


def assert_self_contained(page: str) -> None:
    lowered = page.lower()
    for needle in ("http", 'src="//', "<script", "<link", "@import", "url(", "<iframe", "<object"):
        assert needle not in lowered, needle
    assert len(page.encode()) < 3_000_000
    for png in images(page):
        assert png.startswith(PNG_SIGNATURE)
        pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 10
        assert pixels.std() > 0, "not a blank image"


def test_every_run_writes_its_report(runs):
    for result in runs.values():
        page = (result.path / "report.html").read_text(encoding="utf-8")
        assert_self_contained(page)
        for heading in ("Findings", "Final metrics", "Learning curves", "Layers", "First layer", "Resolved spec"):
            assert heading in page, heading
    healthy = (runs["healthy"].path / "report.html").read_text(encoding="utf-8")
    assert 'class="finding error"' not in healthy and 'class="finding warning"' not in healthy
    assert "update/weight ratio" in healthy.lower() and "1e-3" in healthy
    assert len(images(healthy)) >= 6  # curves, update ratio, gradients, dead fraction, histograms, first layer


def test_the_pathological_run_shows_its_findings_most_severe_first(runs):
    result = runs["exploding"]
    page = (result.path / "report.html").read_text(encoding="utf-8")
    ids = [f.id for f in result.findings]
    assert ids[0] == "loss_exploded"
    positions = [page.index(f"<code class=\"muted\">{fid}</code>") for fid in ids]
    assert positions == sorted(positions)
    for f in result.findings:
        assert FINDINGS[f.id] in page
    # the explosion and the update ratio each come with an evidence figure
    assert page.count("<figcaption>Evidence for ") >= 2
    assert "Evidence for Loss exploded" in page


def test_report_redraws_a_run_and_shows_a_landscape_when_there_is_one(runs, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(runs["healthy"].path, copy)
    (copy / "report.html").unlink()
    before = render(copy).read_text(encoding="utf-8")
    assert "Loss landscape" not in before
    (copy / "landscape.json").write_text(json.dumps({"hessian": {"top_eigenvalues": [12.5, 3.0]}, "trace": 41.0}))
    (copy / "figures").mkdir()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    (copy / "figures" / "surface.png").write_bytes(png_bytes(fig))
    page = render(copy).read_text(encoding="utf-8")
    assert "Loss landscape" in page and "hessian.top_eigenvalues" in page and "surface.png" in page
    assert len(images(page)) == len(images(before)) + 1
    assert_self_contained(page)


def test_text_from_the_run_is_escaped(tmp_path):
    (tmp_path / "config.yaml").write_text("name: x\n")
    (tmp_path / "findings.json").write_text(json.dumps([{
        "id": "overfitting", "severity": "warning", "message": "<script>alert(1)</script>",
        "advice": "a & b", "evidence": {"note": "</pre><img src=x>"}}]))
    page = render(tmp_path).read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "a &amp; b" in page
    assert "<script" not in page and "<img src=x>" not in page


def test_embedded_pngs_never_spell_an_address():
    # 33 bytes of header (signature + IHDR) are whole base64 groups: the body encodes to "http..."
    png = PNG_SIGNATURE + b"\x00" * 25 + base64.b64decode("httpHTTPhttp")
    assert "http" in base64.b64encode(png).decode().lower()
    uri = data_uri(png)
    assert "http" not in uri.lower()
    assert base64.b64decode(uri.split(",", 1)[1]).startswith(PNG_SIGNATURE)


def test_compare_overlays_three_runs(runs, tmp_path):
    out = compare([r.path for r in runs.values()], tmp_path / "compare.html")
    page = out.read_text(encoding="utf-8")
    assert_self_contained(page)
    assert len(images(page)) == 1
    for name in runs:  # each run's label in the legend table and the metric columns
        assert page.count(f"<th>{name}</th>") >= 2
    # the spec keys that differ, and only those
    spec_rows = page.split("Spec keys that differ", 1)[1]
    assert "optimizer.lr" in spec_rows and "model.hidden" in spec_rows and "data.source" not in spec_rows
    assert "loss_exploded" in page and "Final metrics" in page


def test_differing_keys_flattens_nested_specs():
    a = {"model": {"hidden": [100], "kind": "mlp"}, "seed": 0}
    b = {"model": {"hidden": [], "kind": "mlp"}, "seed": 0, "extra": {"x": 1}}
    assert differing_keys([a, b]) == {"model.hidden": [[100], []], "extra.x": [None, 1]}


def test_cli_train_says_where_the_report_is(tmp_path, capsys):
    code, out, err = run_cli(["train", *FAST, "--out", str(tmp_path / "run"), "-q"], capsys)
    assert code == 0, err
    assert f"report: {tmp_path / 'run' / 'report.html'}" in out
    assert (tmp_path / "run" / "report.html").exists()


def test_cli_report_and_compare(runs, tmp_path, capsys):
    code, out, err = run_cli(["report", str(runs["healthy"].path), "--out", str(tmp_path / "r.html")], capsys)
    assert code == 0, err
    assert "r.html" in out and (tmp_path / "r.html").stat().st_size > 10_000
    paths = [str(r.path) for r in runs.values()]
    code, out, err = run_cli(["compare", *paths, "--out", str(tmp_path / "c.html")], capsys)
    assert code == 0, err
    assert (tmp_path / "c.html").exists()


@pytest.mark.parametrize("command", ["report", "compare"])
def test_cli_bad_run_is_one_line_and_exit_2(runs, tmp_path, capsys, command):
    args = [command, str(tmp_path / "missing")] if command == "report" else \
        [command, str(runs["healthy"].path), str(tmp_path)]
    code, out, err = run_cli(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "not a run directory" in lines[0] and "Traceback" not in err


def test_the_comparison_says_whether_its_runs_share_their_test_examples(tmp_path):
    def run_dir(name: str, text: str):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.yaml").write_text(text)
        return folder

    seeds = [run_dir("s0", "name: a\nseed: 0\n"), run_dir("s1", "name: a\nseed: 1\ndata: {batch_size: 64}\n")]
    assert "Every run is scored on the same validation and test examples" in compare_page(seeds)
    other = run_dir("split", "name: a\ndata: {split_seed: 3}\n")
    page = compare_page([seeds[0], other])
    assert "data differ (data.split_seed)" in page and "not measured on the same examples" in page
