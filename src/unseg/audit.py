"""Audit pages: HTML galleries of overlays, so every intermediate mask can be looked at.

Each page is a folder with ``index.html`` and its PNG panels; it opens in a browser straight from disk.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Sequence

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


def per_image_table(columns: Sequence[str], rows: Sequence[tuple[str, Sequence[float | str]]],
                    shown: set[str]) -> str:
    """HTML of a sortable table with one row per image: its name (a link to its gallery row when the gallery shows
    it) and ``columns`` of values (numbers printed with one decimal, sorted numerically)."""
    head = "".join(f"<th>{html.escape(column)}</th>" for column in ["image", *columns])
    body = []
    for name, values in rows:
        label = (f"<a href='#{html.escape(name)}'>{html.escape(name)}</a>" if name in shown else html.escape(name))
        cells = "".join(f"<td data-value='{value:.6g}'>{value:.1f}</td>" if isinstance(value, (int, float))
                        else f"<td>{html.escape(str(value))}</td>" for value in values)
        body.append(f"<tr><td>{label}</td>{cells}</tr>")
    return (f"<div class='table'><table class='sortable'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>" + SORTABLE_TABLE_SCRIPT)


def write_gallery(
    out_dir: str | Path, title: str, rows: Sequence[tuple[str, Sequence[Panel]]], notes: str = "", max_side: int = 256,
    provenance: str | Path | None = None, table_html: str = "",
) -> Path:
    """Write ``out_dir/index.html`` with one row of captioned panels per image (atomically, as a folder).

    Args:
        rows: (image name, panels) per image; each panel is (caption, (H, W, 3) uint8).
        provenance: the audited artifact's provenance sidecar, linked (relative, so the page still opens from disk)
            from the page's header.
        table_html: a per-image table (:func:`per_image_table`) shown above the gallery.
    """
    with atomic_output(out_dir) as tmp:
        tmp.mkdir(parents=True)
        body = []
        for row_index, (name, panels) in enumerate(rows):
            cells = []
            for panel_index, (caption, picture) in enumerate(panels):
                file_name = f"{row_index:04d}_{panel_index:02d}.png"
                _thumbnail(picture, max_side).save(tmp / file_name)
                cells.append(f'<figure><img src="{file_name}" loading="lazy">'
                             f'<figcaption>{html.escape(caption)}</figcaption></figure>')
            body.append(f'<section id="{html.escape(name)}"><h2>{html.escape(name)}</h2>'
                        f'<div class="row">{"".join(cells)}</div></section>')
        if provenance is not None:
            link = os.path.relpath(provenance, Path(out_dir).resolve())
            notes_html = (f"<p>{html.escape(notes)}</p><p class='provenance'>What made it: <a href="
                          f"'{html.escape(link)}'>provenance</a> (in a terminal: <code>unseg provenance "
                          f"{html.escape(str(provenance))}</code>)</p>")
        else:
            notes_html = f"<p>{html.escape(notes)}</p>"
        (tmp / "index.html").write_text(
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>"
            "body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}"
            ".row{display:flex;flex-wrap:wrap;gap:8px}"
            "figure{margin:0;background:#fff;padding:4px;border:1px solid #ddd}"
            "figcaption{font-size:12px;text-align:center;max-width:256px}h2{font-size:15px;margin:1em 0 .3em}"
            "table{border-collapse:collapse;font-size:13px;margin:.5em 0 1em}td,th{border:1px solid #ddd;"
            "padding:2px 8px;text-align:right}th{cursor:pointer;background:#eee;position:sticky;top:0}"
            "div.table{max-height:320px;overflow-y:auto;display:inline-block}"
            f"</style></head><body><h1>{html.escape(title)}</h1>{notes_html}{table_html}{''.join(body)}</body></html>"
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


def audit_masks(images: Sequence[tuple[int, str, str]], masks_json: str | Path, out_dir: str | Path,
                provenance: str | Path | None = None) -> Path:
    """Masks per k (and, for deep_spectral, per eigenvector): for each image (image_id, name, path), one panel per
    clustering k with that clustering's masks, then one per eigenvector index with its sign-split masks."""
    by_image = _detections_by_image(masks_json)
    rows = []
    for image_id, name, path in images:
        image = read_image(path)
        detections = by_image.get(image_id, [])
        panels: list[Panel] = [("image", image)]
        for origin in sorted({_mask_origin(det) for det in detections}):
            chosen = [det for det in detections if _mask_origin(det) == origin]
            masks = [decode_rle(det["segmentation"]) for det in chosen]
            panels.append((f"{_origin_caption(chosen[0])}: {len(masks)} masks", overlay_masks(image, masks)))
        rows.append((name, panels))
    notes = ("Each colour is one mask (a connected component of one cluster, or of the border-rule side of one "
             "eigenvector's sign split).")
    return write_gallery(out_dir, "Spectral masks per k and per eigenvector", rows, notes, provenance=provenance)


def audit_proposals(
    images: Sequence[tuple[int, str, str]], proposals_json: str | Path, saliency_dir: str | Path, out_dir: str | Path,
    provenance: str | Path | None = None, rejected_json: str | Path | None = None,
) -> Path:
    """Saliency heat map, the surviving proposals (with scores) and, from ``rejected_json``, the masks that were
    dropped, by reason (saliency fraction, NMS, CRF), each of the first ones with its reason and numbers."""

    by_image = _detections_by_image(proposals_json)
    rejected_by_image = _detections_by_image(rejected_json) if rejected_json else {}
    rows = []
    for image_id, name, path in images:
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
        rows.append((name, panels))
    notes = ("Kept proposals, then the masks the filter dropped: 'saliency' (too little of the mask is salient), "
             "'nms' (overlaps a higher-scoring kept mask), 'crf' (CRF refinement left nothing)."
             if rejected_json else "")
    return write_gallery(out_dir, "Proposals after the saliency filter and NMS", rows, notes, provenance=provenance)


def ground_truth_foreground(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(foreground, valid) (H, W) bool masks of a ground-truth label PNG: label > 0, and not void (255)."""
    labels = read_label_png(path)
    return (labels > 0) & (labels != IGNORE_LABEL), labels != IGNORE_LABEL


def audit_saliency(
    images: Sequence[tuple[int, str, str]], saliency_dir: str | Path, out_dir: str | Path,
    ground_truth: dict[str, str] | None = None, max_images: int = 12, provenance: str | Path | None = None,
) -> Path:
    """Every image's saliency in a sortable table (foreground fraction; with ground truth, foreground IoU of
    ``> 0.5``, void left out), and a gallery of ``max_images`` of them, worst IoU first when there is ground truth:
    the image, the soft map, its foreground (> 0.5), the ground truth, and a trained head's teacher map when the
    variant keeps one (``extras/teacher/``)."""
    ground_truth = ground_truth or {}
    teacher_dir = Path(saliency_dir) / "extras" / "teacher"
    scored = []
    for position, (image_id, name, path) in enumerate(images):
        soft = read_saliency(saliency_dir, name)
        values: dict[str, float] = {"foreground %": 100 * float((soft > 0.5).mean())}
        if ground_truth.get(name):
            truth, valid = ground_truth_foreground(ground_truth[name])
            predicted = (soft > 0.5) & valid
            union = (predicted | truth).sum()
            values["IoU"] = 100 * float((predicted & truth).sum() / union) if union else 100.0
        scored.append((values.get("IoU", position), name, path, values))
    if any("IoU" in values for *_, values in scored):
        scored.sort(key=lambda item: item[0])  # worst first
    shown = scored[:max_images]
    rows = []
    for _, name, path, values in shown:
        image = read_image(path)
        soft = read_saliency(saliency_dir, name)
        panels: list[Panel] = [("image", image), ("soft map", overlay_heatmap(image, soft)),
                               ("foreground (> 0.5)" + (f", IoU {values['IoU']:.1f}" if "IoU" in values else ""),
                                overlay_masks(image, [soft > 0.5]))]
        if ground_truth.get(name):
            panels.append(("ground truth", overlay_masks(image, [ground_truth_foreground(ground_truth[name])[0]])))
        if (teacher_dir / f"{name}.png").is_file():
            panels.append(("teacher (> 0.5)", overlay_masks(image, [read_saliency(teacher_dir, name) > 0.5])))
        rows.append((name, panels))
    columns = ["IoU", "foreground %"] if any("IoU" in values for *_, values in scored) else ["foreground %"]
    table = per_image_table(columns, [(name, [values.get(column, "") for column in columns])
                                      for _, name, _, values in scored], {name for _, name, _, _ in shown})
    order = "worst foreground IoU first" if "IoU" in columns else "in index order"
    notes = (f"{len(scored)} images in the table (click a header to sort); the gallery shows {len(shown)}, {order}. "
             "Foreground is the stored map > 0.5.")
    return write_gallery(out_dir, "Saliency maps", rows, notes, provenance=provenance, table_html=table)


def audit_label_maps(
    images: Sequence[tuple[int, str, str]],
    label_dirs: Sequence[tuple[str, str | Path]],
    out_dir: str | Path,
    title: str,
    ground_truth: dict[str, str] | None = None,
    provenance: str | Path | None = None,
) -> Path:
    """Label maps (pseudo-labels, predictions) beside the ground truth when known.

    Args:
        label_dirs: (caption, folder holding ``{name}.png``) per panel.
        ground_truth: image name → ground-truth label PNG.
    """
    rows = []
    for _, name, path in images:
        image = read_image(path)
        panels: list[Panel] = [("image", image)]
        for caption, folder in label_dirs:
            panels.append((caption, overlay_labels(image, read_label_png(Path(folder) / f"{name}.png"))))
        if ground_truth and ground_truth.get(name):
            panels.append(("ground truth", overlay_labels(image, read_label_png(ground_truth[name]))))
        rows.append((name, panels))
    return write_gallery(out_dir, title, rows,
                         "Colours are cluster ids; they match ground-truth classes only after Hungarian matching.",
                         provenance=provenance)


def audit_stage(stage: str, inputs: dict[str, str], out_html: str | Path, max_images: int = 12) -> Path:
    """Write the audit page of one stage ("masks", "saliency", "proposals", "pseudolabels" or "predict").

    Args:
        inputs: role → path: always ``index``; ``masks``; ``saliency``; ``proposals`` and ``saliency``; ``labels`` (and
            ``pseudolabels`` for predict, shown beside the predictions).
        out_html: the page's ``index.html``; its folder holds the panels.
    """
    from .index import read_index

    full_index = read_index(inputs["index"])
    index = full_index.head(max_images)
    images = list(zip(index.image_id.tolist(), index.name.tolist(), index.path.tolist()))
    ground_truth = {name: path for name, path in zip(full_index.name, full_index.gt_semantic)
                    if isinstance(path, str) and path}
    out_dir = Path(out_html).parent
    audited = {"masks": "masks", "proposals": "proposals", "pseudolabels": "labels", "predict": "labels",
               "saliency": "saliency"}
    sidecar = sidecar_path(inputs[audited[stage]]).resolve() if stage in audited else None
    provenance = sidecar if sidecar is not None and sidecar.is_file() else None
    if stage == "saliency":  # every image is scored; the gallery shows the worst max_images
        every_image = list(zip(full_index.image_id.tolist(), full_index.name.tolist(), full_index.path.tolist()))
        return audit_saliency(every_image, inputs["saliency"], out_dir, ground_truth, max_images, provenance)
    if stage == "masks":
        return audit_masks(images, inputs["masks"], out_dir, provenance)
    if stage == "proposals":
        return audit_proposals(images, inputs["proposals"], inputs["saliency"], out_dir, provenance,
                               inputs.get("rejected"))
    if stage == "pseudolabels":
        return audit_label_maps(images, [("pseudo-labels", inputs["labels"])], out_dir, "Pseudo-labels", ground_truth,
                                provenance)
    if stage == "predict":
        panels = [("pseudo-labels", inputs["pseudolabels"]), ("prediction", inputs["labels"])]
        return audit_label_maps(images, panels, out_dir, "Predictions of the trained head", ground_truth, provenance)
    raise ValueError(f"no audit page for stage {stage!r}")
