"""Audit pages: HTML galleries of overlays, so every intermediate mask can be looked at.

Each page is a folder with ``index.html`` and its PNG panels; it opens in a browser straight from disk.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .io import (
    IGNORE_LABEL,
    atomic_output,
    decode_rle,
    read_image,
    read_json,
    read_label_png,
    read_saliency,
)
from .overlays import overlay_heatmap, overlay_labels, overlay_masks
from .provenance import sidecar_path

Panel = tuple[str, np.ndarray]  # (caption, (H, W, 3) uint8 picture)


def _thumbnail(picture: np.ndarray, max_side: int) -> Image.Image:
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
                _thumbnail(picture, max_side).save(tmp / file_name)
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


def _detections_by_image(path: str | Path) -> dict[int, list[dict]]:
    by_image: dict[int, list[dict]] = {}
    for det in read_json(path):
        by_image.setdefault(int(det["image_id"]), []).append(det)
    return by_image


def _mask_origin(det: dict) -> tuple[int, int]:
    """Sort key and panel of a mask: (0, k) for a clustering with k clusters, (1, i) for eigenvector i's split."""
    eigen_index = det.get("eigen_index")
    return (1, int(eigen_index)) if eigen_index is not None and eigen_index >= 1 else (0, int(det["k"]))


def _origin_caption(det: dict) -> str:
    kind, value = _mask_origin(det)
    return f"eigenvector {value}" if kind else f"k={value}"


def _rle(segmentation: dict) -> dict:
    counts = segmentation["counts"]
    return {"size": segmentation["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def instance_overlaps(detections: Sequence[dict], annotations: Sequence[dict]) -> dict[str, float]:
    """How well detections (masks, proposals) cover an image's ground-truth instances: ``best-overlap IoU`` (mean
    over the non-crowd instances of the best mask IoU any detection reaches, %) and ``recall@0.5`` (% of instances
    with a detection of IoU >= 0.5). Empty when the image has no such instance."""
    from pycocotools import mask as mask_utils

    truths = [_rle(item["segmentation"]) for item in annotations if not item.get("iscrowd")]
    if not truths:
        return {}
    if detections:
        ious = np.asarray(mask_utils.iou([_rle(det["segmentation"]) for det in detections], truths,
                                         [0] * len(truths))).reshape(len(detections), len(truths))
        best = ious.max(axis=0)
    else:
        best = np.zeros(len(truths))
    return {"best-overlap IoU": 100 * float(best.mean()), "recall@0.5": 100 * float((best >= 0.5).mean())}


def _annotations_by_image(ground_truth: Mapping | None) -> dict[int, list[dict]]:
    by_image: dict[int, list[dict]] = {}
    for annotation in (ground_truth or {}).get("annotations", []):
        by_image.setdefault(int(annotation["image_id"]), []).append(annotation)
    return by_image


Entry = tuple[int, str, str, dict]  # (image_id, name, path, per-image values)


def _paged_gallery(out_dir: str | Path, title: str, entries: Sequence[Entry], columns: Sequence[str],
                   panels_of, notes: str, provenance: str | Path | None, page_size: int | None,
                   max_images: int | None, order: str) -> Path:
    """A gallery of ``entries`` (already in the order shown; the first ``max_images`` of them, every one with
    None), ``page_size`` per page, with the per-image table of every entry linked to their rows."""
    shown = list(entries[:max_images] if max_images else entries)
    links = gallery_links([name for _, name, _, _ in shown], page_size)
    table = per_image_table(columns, [(name, [values.get(column, "") for column in columns])
                                      for _, name, _, values in entries], links)
    pages = -(-len(shown) // page_size) if page_size else 1
    notes = (f"{notes} {len(entries)} images in the table (click a header to sort); the gallery shows "
             f"{len(shown)}, {order}" + (f", in {pages} pages of {page_size}" if pages > 1 else "") + ".").strip()
    rows = ((name, panels_of(image_id, name, path, values)) for image_id, name, path, values in shown)
    return write_gallery(out_dir, title, rows, notes, provenance=provenance, table_html=table, page_size=page_size)


def _worst_first(entries: list[Entry], keys: Sequence[str]) -> tuple[list[Entry], str]:
    """Entries ordered by the first of ``keys`` every scored entry has, ascending (worst first; unscored last), and
    the order's description; index order when none has any."""
    for key in keys:
        if any(key in values for *_, values in entries):
            ordered = sorted(entries, key=lambda entry: (key not in entry[3], entry[3].get(key, 0.0)))
            return ordered, f"lowest {key} first"
    return entries, "in index order"


def audit_masks(images: Sequence[tuple[int, str, str]], masks_json: str | Path, out_dir: str | Path,
                provenance: str | Path | None = None, ground_truth: Mapping | None = None,
                page_size: int | None = None, max_images: int | None = None) -> Path:
    """Masks per k (and, for deep_spectral, per eigenvector): for each image (image_id, name, path), one panel per
    clustering k with that clustering's masks, then one per eigenvector index with its sign-split masks.

    Per image: the number of masks and, with ``ground_truth`` (COCO instances keyed by image_id), how well they
    cover its instances (:func:`instance_overlaps`); the gallery shows the worst-covered first (else the fewest
    masks first)."""
    by_image = _detections_by_image(masks_json)
    truth_by_image = _annotations_by_image(ground_truth)
    entries = []
    for image_id, name, path in images:
        detections = by_image.get(image_id, [])
        values = {"masks": float(len(detections)), **instance_overlaps(detections, truth_by_image.get(image_id, []))}
        entries.append((image_id, name, path, values))
    entries, order = _worst_first(entries, ["best-overlap IoU", "masks"])

    def panels_of(image_id, name, path, values) -> list[Panel]:
        image = read_image(path)
        detections = by_image.get(image_id, [])
        panels: list[Panel] = [("image", image)]
        for origin in sorted({_mask_origin(det) for det in detections}):
            chosen = [det for det in detections if _mask_origin(det) == origin]
            masks = [decode_rle(det["segmentation"]) for det in chosen]
            panels.append((f"{_origin_caption(chosen[0])}: {len(masks)} masks", overlay_masks(image, masks)))
        return panels

    columns = [column for column in ("best-overlap IoU", "recall@0.5", "masks")
               if any(column in values for *_, values in entries)]
    notes = ("Each colour is one mask (a connected component of one cluster, or of the border-rule side of one "
             "eigenvector's sign split).")
    return _paged_gallery(out_dir, "Spectral masks per k and per eigenvector", entries, columns, panels_of, notes,
                          provenance, page_size, max_images, order)


def audit_proposals(
    images: Sequence[tuple[int, str, str]], proposals_json: str | Path, saliency_dir: str | Path, out_dir: str | Path,
    provenance: str | Path | None = None, rejected_json: str | Path | None = None,
    ground_truth: Mapping | None = None, page_size: int | None = None, max_images: int | None = None,
) -> Path:
    """Saliency heat map, the surviving proposals (with scores) and, from ``rejected_json``, the masks that were
    dropped, by reason (saliency fraction, NMS, CRF), each of the first ones with its reason and numbers.

    Per image: kept and dropped counts, the top score and, with ``ground_truth``, the instance coverage of the kept
    proposals (:func:`instance_overlaps`); the gallery shows the lowest recall first (else the weakest top score)."""

    by_image = _detections_by_image(proposals_json)
    rejected_by_image = _detections_by_image(rejected_json) if rejected_json else {}
    truth_by_image = _annotations_by_image(ground_truth)
    entries = []
    for image_id, name, path in images:
        detections = by_image.get(image_id, [])
        values = {"proposals": float(len(detections)), "dropped": float(len(rejected_by_image.get(image_id, []))),
                  "top score": max((float(det["score"]) for det in detections), default=0.0),
                  **instance_overlaps(detections, truth_by_image.get(image_id, []))}
        entries.append((image_id, name, path, values))
    entries, order = _worst_first(entries, ["recall@0.5", "top score"])

    def panels_of(image_id, name, path, values) -> list[Panel]:
        image = read_image(path)
        detections = sorted(by_image.get(image_id, []), key=lambda det: -det["score"])
        soft = read_saliency(saliency_dir, name)
        panels: list[Panel] = [("image", image), ("saliency", overlay_heatmap(image, soft))]
        panels.append((f"{len(detections)} proposals",
                       overlay_masks(image, [decode_rle(d["segmentation"]) for d in detections[::-1]])))
        for det in detections[:4]:
            panels.append((f"score {det['score']:.2f} ({_origin_caption(det)}, "
                           f"salient {det.get('salient_fraction', 0):.2f})",
                           overlay_masks(image, [decode_rle(det["segmentation"])])))
        rejected = rejected_by_image.get(image_id, [])
        for reason in ("saliency", "nms", "crf"):
            dropped = [det for det in rejected if det["rejected"] == reason]
            if dropped:
                panels.append((f"dropped by {reason}: {len(dropped)}",
                               overlay_masks(image, [decode_rle(d["segmentation"]) for d in dropped])))
        for det in sorted(rejected, key=lambda det: -det["score"])[:3]:
            panels.append((f"dropped ({_origin_caption(det)}, score {det['score']:.2f}): {det['reason']}",
                           overlay_masks(image, [decode_rle(det["segmentation"])])))
        return panels

    columns = [column for column in ("recall@0.5", "best-overlap IoU", "proposals", "dropped", "top score")
               if any(column in values for *_, values in entries)]
    notes = ("Kept proposals, then the masks the filter dropped: 'saliency' (too little of the mask is salient), "
             "'nms' (overlaps a higher-scoring kept mask), 'crf' (CRF refinement left nothing)."
             if rejected_json else "")
    return _paged_gallery(out_dir, "Proposals after the saliency filter and NMS", entries, columns, panels_of, notes,
                          provenance, page_size, max_images, order)


def ground_truth_foreground(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(foreground, valid) (H, W) bool masks of a ground-truth label PNG: label > 0, and not void (255)."""
    labels = read_label_png(path)
    return (labels > 0) & (labels != IGNORE_LABEL), labels != IGNORE_LABEL


def audit_saliency(
    images: Sequence[tuple[int, str, str]], saliency_dir: str | Path, out_dir: str | Path,
    ground_truth: dict[str, str] | None = None, max_images: int | None = 12, provenance: str | Path | None = None,
    page_size: int | None = None,
) -> Path:
    """Every image's saliency in a sortable table (foreground fraction; with ground truth, foreground IoU of
    ``> 0.5``, void left out), and a gallery of ``max_images`` of them (None: all), worst IoU first when there is
    ground truth: the image, the soft map, its foreground (> 0.5), the ground truth, and a trained head's teacher
    map when the variant keeps one (``extras/teacher/``)."""
    ground_truth = ground_truth or {}
    teacher_dir = Path(saliency_dir) / "extras" / "teacher"
    entries = []
    for image_id, name, path in images:
        soft = read_saliency(saliency_dir, name)
        values: dict[str, float] = {"foreground %": 100 * float((soft > 0.5).mean())}
        if ground_truth.get(name):
            truth, valid = ground_truth_foreground(ground_truth[name])
            predicted = (soft > 0.5) & valid
            union = (predicted | truth).sum()
            values["IoU"] = 100 * float((predicted & truth).sum() / union) if union else 100.0
        entries.append((image_id, name, path, values))
    scored = any("IoU" in values for *_, values in entries)
    if scored:
        entries, order = _worst_first(entries, ["IoU"])
        order = "worst foreground IoU first"
    else:
        order = "in index order"

    def panels_of(image_id, name, path, values) -> list[Panel]:
        image = read_image(path)
        soft = read_saliency(saliency_dir, name)
        panels: list[Panel] = [("image", image), ("soft map", overlay_heatmap(image, soft)),
                               ("foreground (> 0.5)" + (f", IoU {values['IoU']:.1f}" if "IoU" in values else ""),
                                overlay_masks(image, [soft > 0.5]))]
        if ground_truth.get(name):
            panels.append(("ground truth", overlay_masks(image, [ground_truth_foreground(ground_truth[name])[0]])))
        if (teacher_dir / f"{name}.png").is_file():
            panels.append(("teacher (> 0.5)", overlay_masks(image, [read_saliency(teacher_dir, name) > 0.5])))
        return panels

    columns = ["IoU", "foreground %"] if scored else ["foreground %"]
    return _paged_gallery(out_dir, "Saliency maps", entries, columns, panels_of,
                          "Foreground is the stored map > 0.5.", provenance, page_size, max_images, order)


def _max_label(path: str | Path) -> int:
    labels = read_label_png(path)
    labels = labels[labels != IGNORE_LABEL]
    return int(labels.max()) if labels.size else 0


def per_image_miou(label_dir: str | Path, ground_truth: Mapping[str, str]) -> dict[str, float]:
    """name → mIoU (%) of ``label_dir/{name}.png`` against its ground truth, under the Hungarian matching of the
    clusters to the classes over all those images (:func:`unseg.metrics.evaluate_semantic`, as the evaluate stage
    scores a split); images without a labelled pixel are left out."""
    from .metrics import evaluate_semantic

    names = [name for name in ground_truth if (Path(label_dir) / f"{name}.png").is_file()]
    if not names:
        return {}
    predictions = [Path(label_dir) / f"{name}.png" for name in names]
    truths = [ground_truth[name] for name in names]
    num_predicted = max(_max_label(path) for path in predictions) + 1
    num_classes = max(_max_label(path) for path in truths) + 1
    scores = evaluate_semantic(predictions, truths, num_predicted, num_classes)["per_image_miou"]
    return {name: value for name, value in scores.items() if value is not None}


def audit_label_maps(
    images: Sequence[tuple[int, str, str]],
    label_dirs: Sequence[tuple[str, str | Path]],
    out_dir: str | Path,
    title: str,
    ground_truth: dict[str, str] | None = None,
    provenance: str | Path | None = None,
    page_size: int | None = None,
    max_images: int | None = None,
) -> Path:
    """Label maps (pseudo-labels, predictions) beside the ground truth when known.

    Per image, with ground truth: the mIoU of each label map (:func:`per_image_miou`); the gallery shows the worst
    of the last label maps (the predictions beside their pseudo-labels) first.

    Args:
        label_dirs: (caption, folder holding ``{name}.png``) per panel.
        ground_truth: image name → ground-truth label PNG.
    """
    ground_truth = {name: path for name, path in (ground_truth or {}).items() if path}
    scores = {caption: per_image_miou(folder, ground_truth) for caption, folder in label_dirs} if ground_truth else {}
    columns = [f"mIoU {caption}" for caption, _ in label_dirs] if ground_truth else []
    entries = [(image_id, name, path, {f"mIoU {caption}": scores[caption][name] for caption, _ in label_dirs
                                       if name in scores.get(caption, {})}) for image_id, name, path in images]
    entries, order = _worst_first(entries, columns[::-1])

    def panels_of(image_id, name, path, values) -> list[Panel]:
        image = read_image(path)
        panels: list[Panel] = [("image", image)]
        for caption, folder in label_dirs:
            if not (Path(folder) / f"{name}.png").is_file():  # e.g. a support image: clustered, never painted
                continue
            score = values.get(f"mIoU {caption}")
            panels.append((caption + (f", mIoU {score:.1f}" if score is not None else ""),
                           overlay_labels(image, read_label_png(Path(folder) / f"{name}.png"))))
        if ground_truth.get(name):
            panels.append(("ground truth", overlay_labels(image, read_label_png(ground_truth[name]))))
        return panels

    notes = ("Colours are cluster ids; they match ground-truth classes only after Hungarian matching (mIoU: under "
             "the matching over all the images shown in the table).")
    return _paged_gallery(out_dir, title, entries, columns, panels_of, notes, provenance, page_size, max_images, order)


def audit_stage(stage: str, inputs: dict[str, str], out_html: str | Path, max_images: int | None = None,
                page_size: int | None = 12) -> Path:
    """Write the audit page of one stage ("masks", "saliency", "proposals", "pseudolabels" or "predict"): every
    image of the index in its per-image table; ``max_images`` of them (None: all) in gallery pages of
    ``page_size``.

    Args:
        inputs: role → path: always ``index``; ``masks``; ``saliency``; ``proposals`` and ``saliency``; ``labels`` (and
            ``pseudolabels`` for predict, shown beside the predictions); ``truth`` (the index's ground-truth folder,
            for the instances the masks and proposals are scored against).
        out_html: the page's ``index.html``; its folder holds the panels and further pages.
    """
    from .index import read_index
    from .proposals import instance_ground_truth

    index = read_index(inputs["index"])
    images = list(zip(index.image_id.tolist(), index.name.tolist(), index.path.tolist()))
    ground_truth = {name: path for name, path in zip(index.name, index.gt_semantic) if isinstance(path, str) and path}
    instances = instance_ground_truth(index, inputs["truth"])[0] if "truth" in inputs else None
    out_dir = Path(out_html).parent
    audited = {"masks": "masks", "proposals": "proposals", "pseudolabels": "labels", "predict": "labels",
               "saliency": "saliency"}
    sidecar = sidecar_path(inputs[audited[stage]]).resolve() if stage in audited else None
    provenance = sidecar if sidecar is not None and sidecar.is_file() else None
    paging = {"page_size": page_size, "max_images": max_images}
    if stage == "saliency":
        return audit_saliency(images, inputs["saliency"], out_dir, ground_truth, provenance=provenance, **paging)
    if stage == "masks":
        return audit_masks(images, inputs["masks"], out_dir, provenance, instances, **paging)
    if stage == "proposals":
        return audit_proposals(images, inputs["proposals"], inputs["saliency"], out_dir, provenance,
                               inputs.get("rejected"), instances, **paging)
    if stage == "pseudolabels":
        return audit_label_maps(images, [("pseudo-labels", inputs["labels"])], out_dir, "Pseudo-labels", ground_truth,
                                provenance, **paging)
    if stage == "predict":
        panels = [("pseudo-labels", inputs["pseudolabels"]), ("prediction", inputs["labels"])]
        return audit_label_maps(images, panels, out_dir, "Predictions of the trained head", ground_truth, provenance,
                                **paging)
    raise ValueError(f"no audit page for stage {stage!r}")
