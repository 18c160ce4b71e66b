"""The report in a real browser: Debian's chromium, headless, renders the page of a healthy
and of a pathological run; every image in it decodes, the screenshot is not blank, and the
pathological run's page shows its finding's title.

``make test`` installs chromium when it is missing (apt-get); without it these tests skip.
The page has no script of its own, so the image check runs on a copy of it with one small
script added at the end: on load it draws every ``<img>`` onto a canvas (a broken image
throws or draws nothing) and writes the result into the DOM, which ``--dump-dom`` prints.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from babysit import config
from babysit.checks.findings import FINDINGS
from babysit.run import run
from test_report import write_newcomer_run

pytestmark = pytest.mark.usefixtures("one_thread")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars"]

# appended to a copy of the page (the page itself has no script). In the load handler, so the
# result is in the DOM before --dump-dom prints it however slow the machine: every image must
# have loaded, and drawing it onto a canvas (a synchronous, full decode) must paint something.
IMAGE_CHECK = """<script>
addEventListener("load", () => {
  const canvas = document.createElement("canvas");
  const context = canvas.getContext("2d", {willReadFrequently: true});
  const images = [...document.images];
  const broken = [];
  for (const img of images) {
    const name = img.alt || img.src.slice(0, 60);
    if (!img.complete || img.naturalWidth === 0) { broken.push(name + ": not loaded"); continue; }
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    try {
      context.drawImage(img, 0, 0);
      const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
      let painted = false;
      for (let alpha = 3; alpha < pixels.length && !painted; alpha += 4) painted = pixels[alpha] > 0;
      if (!painted) broken.push(name + ": nothing drawn");
    } catch (error) {
      broken.push(name + ": " + error.name);
    }
  }
  const out = document.createElement("pre");
  out.id = "babysit-image-check";
  out.textContent = JSON.stringify({images: images.length, broken: broken});
  document.body.append(out);
});
</script>"""


@pytest.fixture(scope="module")
def chromium():
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium not found: `make test` installs Debian's chromium (apt-get install chromium); "
                    "without apt (or root) install it by hand to run the browser tests")
    return found


def browse(chromium, page, tmp_path, *args):
    """Run headless chromium on a local page with its own profile folder; returns stdout."""
    profile = tmp_path / f"profile-{page.stem}-{len(args)}"
    done = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


# appended with IMAGE_CHECK: the in-page links (href="#...") and those with no element of that
# id, and the text of <main> as the browser lays it out (innerText: what a reader sees; the
# inside of a closed <details> is left out)
PAGE_CHECK = """<script>
addEventListener("load", () => {
  const ids = new Set([...document.querySelectorAll("[id]")].map(element => element.id));
  const links = [...document.querySelectorAll('a[href^="#"]')].map(a => a.getAttribute("href").slice(1));
  const main = document.querySelector("main");
  const out = document.createElement("pre");
  out.id = "babysit-page-check";
  out.textContent = JSON.stringify({links: links, dangling: links.filter(id => !ids.has(id)),
                                    visible: main ? main.innerText : ""});
  document.body.append(out);
});
</script>"""


def rendered_dom(chromium, page, tmp_path):
    """The page's DOM after load, and what the image check found: ``{"images", "broken"}``."""
    source = page.read_text(encoding="utf-8")
    checked = tmp_path / f"{page.stem}-checked.html"
    at = source.lower().rfind("</body>")
    checks = IMAGE_CHECK + PAGE_CHECK
    checked.write_text(source[:at] + checks + source[at:] if at >= 0 else source + checks, encoding="utf-8")
    dom = browse(chromium, checked, tmp_path, "--dump-dom", "--virtual-time-budget=5000")
    found = re.search(r'<pre id="babysit-image-check">(.*?)</pre>', dom, re.S)
    assert found, "the image check did not run: " + dom[-500:]
    return dom, json.loads(html.unescape(found.group(1)))


def page_check(dom):
    """What PAGE_CHECK found in a DOM from :func:`rendered_dom`: ``{"links", "dangling", "visible"}``."""
    found = re.search(r'<pre id="babysit-page-check">(.*?)</pre>', dom, re.S)
    assert found, "the page check did not run: " + dom[-500:]
    return json.loads(html.unescape(found.group(1)))


def screenshot(chromium, page, tmp_path):
    """The page drawn at 1200 x 2000 as an (H, W, channels) array of floats in [0, 1]."""
    from matplotlib.image import imread

    png = tmp_path / f"{page.stem}.png"
    browse(chromium, page, tmp_path, f"--screenshot={png}", "--window-size=1200,2000")
    return imread(png)


def blank(pixels):
    """One colour all over (white, or anything else): the page did not draw."""
    rgb = pixels[..., :3]
    return float(rgb.std()) < 0.01 or float((rgb < 0.95).any(axis=-1).mean()) < 0.001


def text_of(dom):
    """The visible text of a DOM dump (tags out, entities decoded, spaces squeezed)."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def png_uri(corrupt=False):
    """A small PNG as a data URI; ``corrupt``: its header intact (it loads, with its size) and
    its pixel data overwritten, so that only decoding it shows it broken."""
    from matplotlib import pyplot as plt

    buffer = io.BytesIO()
    plt.imsave(buffer, np.linspace(0, 1, 64 * 48).reshape(48, 64), cmap="viridis", format="png")
    data = bytearray(buffer.getvalue())
    if corrupt:
        at = data.index(b"IDAT") + 4
        length = int.from_bytes(data[at - 8:at - 4], "big")
        data[at + 10:at + length - 10] = b"\xab" * (length - 20)
    return "data:image/png;base64," + base64.b64encode(bytes(data)).decode()


def test_the_checks_catch_a_broken_image_and_a_blank_page(chromium, tmp_path):
    page = tmp_path / "page.html"
    page.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>t</title></head><body>
        <h1>Loss exploded &amp; more</h1><img src="{png_uri()}" alt="good" width="320">
        <img src="data:image/png;base64,iVBORw0KGgoAAAAN" alt="broken">
        <img src="{png_uri(corrupt=True)}" alt="corrupt"></body></html>""", encoding="utf-8")
    dom, images = rendered_dom(chromium, page, tmp_path)
    assert images == {"images": 3, "broken": ["broken: not loaded", "corrupt: nothing drawn"]}
    assert "Loss exploded & more" in text_of(dom)
    assert not blank(screenshot(chromium, page, tmp_path))
    empty = tmp_path / "empty.html"
    empty.write_text("<!doctype html><html><body></body></html>", encoding="utf-8")
    assert blank(screenshot(chromium, empty, tmp_path))


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """The report pages of a healthy run (spirals) and of a pathological one (the default
    MNIST-1D MLP at lr 5: the loss explodes)."""
    report = pytest.importorskip("babysit.report")
    folder = tmp_path_factory.mktemp("runs")
    healthy = config.validate({"data": {"source": "spirals", "samples": 600}, "train": {"epochs": 5}})
    exploding = config.validate({"optimizer": {"lr": 5.0}, "train": {"epochs": 3}})
    pages = {}
    for name, spec in (("healthy", healthy), ("pathological", exploding)):
        result = run(spec, out=folder / name, quiet=True)
        pages[name] = (report.render(result.path), result.findings)
    # written by hand (test_report): a CNN on a CSV file whose gradients fall to exactly 0, a
    # stepped learning rate, a dead-ReLU error and a landscape.json with long arrays
    pages["newcomer"] = (report.render(write_newcomer_run(folder / "newcomer")), None)
    return pages


@pytest.mark.parametrize("which", ["healthy", "pathological"])
def test_a_report_renders_with_every_image_decoded(chromium, reports, which, tmp_path):
    page, findings = reports[which]
    assert "<script" not in page.read_text(encoding="utf-8").lower()
    dom, images = rendered_dom(chromium, page, tmp_path)
    assert images["images"] >= 3 and images["broken"] == []
    assert not blank(screenshot(chromium, page, tmp_path))
    found = page_check(dom)
    assert found["links"] and found["dangling"] == []  # every in-page link reaches a section the page has
    visible = found["visible"]
    # the verdict, under the title: the worst finding (errors before warnings), else "healthy"
    serious = sorted((f for f in findings if f.severity in ("error", "warning")), key=lambda f: f.severity != "error")
    verdict = f"Verdict: {FINDINGS[serious[0].id]}." if serious else "Verdict: healthy."
    assert visible.index(verdict) < visible.index("Experiment")
    if which == "pathological":
        assert "loss_exploded" in [f.id for f in findings]
        assert "Loss exploded" in text_of(dom) and verdict == "Verdict: Loss exploded."
    if which == "healthy":  # an MLP classifier makes no samples, and no landscape was mapped: no links to them
        assert "samples" not in found["links"] and "landscape" not in found["links"]
        assert {"data", "findings", "curves", "layers", "weights", "spec"} <= set(found["links"])
        assert "train 432 · val 48 · test 120" in visible  # spirals, 600 samples
        assert "Tiny validation split: 48 examples (under 100)" in visible
        assert "Learning rate per epoch" in visible  # drawn although constant


def test_a_newcomer_reads_the_verdict_first_and_the_details_folded(chromium, reports, tmp_path):
    dom, images = rendered_dom(chromium, reports["newcomer"][0], tmp_path)
    found = page_check(dom)
    assert found["dangling"] == [] and "landscape" in found["links"] and images["broken"] == []
    visible = found["visible"]
    # the verdict right under the title: the error, though listed second, in one sentence
    assert visible.index("Verdict: Dead ReLU units.") < visible.index("Experiment") < visible.index("Findings")
    # the data summary; a CSV file is not re-read, so its sizes are said to be unrecorded
    assert "rows\tnot recorded" in visible and "Not recorded in the run directory" in visible
    # the zero gradients are named and drawn (the caption says where); the learning rate is a figure
    assert "exactly 0 (drawn on the grey band marked 0)" in visible and "Learning rate per epoch" in visible
    # the landscape's verdict first, in rounded numbers; the table of every quantity folded away
    landscape = visible[visible.index("Loss landscape"):visible.index("Resolved spec")]
    assert landscape.index("End point: saddle") < landscape.index("Every quantity in landscape.json")
    assert not re.search(r"\d\.\d{6,}", landscape)
    assert "spectrum.density.nodes" not in visible and "spectrum.density.nodes" in dom
    # the spec's keys that do not apply to a CNN on a CSV file are folded
    spec = visible[visible.index("Resolved spec"):]
    assert "channels:" in spec and "path: table.csv" in spec
    for key in ("hidden:", "  noise:", "classes:", "bottleneck:"):
        assert key not in spec, key
    assert "keys that do not apply to model.kind cnn, data.source csv" in spec

