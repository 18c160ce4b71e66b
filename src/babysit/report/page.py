"""The building blocks of babysit's self-contained HTML pages (the run report, the
comparison, a study's page).

A page is one file that opens offline in any browser: the only style is the small inline
:data:`STYLE`, every figure is a PNG embedded as a base64 ``data:`` URI (:func:`data_uri`,
:func:`figure`), and there is no script, font or address of any kind. All text put in a
page goes through :func:`escape`; :func:`table` takes cells that are already HTML.
:func:`write_page` writes a page atomically (a reader never sees half of one).

Example
-------
>>> body = table(["key", "value"], [[escape("a<b"), number(1234)]])
>>> body
'<table><thead><tr><th>key</th><th>value</th></tr></thead><tbody><tr><td>a&lt;b</td><td>1,234</td></tr></tbody></table>'
>>> page("demo", body).startswith("<!DOCTYPE html>")
True
"""

from __future__ import annotations

import base64
import datetime
import html
import math
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from babysit.errors import BabysitError
from babysit.report.figures import PNG_SIGNATURE, png_bytes
from babysit.rundir import write_text

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 72em; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.5em 0; } th, td { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
nav a { margin-right: 1em; } .muted { color: #666; } img { max-width: 100%; height: auto; }
figure { margin: 0.8em 0; } figcaption { color: #555; font-size: 0.9em; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
.finding { border-left: 6px solid #999; padding: 0.2em 1em; margin: 1em 0; background: #fafafa; }
.finding.error { border-color: #c0392b; } .finding.warning { border-color: #e0a800; } .finding.info { border-color: #2f80c0; }
.severity { text-transform: uppercase; font-size: 0.8em; font-weight: bold; }
.error .severity { color: #c0392b; } .warning .severity { color: #9a7400; } .info .severity { color: #2f80c0; }
.grid { display: flex; flex-wrap: wrap; gap: 1em; } .grid figure { flex: 1 1 28em; }
.verdict { font-size: 1.1em; border-left: 6px solid #999; padding: 0.4em 1em; background: #fafafa; }
.verdict.healthy { border-color: #2e8b57; background: #f0f8f2; } .verdict.warning { border-color: #e0a800; background: #fff8e1; }
.verdict.error { border-color: #c0392b; background: #fdf0ee; }
.alert { border-left: 6px solid #e0a800; background: #fff8e1; padding: 0.3em 1em; }
details > summary { cursor: pointer; color: #444; }
"""


def escape(value: Any) -> str:
    """``str(value)`` escaped for HTML text and attribute values.

    Example
    -------
    >>> escape('<a href="x">')
    '&lt;a href=&quot;x&quot;&gt;'
    """
    return html.escape(str(value), quote=True)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def data_uri(png: bytes) -> str:
    """A PNG as a ``data:`` URI. The base64 text never contains 'http' (in any case), so a
    search of the page for a network address finds none: when it would, a short comment
    chunk is added after the PNG header, which shifts the encoding.

    Example
    -------
    >>> data_uri(PNG_SIGNATURE + b"rest")[:22]
    'data:image/png;base64,'
    """
    for pad in range(16):
        body = png
        if pad and png.startswith(PNG_SIGNATURE) and len(png) >= 33:
            body = png[:33] + _png_chunk(b"tEXt", b"Comment\x00" + b" " * pad) + png[33:]  # 33: signature + IHDR
        text = base64.b64encode(body).decode("ascii")
        if "http" not in text.lower():
            break
    return "data:image/png;base64," + text


def figure(fig: Any, caption: str, alt: str | None = None) -> str:
    """A matplotlib figure embedded as a PNG with its caption (empty when ``fig`` is None:
    nothing to draw)."""
    if fig is None:
        return ""
    uri = data_uri(png_bytes(fig))
    return (f'<figure><img src="{uri}" alt="{escape(alt or caption)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def number(value: Any) -> str:
    """A table number: integers with thousands separators, floats to 4 significant digits,
    anything else escaped (None as empty).

    Example
    -------
    >>> number(12345), number(0.000123456), number(None), number(float("nan"))
    ('12,345', '0.0001235', '', 'nan')
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return escape("" if value is None else value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table; ``header`` is plain text (escaped here), cells are already-escaped HTML."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, body: str) -> str:
    """A whole HTML document: ``title`` (escaped), the style sheet, ``body`` (HTML) and a
    footer with the time it was written."""
    generated = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n"
        f"<footer><p class=\"muted\">Written by babysit on {generated}.</p></footer>\n</body>\n</html>\n"
    )


def write_page(path: str | Path, text: str) -> Path:
    """Write a page to ``path`` atomically (never seen half-written); ``path`` must name a file.

    Example
    -------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> write_page(folder / "page.html", page("t", "")).name
    'page.html'
    >>> write_page(folder, "")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    babysit.errors.BabysitError: ...: is a directory; --out names the HTML file to write
    """
    path = Path(path)
    if path.is_dir():
        raise BabysitError(f"{path}: is a directory; --out names the HTML file to write")
    return write_text(path, text)


__all__ = ["STYLE", "data_uri", "escape", "figure", "number", "page", "table", "write_page"]
