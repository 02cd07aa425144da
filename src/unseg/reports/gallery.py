"""Gallery pages: paged HTML of captioned picture panels with a sortable per-image table, written atomically as a
folder (``index.html``, ``page-N.html``, the PNG panels) that opens in a browser straight from disk. The audit pages
(:mod:`unseg.reports.audit`) are built on it.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from unseg.core.io import (
    atomic_output,
)

Panel = tuple[str, np.ndarray]  # (caption, (H, W, 3) uint8 picture)


def thumbnail(picture: np.ndarray, max_side: int) -> Image.Image:
    image = Image.fromarray(picture)
    image.thumbnail((max_side, max_side), Image.BILINEAR)
    return image


# Click a column header to sort the per-image table by it (numbers numerically, a second click reverses); a page
# opened as index.html#sort=2 (or #sort=-2, descending) starts sorted by column 2.
SORTABLE_TABLE_SCRIPT = (
    "<script>function sortTable(th,dir){const body=th.closest('table').tBodies[0];const col=th.cellIndex;"
    "const key=r=>{const t=r.cells[col].dataset.value??r.cells[col].textContent;const n=parseFloat(t);"
    "return isNaN(n)?t:n};const rows=[...body.rows];rows.sort((a,b)=>{const x=key(a),y=key(b);"
    "return (x>y?1:x<y?-1:0)*dir});rows.forEach(r=>body.appendChild(r));th.dataset.dir=dir>0?'asc':'desc'}"
    "document.querySelectorAll('table.sortable th').forEach(th=>th.addEventListener('click',"
    "()=>sortTable(th,th.dataset.dir==='asc'?-1:1)));"
    "const m=location.hash.match(/^#sort=(-?)(\\d+)$/);if(m){const th=document.querySelectorAll("
    "'table.sortable th')[+m[2]];if(th)sortTable(th,m[1]?-1:1)}</script>"
)


def page_file(page: int) -> str:
    """The file of gallery page ``page`` (1-based): ``index.html`` for the first, ``page-{n}.html`` after it."""
    return "index.html" if page == 1 else f"page-{page}.html"


def gallery_links(names: Sequence[str], page_size: int | None) -> dict[str, str]:
    """image name → the link to its row in a gallery that shows ``names`` in this order, ``page_size`` per page."""
    size = page_size or max(1, len(names))
    return {name: ("" if position < size else page_file(position // size + 1)) + f"#{name}"
            for position, name in enumerate(names)}


def per_image_table(columns: Sequence[str], rows: Sequence[tuple[str, Sequence[float | str]]],
                    shown: set[str] | Mapping[str, str]) -> str:
    """HTML of a sortable table with one row per image: its name (a link to its gallery row when the gallery shows
    it: ``shown`` maps names to links, see :func:`gallery_links`; a set links ``#name`` on the same page) and
    ``columns`` of values (numbers printed with one decimal, sorted numerically; "" for none)."""
    links = shown if isinstance(shown, Mapping) else {name: f"#{name}" for name in shown}
    head = "".join(f"<th>{html.escape(column)}</th>" for column in ["image", *columns])
    body = []
    for name, values in rows:
        label = (f"<a href='{html.escape(links[name])}'>{html.escape(name)}</a>" if name in links
                 else html.escape(name))
        cells = "".join(f"<td data-value='{value:.6g}'>{value:.1f}</td>" if isinstance(value, (int, float))
                        else f"<td>{html.escape(str(value))}</td>" for value in values)
        body.append(f"<tr><td>{label}</td>{cells}</tr>")
    return (f"<div class='table'><table class='sortable'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>" + SORTABLE_TABLE_SCRIPT)


_PAGE_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}"
    ".row{display:flex;flex-wrap:wrap;gap:8px}"
    "figure{margin:0;background:#fff;padding:4px;border:1px solid #ddd}"
    "figcaption{font-size:12px;text-align:center;max-width:256px}h2{font-size:15px;margin:1em 0 .3em}"
    "table{border-collapse:collapse;font-size:13px;margin:.5em 0 1em}td,th{border:1px solid #ddd;"
    "padding:2px 8px;text-align:right}th{cursor:pointer;background:#eee;position:sticky;top:0}"
    "div.table{max-height:320px;overflow-y:auto;display:inline-block}nav.pages a{margin:0 .25em}"
    "nav.pages b{margin:0 .25em}"
)


def write_gallery(
    out_dir: str | Path, title: str, rows: Iterable[tuple[str, Sequence[Panel]]], notes: str = "",
    max_side: int = 256, provenance: str | Path | None = None, table_html: str = "", page_size: int | None = None,
) -> Path:
    """Write the gallery ``out_dir/index.html`` (and ``page-2.html``, ... with ``page_size``), one row of captioned
    panels per image, atomically as a folder.

    Args:
        rows: (image name, panels) per image, in the order shown; each panel is (caption, (H, W, 3) uint8). An
            iterable is consumed one row at a time (the panels are written as thumbnails and dropped), so a gallery
            of a whole dataset does not hold its pictures in memory.
        provenance: the audited artifact's provenance sidecar, linked (relative, so the page still opens from disk)
            from the page's header.
        table_html: a per-image table (:func:`per_image_table`, with links from :func:`gallery_links`) shown on
            the first page.
        page_size: rows per page (None: one page); every page links to the others.
    """
    with atomic_output(out_dir) as tmp:
        tmp.mkdir(parents=True)
        pages: list[list[str]] = [[]]
        for row_index, (name, panels) in enumerate(rows):
            if page_size and len(pages[-1]) == page_size:
                pages.append([])
            cells = []
            for panel_index, (caption, picture) in enumerate(panels):
                file_name = f"{row_index:04d}_{panel_index:02d}.png"
                thumbnail(picture, max_side).save(tmp / file_name)
                cells.append(f'<figure><img src="{file_name}" loading="lazy">'
                             f'<figcaption>{html.escape(caption)}</figcaption></figure>')
            pages[-1].append(f'<section id="{html.escape(name)}"><h2>{html.escape(name)}</h2>'
                             f'<div class="row">{"".join(cells)}</div></section>')
        if provenance is not None:
            link = os.path.relpath(provenance, Path(out_dir).resolve())
            notes_html = (f"<p>{html.escape(notes)}</p><p class='provenance'>What made it: <a href="
                          f"'{html.escape(link)}'>provenance</a> (in a terminal: <code>unseg provenance "
                          f"{html.escape(str(provenance))}</code>)</p>")
        else:
            notes_html = f"<p>{html.escape(notes)}</p>"
        for number, sections in enumerate(pages, start=1):
            nav = ""
            if len(pages) > 1:
                links = " ".join(f"<b>{page}</b>" if page == number else f"<a href='{page_file(page)}'>{page}</a>"
                                 for page in range(1, len(pages) + 1))
                nav = f"<nav class='pages'>page {links} of {len(pages)}</nav>"
            table = table_html if number == 1 else (
                f"<p>The per-image table is on <a href='{page_file(1)}'>page 1</a>.</p>" if table_html else "")
            (tmp / page_file(number)).write_text(
                "<!doctype html><html><head><meta charset='utf-8'>"
                f"<title>{html.escape(title)}</title><style>{_PAGE_STYLE}</style></head><body>"
                f"<h1>{html.escape(title)}</h1>{notes_html}{table}{nav}{''.join(sections)}{nav}</body></html>"
            )
    return Path(out_dir) / "index.html"
