"""``report.html``: a sweep to look at, self-contained (every image inlined), readable offline.

The page holds the sweep's table (one row per setting, the best FID, IS and accuracy marked), its plot
(``sweep.png``) and each setting's sample grid. A small inline script counts, once the page has loaded,
how many images decoded, and writes it to ``<body data-images-loaded="k/n">`` so that a headless browser
can check the page (``tests/test_report.py``).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_text

__all__ = ["write_report", "COLUMNS_SHOWN"]

# (row key, header, format)
COLUMNS_SHOWN = (("tag", "setting", "s"), ("method", "method", "s"), ("w", "w", "g"), ("cg_scale", "CG s", "g"),
                 ("n", "n", "d"), ("fid", "FID", ".3f"), ("kid", "KID", ".5f"), ("is_mean", "IS", ".2f"),
                 ("precision", "precision", ".3f"), ("recall", "recall", ".3f"), ("accuracy", "accuracy", ".4f"),
                 ("nfe", "NFE", "g"), ("sample_seconds", "sampling s", ".0f"))
_BEST = {"fid": min, "kid": min, "is_mean": max, "accuracy": max}

_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  document.body.setAttribute('data-images-loaded', ok + '/' + imgs.length);
});
"""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f2f2f2; } td.best { font-weight: bold; background: #eef7ee; }
figure { display: inline-block; margin: 0.5em; text-align: center; } img { image-rendering: pixelated; }
"""


def _img(path: Path, alt: str, width: int | None = None) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    size = f' width="{width}"' if width else ""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"{size}>'


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    v = row.get(key)
    if v is None:
        return "-"
    return html.escape(format(v, fmt) if fmt != "s" else str(v))


def write_report(out: str | Path, rows: Sequence[dict[str, Any]], *, title: str, plot: bool = True) -> Path:
    """Write ``out/report.html`` for a sweep's ``rows`` (its table), inlining ``out/sweep.png`` (if ``plot``:
    the caller just drew it) and every row's grid (``row["grid"]``, relative to ``out``) that exists."""
    out = Path(out)
    best = {}
    for key, pick in _BEST.items():
        vals = [r[key] for r in rows if r.get(key) is not None]
        best[key] = pick(vals) if vals else None
    cols = [c for c in COLUMNS_SHOWN if any(r.get(c[0]) is not None for r in rows)]
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in cols)
    body = []
    for r in rows:
        cells = "".join(f'<td{" class=best" if k in best and r.get(k) == best[k] else ""}>{_cell(r, k, f)}</td>'
                        for k, _, f in cols)
        body.append(f"<tr>{cells}</tr>")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>",
             f"<h1>{html.escape(title)}</h1>", f"<table id='results'><thead><tr>{head}</tr></thead><tbody>",
             *body, "</tbody></table>"]
    if plot and (out / "sweep.png").is_file():
        parts += ["<h2>Guidance strength against the metrics</h2>", _img(out / "sweep.png", "sweep plot", 900)]
    grids = [(r["tag"], out / r["grid"]) for r in rows if r.get("grid") and (out / r["grid"]).is_file()]
    if grids:
        parts.append("<h2>Samples (one row per class)</h2>")
        parts += [f"<figure>{_img(p, tag, 280)}<figcaption>{html.escape(tag)}</figcaption></figure>"
                  for tag, p in grids]
    parts.append("</body></html>")
    path = out / "report.html"
    atomic_write_text(path, "\n".join(parts) + "\n")
    return path
