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
from pathlib import Path
from typing import get_args

import matplotlib.image
import numpy as np
import pytest
import yaml

from babysit import config
from babysit.checks.findings import FINDINGS
from babysit.config import parse_distribution
from babysit.data import load as load_data
from babysit.report import compare, render
from babysit.report.data_summary import TINY_VAL_SPLIT, data_facts
from babysit.report.figures import (
    DPI,
    PNG_SIGNATURE,
    first_layer_weights,
    layer_series,
    png_bytes,
    zero_floor,
)
from babysit.report.html import compare_page, data_uri, differing_keys
from babysit.report.spec_keys import DATA_KEYS, MODEL_KEYS, split_spec
from babysit.run import run
from babysit.tune.search import SearchResult, search_figure
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


# --------------------------------------------------------------------------- a newcomer's reading of the page
# A run directory written by hand (no training, so it costs milliseconds): a CNN on a CSV
# file whose gradients are exactly 0 after the first sample, a learning rate that steps down,
# a dead-ReLU error, and a landscape.json with the long arrays `babysit landscape` writes.

HREF = re.compile(r'href="#([^"]*)"')
ID = re.compile(r'\bid="([^"]*)"')
LONG_NUMBER = re.compile(r"\d\.\d{6,}")  # a float printed with all its digits


def write_newcomer_run(folder):
    """The hand-written run directory described above; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = config.validate({"name": "dead-cnn", "data": {"source": "csv", "path": "table.csv"},
                            "model": {"kind": "cnn", "bias_init": -10.0},
                            "schedule": {"name": "step", "step_size": 1, "gamma": 0.5}})
    (folder / "config.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    (folder / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "step": 10 * e, "lr": 0.1 * 0.5 ** (e - 1), "train_loss": 2.3, "val_loss": 2.3,
                    "val_acc": 0.1}) + "\n" for e in (1, 2, 3)))
    (folder / "monitors.jsonl").write_text("".join(
        json.dumps({"step": s, "layers": {
            "features.0.0": {"grad_norm": 0.5 if s == 1 else 0.0, "update_ratio": 1e-3 if s == 1 else 0.0},
            "head": {"grad_norm": 0.0, "update_ratio": 0.0}}}) + "\n" for s in (1, 11, 21)))
    (folder / "findings.json").write_text(json.dumps([
        {"id": "vanishing_gradients", "severity": "warning", "message": "Gradients vanish.", "advice": "a"},
        {"id": "dead_relu", "severity": "error", "layer": "features.0.1", "step": 1,
         "message": "Every unit of features.0.1 outputs 0 for the whole batch. More detail follows.",
         "advice": "Use a bias_init of 0."}]))
    (folder / "summary.json").write_text(json.dumps({"train_loss": 2.302585092994046, "val_loss": 2.3, "epochs": 3}))
    density = np.linspace(-1.4374262099160762, 10.697520527146667, 90).tolist()
    (folder / "landscape.json").write_text(json.dumps({
        "run": "dead-cnn", "samples": 200,
        "spectrum": {"critical_point": "saddle", "strict": False, "loss": 0.8896764742300417,
                     "gradient_norm": 1.9128114769141622e-05, "lambda_max": 10.697520527146667,
                     "lambda_min": -1.437426209916158,
                     "top_eigenvalues": [10.697520527146667, 7.025427196796194, 4.549404668124447],
                     "learning_rate": {"lr": 0.1, "verdict": "below the limit: lr 0.1 is 0.28x the stable step 0.355"},
                     "density": {"nodes": density, "weights": [1 / 90] * 90}},
        "surface": {"resolution": 7, "center_loss": 0.8896764742300417, "min_loss": 0.8746482692996753,
                    "center_is_grid_minimum": False, "max_loss": 5.311500563122407,
                    "losses": np.linspace(0.87, 5.31, 49).reshape(7, 7).tolist()},
    }))
    return folder


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory):
    folder = write_newcomer_run(tmp_path_factory.mktemp("newcomer") / "run")
    return render(folder).read_text(encoding="utf-8")


def section(page: str, anchor: str) -> str:
    """The HTML of the section whose heading has ``id=anchor``."""
    start = page.index(f'id="{anchor}"')
    return page[start:page.index("</section>", start)]


def test_every_in_page_link_has_its_target(runs, newcomer):
    for page in [newcomer, *((r.path / "report.html").read_text(encoding="utf-8") for r in runs.values())]:
        ids = set(ID.findall(page))
        assert HREF.findall(page) and set(HREF.findall(page)) <= ids, set(HREF.findall(page)) - ids
    healthy = (runs["healthy"].path / "report.html").read_text(encoding="utf-8")
    assert 'href="#samples"' not in healthy and 'href="#landscape"' not in healthy  # no such sections
    assert 'href="#landscape"' in newcomer and 'href="#data"' in newcomer


def test_the_verdict_comes_first(runs, newcomer):
    healthy = (runs["healthy"].path / "report.html").read_text(encoding="utf-8")
    assert "<strong>Verdict: healthy.</strong>" in healthy
    assert healthy.index("Verdict: healthy") < healthy.index('id="spec-summary"')
    exploding = (runs["exploding"].path / "report.html").read_text(encoding="utf-8")
    assert '<p class="verdict error"><strong>Verdict: Loss exploded.</strong>' in exploding
    # the worst finding (the error, listed second) in one sentence, and how many more
    assert ('<strong>Verdict: Dead ReLU units.</strong> Every unit of features.0.1 outputs 0 for the whole batch. '
            "(1 more warning or error below.)") in newcomer
    assert newcomer.index("Verdict:") < newcomer.index('id="findings"')


def test_zero_gradients_are_drawn_not_dropped(newcomer):
    # a layer whose gradient norm falls to exactly 0 after the first sample, one at 0 throughout
    records = [{"step": s, "layers": {"conv": {"grad_norm": 0.5 if s == 1 else 0.0}, "head": {"grad_norm": 0.0}}}
               for s in (1, 11, 21)]
    fig = layer_series(records, "grad_norm", ylabel="||∇w||", log=True)
    ax = fig.axes[0]
    floor = zero_floor([0.5])
    assert floor == 0.01 and ax.get_ylim()[0] < floor
    assert ax.yaxis.get_major_formatter()(floor, 0) == "0"  # the band's tick reads 0
    # every sample is drawn: the zeros at the floor (a log axis would leave them as gaps)
    head = next(line for line in ax.get_lines() if line.get_label() == "head")
    assert list(head.get_ydata()) == [floor] * 3
    dead = layer_series([r | {"layers": {"head": r["layers"]["head"]}} for r in records], "grad_norm",
                        ylabel="g", log=True).axes[0]  # every value 0: no positive value to place the band by
    floor = zero_floor([0.0])
    assert dead.get_ylim()[0] < floor and dead.yaxis.get_major_formatter()(floor, 0) == "0"
    assert list(dead.get_lines()[0].get_ydata()) == [floor] * 3
    layers = section(newcomer, "layers")
    assert "5 samples are exactly 0 (drawn on the grey band marked 0)" in layers


def test_the_landscape_says_its_verdict_first_in_rounded_numbers(newcomer):
    landscape = section(newcomer, "landscape")
    verdict, table_at = landscape.index("End point: saddle"), landscape.index("<table>")
    assert verdict < table_at and "Learning rate: below the limit" in landscape
    assert "(gradient norm 1.91e-05, loss 0.89)" in landscape
    assert not LONG_NUMBER.findall(landscape), LONG_NUMBER.findall(landscape)[:3]
    assert "90 values from -1.44 to 10.7: -1.44, -1.3, -1.16, …, 10.4, 10.6, 10.7" in landscape  # summarised
    assert "7×7 grid from 0.87 to 5.31" in landscape and "10.7, 7.03, 4.55" in landscape
    assert landscape.count("<tr>") < 30


def test_the_resolved_spec_folds_keys_that_do_not_apply(newcomer):
    cnn = config.validate({"model": {"kind": "cnn"}}).model_dump(mode="json")
    shown, folded = split_spec(cnn)
    assert {"channels", "kernel_size", "activation", "init"} <= set(shown["model"])
    assert {"hidden", "residual", "bottleneck", "latent", "heads", "groups", "maxout_pieces", "init_std"} <= set(folded["model"])
    csv_spec = config.validate({"data": {"source": "csv", "path": "t.csv", "target": "label"}}).model_dump(mode="json")
    shown, folded = split_spec(csv_spec)
    assert {"path", "target", "val_fraction", "test_fraction", "preprocess"} <= set(shown["data"])
    assert set(folded["data"]) == {"samples", "context", "classes", "noise", "in_memory_limit", "workers"}
    assert shown["optimizer"] == csv_spec["optimizer"]  # sections without a table are shown whole
    # conditions: groups with norm group, init_std with init normal, a GAN's widths by its backbone
    gan = config.validate({"model": {"kind": "gan", "backbone": "cnn", "norm": "group", "init": "normal"}})
    shown, _ = split_spec(gan.model_dump(mode="json"))
    assert {"channels", "kernel_size", "groups", "init_std", "latent"} <= set(shown["model"])
    assert "hidden" not in shown["model"]
    spec = section(newcomer, "spec")
    visible, fold = spec.split("<details>", 1)
    for key in ("\n  hidden:", "\n  noise:", "\n  classes:"):  # model.hidden, data.noise, data.classes
        assert key not in visible and key in fold, key
    assert "\n  channels:" in visible and "\n  path: table.csv" in visible


def test_the_tables_of_applying_keys_cover_every_kind_source_and_key():
    assert set(MODEL_KEYS) == set(get_args(config.ModelKind))
    assert set(DATA_KEYS) == set(get_args(config.DataSource))
    assert {k for keys in MODEL_KEYS.values() for k in keys} == set(config.ModelSpec.model_fields)
    assert {k for keys in DATA_KEYS.values() for k in keys} == set(config.DataSpec.model_fields)


@pytest.mark.parametrize("data", [{"source": "spirals", "samples": 300},
                                  {"source": "spirals", "samples": 90, "classes": 4, "test_fraction": 0.3, "train_size": 20},
                                  {"source": "digits", "val_fraction": 0.25}, {"source": "mnist1d"}])
def test_split_sizes_computed_from_the_spec_are_those_data_load_makes(data):
    spec = config.validate({"data": data})
    facts = data_facts(spec.model_dump(mode="json"), {})
    splits = load_data(spec.data)
    assert (facts.train, facts.val, facts.test) == (len(splits.train), len(splits.val), len(splits.test))
    assert facts.input_shape == splits.input_shape and facts.classes == splits.num_classes


def test_the_data_section_warns_of_a_tiny_validation_split(runs, newcomer):
    data = section((runs["healthy"].path / "report.html").read_text(encoding="utf-8"), "data")
    assert "train 216 · val 24 · test 60" in data  # spirals, 300 samples
    assert f"Tiny validation split:</strong> 24 examples (under {TINY_VAL_SPLIT})" in data
    csv = section(newcomer, "data")  # a file source is not re-read: its sizes are not recorded
    assert "<th>rows</th><td>not recorded</td>" in csv and "Not recorded in the run directory" in csv
    assert "Tiny" not in csv
    recorded = data_facts({}, {"data": {"train": 5000, "val": 500, "test": 1000, "input_shape": [3, 32, 32],
                                        "classes": 10}})
    assert recorded.where == "summary.json" and recorded.input_shape == (3, 32, 32) and not recorded.tiny_val


def test_the_learning_rate_is_drawn_even_when_constant(runs, newcomer):
    healthy = (runs["healthy"].path / "report.html").read_text(encoding="utf-8")
    curves = section(healthy, "curves")
    assert len(IMG.findall(curves)) == 2 and "0.1 throughout" in curves
    stepped = section(newcomer, "curves")
    assert len(IMG.findall(stepped)) == 2 and "schedule step" in stepped


def text_outside_or_overlapping(fig) -> list[str]:
    """Text of ``fig`` (tick labels, axis labels, titles) that leaves the figure, and tick labels
    of one axis that overlap each other: what a reader sees as clipped or garbled."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.set_dpi(DPI)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    bounds = fig.bbox.padded(1)
    problems = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            scale = np.log10 if axis.get_scale() == "log" else (lambda v: v)
            low, high = sorted(scale(np.asarray(axis.get_view_interval())))
            slack = (high - low) * 1e-9
            drawn = [tick for locations, ticks in ((axis.get_majorticklocs(), axis.get_major_ticks),
                                                   (axis.get_minorticklocs(), axis.get_minor_ticks))
                     for loc, tick in zip(locations, ticks(len(locations)), strict=True)
                     if low - slack <= scale(loc) <= high + slack]  # matplotlib leaves ticks off the axis undrawn
            labels = [label for tick in drawn for label in (tick.label1, tick.label2)
                      if label.get_visible() and label.get_text()]
            boxes = [t.get_window_extent(renderer) for t in labels]
            problems += [f"clipped: {t.get_text()}" for t, box in zip(labels, boxes, strict=True)
                         if box.x0 < bounds.x0 or box.x1 > bounds.x1 or box.y0 < bounds.y0 or box.y1 > bounds.y1]
            problems += [f"overlap: {a.get_text()} / {b.get_text()}" for i, (a, box_a) in enumerate(zip(labels, boxes, strict=True))
                         for b, box_b in zip(labels[i + 1:], boxes[i + 1:], strict=True) if box_a.overlaps(box_b)]
        for text in (ax.xaxis.label, ax.yaxis.label, ax.title):
            box = text.get_window_extent(renderer)
            if text.get_text() and not (bounds.x0 <= box.x0 and box.x1 <= bounds.x1 and bounds.y0 <= box.y0 and box.y1 <= bounds.y1):
                problems.append(f"clipped: {text.get_text()}")
    return problems


@pytest.mark.parametrize("shape", [(100, 2), (25, 1, 5), (8, 3, 40)])
def test_the_first_layer_colour_bar_labels_are_not_clipped(shape):
    weight = np.random.default_rng(0).normal(size=shape) * 1e-3
    fig = first_layer_weights(weight)
    assert len(fig.axes) == 2  # the heatmap and its colour bar
    assert text_outside_or_overlapping(fig) == []


# one power of ten inside (matplotlib then labels 2e-3, 3e-3, ... into each other), none, ten
@pytest.mark.parametrize("bounds", [(1.5e-3, 3e-2), (0.02, 0.09), (1e-8, 10.0)])
def test_search_figure_log_tick_labels_do_not_overlap(bounds):
    low, high = bounds
    space = {"optimizer.lr": parse_distribution(f"loguniform({low}, {high})")}
    rng = np.random.default_rng(0)
    rows = [{"trial": t, "state": "complete", "stage": "coarse", "score": float(rng.random()),
             "optimizer.lr": float(np.exp(rng.uniform(np.log(low), np.log(high))))} for t in range(12)]
    result = SearchResult("s", "memory", Path("."), space, rows, "val_loss", {}, None, rows[0], None)
    fig = search_figure(result)
    assert text_outside_or_overlapping(fig) == []
    ax = fig.axes[0]
    low_shown, high_shown = ax.get_xlim()
    labelled = [loc for loc in ax.xaxis.get_majorticklocs() if low_shown <= loc <= high_shown]
    assert 2 <= len(labelled) <= 6, labelled
