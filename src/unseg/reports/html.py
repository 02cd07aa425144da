"""Self-contained HTML reports: every picture embedded as a base64 PNG, so one file opens anywhere.

* :func:`confusion_figure`, :func:`per_class_iou_figure` — matplotlib (Agg) PNG bytes.
* :func:`write_html_report` — headline numbers, tables, figures and example overlays of one evaluation.
* :func:`comparison_rows`, :func:`write_comparison` — several evaluations' headline numbers side by side.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unseg.core.io import atomic_output
from unseg.reports.markdown import format_value, is_scalar, markdown_table

__all__ = [
    "png_bytes",
    "confusion_figure",
    "per_class_iou_figure",
    "write_html_report",
    "evaluation_sections",
    "COMPARISON_METRICS",
    "comparison_rows",
    "write_comparison",
]

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;max-width:1100px;color:#222;\
padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem} \
h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
h3{font-size:1.05rem;margin-top:1.2rem} .sub{color:#666;margin-top:0}
.cards{display:flex;flex-wrap:wrap;gap:.8rem;margin:1rem 0}
.card{background:#f4f6fa;border-radius:8px;padding:.7rem 1rem;min-width:9rem}
.card .v{font-size:1.6rem;font-weight:600} .card .k{color:#555;font-size:.85rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.25rem .6rem;text-align:right} th{background:#f4f6fa}
td:first-child,th:first-child{text-align:left}
img.fig{max-width:100%;height:auto;border:1px solid #eee} \
.figs{display:flex;flex-wrap:wrap;gap:1rem;align-items:flex-start}
.figs figure{margin:0;flex:0 1 auto;max-width:100%}
.mapping{display:flex;flex-wrap:wrap;gap:.3rem .6rem;font-size:.85rem;margin:0;padding:0;list-style:none}
.mapping li{background:#f4f6fa;border-radius:4px;padding:.1rem .45rem} .note{color:#8a5a00;font-size:.85rem}
.examples{display:flex;flex-direction:column;gap:1rem}
.example figure{display:inline-block;margin:0 .4rem .4rem 0;vertical-align:top}
.example img{width:220px;height:auto;border:1px solid #ddd} figcaption{font-size:.8rem;color:#555}
.na{color:#aaa} .legend{display:flex;flex-wrap:wrap;gap:.3rem 1rem;font-size:.85rem}
.swatch i{display:inline-block;width:.9rem;height:.9rem;margin-right:.3rem;vertical-align:-2px;border:1px solid #999}
"""


def png_bytes(figure) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on build machines
    import matplotlib.pyplot as plt

    return plt


def confusion_figure(confusion: np.ndarray | Sequence[Sequence[int]], class_names: Sequence[str]) -> bytes:
    """Heat map of a (C, C) confusion (rows: predicted class after matching, columns: true class), each column
    normalised to the fraction of that true class's pixels; PNG bytes."""
    plt = _pyplot()
    confusion = np.asarray(confusion, dtype=np.float64)
    column_sums = confusion.sum(axis=0, keepdims=True)
    fractions = np.divide(confusion, column_sums, out=np.zeros_like(confusion), where=column_sums > 0)
    size = max(4.0, 0.35 * len(class_names) + 2.5)
    figure, axes = plt.subplots(figsize=(size + 1.0, size))
    image = axes.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=60, ha="right", fontsize=8)
    axes.set_yticks(ticks, class_names, fontsize=8)
    axes.set_xlabel("true class")
    axes.set_ylabel("predicted class (after matching)")
    if len(class_names) <= 12:
        for row, column in np.ndindex(fractions.shape):
            value = fractions[row, column]
            if value >= 0.005:
                axes.text(column, row, f"{100 * value:.0f}", ha="center", va="center", fontsize=7,
                          color="white" if value > 0.6 else "black")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of the true class's pixels")
    axes.set_title("Confusion matrix")
    return png_bytes(figure)


def per_class_iou_figure(per_class_iou: Mapping[str, float | None], title: str = "Per-class IoU") -> bytes:
    """Horizontal bar chart of per-class IoU in percent (undefined classes shown as 'n/a'); PNG bytes."""
    plt = _pyplot()
    names = list(per_class_iou)
    values = [per_class_iou[name] for name in names]
    figure, axes = plt.subplots(figsize=(7.0, max(2.0, 0.32 * len(names) + 1.0)))
    positions = np.arange(len(names))
    axes.barh(positions, [0.0 if v is None else v for v in values], color="#4c72b0")
    for position, value in zip(positions, values):
        axes.text(1.0 if value is None else value + 1.0, position, "n/a" if value is None else f"{value:.1f}",
                  va="center", fontsize=8)
    axes.set_yticks(positions, names, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlim(0, 105)
    axes.set_xlabel("IoU (%)")
    axes.set_title(title)
    axes.grid(axis="x", alpha=0.3)
    return png_bytes(figure)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _image_png(picture: np.ndarray, max_side: int = 320) -> bytes:
    from PIL import Image

    image = Image.fromarray(np.asarray(picture, dtype=np.uint8))
    image.thumbnail((max_side, max_side), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _cell(value: Any) -> str:
    text = format_value(value)
    return '<span class="na">n/a</span>' if text == "n/a" else html.escape(text)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _flat_table(values: Mapping[str, Any]) -> str:
    rows = [(key, value) for key, value in values.items() if is_scalar(value)]
    return _html_table(["Key", "Value"], rows) if rows else ""


def write_html_report(
    path_html: str | os.PathLike,
    title: str,
    headline: Sequence[tuple[str, Any]],
    sections: Sequence[tuple[str, str]] = (),
    figures: Sequence[tuple[str, bytes]] = (),
    examples: Sequence[tuple[str, str, Sequence[tuple[str, np.ndarray]]]] = (),
    subtitle: str = "",
    legend: Sequence[tuple[str, Sequence[int]]] = (),
) -> None:
    """Write one self-contained HTML page (atomically).

    Args:
        headline: (label, value in percent or None) shown as cards.
        sections: (heading, HTML fragment) in order — use :func:`section_html` to render metric dicts.
        figures: (caption, PNG bytes) embedded in a "Figures" section.
        examples: (heading, caption, panels) per example image; each panel is (caption, (H, W, 3) uint8).
        legend: (class name, RGB colour) swatches shown above the examples.
    """
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if subtitle:
        parts.append(f"<p class='sub'>{html.escape(subtitle)}</p>")
    cards = "".join(
        f"<div class='card'><div class='v'>{_cell(value)}</div><div class='k'>{html.escape(label)}</div></div>"
        for label, value in headline
    )
    parts.append(f"<div class='cards'>{cards}</div>")
    if figures:
        parts.append("<h2>Figures</h2><div class='figs'>")
        parts += [
            f"<figure><img class='fig' alt='{html.escape(caption)}' src='{_data_uri(png)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            for caption, png in figures
        ]
        parts.append("</div>")
    for heading, fragment in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{fragment}")
    if examples:
        parts.append("<h2>Examples</h2>")
        if legend:
            swatches = "".join(
                f"<span class='swatch'><i style='background:rgb({int(r)},{int(g)},{int(b)})'></i>"
                f"{html.escape(name)}</span>"
                for name, (r, g, b) in legend
            )
            parts.append(f"<p class='legend'>{swatches}</p>")
        parts.append("<div class='examples'>")
        for heading, caption, panels in examples:
            figures_html = "".join(
                f"<figure><img alt='{html.escape(panel_caption)}' src='{_data_uri(_image_png(picture))}'>"
                f"<figcaption>{html.escape(panel_caption)}</figcaption></figure>"
                for panel_caption, picture in panels
            )
            parts.append(f"<div class='example'><h3>{html.escape(heading)}</h3>"
                         f"<p class='sub'>{html.escape(caption)}</p>{figures_html}</div>")
        parts.append("</div>")
    parts.append("</body></html>")
    with atomic_output(path_html) as tmp:
        Path(tmp).write_text("\n".join(parts))


def section_html(values: Mapping[str, Any], table_keys: Sequence[str] = ()) -> str:
    """A metric dict as HTML: its scalars as a key/value table, then each nested flat dict as a titled table
    (``table_keys`` first), nested dicts of dicts one level deeper."""
    parts = [_flat_table(values)]
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            if all(is_scalar(item) for item in value.values()):
                parts.append(f"<h3>{html.escape(str(key))}</h3>"
                             + _html_table(["Key", "Value (%)" if "iou" in str(key) else "Value"],
                                           list(value.items())))
            else:
                parts.append(f"<h3>{html.escape(str(key))}</h3>" + section_html(value))
    return "".join(parts)


def _get(metrics: Mapping[str, Any], *keys: str) -> Any:
    return _lookup(metrics, keys)


def evaluation_sections(metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(heading, HTML table) sections of an evaluate-stage ``metrics.json``, each present when its keys are."""
    sections: list[tuple[str, str]] = []
    per_class = metrics.get("per_class_iou")
    if isinstance(per_class, Mapping) and per_class:
        columns = [("IoU", ("per_class_iou",)), ("IoU + CRF", ("crf", "per_class_iou")),
                   ("Linear probe", ("linear_probe", "per_class_iou")),
                   ("Retrieval", ("retrieval", "all classes", "per_class_iou"))]
        columns = [(label, keys) for label, keys in columns if isinstance(_lookup(metrics, keys), Mapping)]
        rows = [[name, *(_lookup(metrics, keys).get(name) for _, keys in columns)] for name in per_class]
        sections.append(("Per-class IoU (%)", _html_table(["Class", *(label for label, _ in columns)], rows)))
        mapping = metrics.get("mapping")
        if mapping is not None:
            names = list(per_class)
            items = "".join(f"<li>{cluster} → {html.escape('unmatched' if index < 0 else names[index])}</li>"
                            for cluster, index in enumerate(mapping))
            sections.append((f"Cluster to class mapping ({metrics.get('matching', '')})",
                             f"<ul class='mapping'>{items}</ul>"))

    rows, notes = [], []
    for label, key, value_key, std_key in (("K-means of frozen features", "kmeans", "miou_mean", "miou_std"),
                                           ("K-means of foreground prototypes", "kmeans_objects", "miou_mean",
                                            "miou_std"),
                                           ("Linear probe (1×1 conv)", "linear_probe", "miou_mean", "miou_std"),
                                           ("Segment retrieval, all classes", "retrieval", "miou", None),
                                           ("Dense CRF on the predictions", "crf", "miou", None)):
        entry = metrics.get(key)
        if not isinstance(entry, Mapping):
            continue
        if "skipped" in entry:
            notes.append(f"{label}: skipped, {entry['skipped']}")
            continue
        seeds = entry.get("seeds")
        rows.append([label, entry.get(value_key), entry.get(std_key) if std_key else None,
                     entry.get("pixel_accuracy_mean", entry.get("pixel_accuracy")), len(seeds) if seeds else None])
        if entry.get("warning"):
            notes.append(f"{label}: {entry['warning']}")
        if key == "retrieval":
            for subset, scores in entry.items():
                if isinstance(scores, Mapping) and subset != "all classes" and "miou" in scores:
                    rows.append(
                        [f"Segment retrieval, {subset}", scores["miou"], None, scores.get("pixel_accuracy"), None]
                    )
    if rows or notes:
        fragment = _html_table(["Evaluation", "mIoU", "mIoU std", "Pixel acc.", "Seeds"], rows) if rows else ""
        fragment += "".join(f"<p class='note'>{html.escape(note)}</p>" for note in notes)
        sections.append(("Feature evaluations and post-processing (%)", fragment))

    saliency = metrics.get("object_segmentation")
    if isinstance(saliency, Mapping):
        threshold = saliency.get("max_fbeta_threshold")
        header = ["IoU (mean over images)", "IoU (dataset)", "Pixel acc.", "max F-beta (β²=0.3)", "at threshold",
                  "Images"]
        row = [saliency.get("mean_iou"), saliency.get("dataset_iou"), saliency.get("pixel_accuracy"),
               saliency.get("max_fbeta"), None if threshold is None else f"{threshold:.2f}", saliency.get("num_images")]
        sections.append(("Object segmentation: saliency vs ground-truth foreground (%)", _html_table(header, [row])))

    instance_sets = [(label, key)
                     for label, key in (("Proposals", "proposals"), ("Predicted instances", "predicted_instances"))
                     if isinstance(metrics.get(key), Mapping)]
    if instance_sets:
        ap_keys = ["AP", "AP50", "AP75", "AR1", "AR10", "AR100", "num_detections"]
        rows = [[f"{label}, {protocol}", *(_get(metrics, key, protocol, k) for k in ap_keys)]
                for label, key in instance_sets for protocol in ("single", "multi")
                if _get(metrics, key, protocol) is not None]
        fragment = _html_table(["Detections", "AP", "AP50", "AP75", "AR@1", "AR@10", "AR@100", "Count"], rows)
        sections.append(("Class-agnostic COCO mask AP / AR (%)", fragment))
        recall_sets = [(label, metrics[key]["recall_by_instance_count"]) for label, key in instance_sets
                       if isinstance(metrics[key].get("recall_by_instance_count"), Mapping)]
        if recall_sets:
            groups = list(recall_sets[0][1]["recall"])
            counts = recall_sets[0][1].get("num_instances", {})
            rows = [[group, *(recall["recall"].get(group) for _, recall in recall_sets), counts.get(group)]
                    for group in groups]
            threshold = recall_sets[0][1].get("iou_threshold")
            sections.append((f"Recall by number of same-class instances in the image (mask IoU ≥ {threshold}) (%)",
                             _html_table(["Instances per image", *(label for label, _ in recall_sets),
                                          "Ground-truth instances"], rows)))
    return sections


# (column label, path of keys into metrics.json)
COMPARISON_METRICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("mIoU", ("miou",)),
    ("Pixel acc.", ("pixel_accuracy",)),
    ("mIoU + CRF", ("crf", "miou")),
    ("Linear probe mIoU", ("linear_probe", "miou_mean")),
    ("K-means mIoU", ("kmeans", "miou_mean")),
    ("K-means std", ("kmeans", "miou_std")),
    ("K-means (objects) mIoU", ("kmeans_objects", "miou_mean")),
    ("Retrieval mIoU", ("retrieval", "miou")),
    ("Saliency IoU", ("object_segmentation", "mean_iou")),
    ("Saliency max F-beta", ("object_segmentation", "max_fbeta")),
    ("Proposals AP50 (multi)", ("proposals", "multi", "AP50")),
    ("Proposals AP50 (single)", ("proposals", "single", "AP50")),
    ("Instances AP50 (multi)", ("predicted_instances", "multi", "AP50")),
    ("Instances AP (multi)", ("predicted_instances", "multi", "AP")),
)


def _lookup(metrics: Mapping[str, Any], keys: Sequence[str]) -> Any:
    value: Any = metrics
    for key in keys:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def comparison_rows(metrics_by_variant: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """One row per variant, one column per metric of :data:`COMPARISON_METRICS` that any variant has.

    Returns:
        (header: "Variant" then the metric labels, rows: variant name then values in percent or None).
    """
    columns = [(label, keys) for label, keys in COMPARISON_METRICS
               if any(_lookup(metrics, keys) is not None for metrics in metrics_by_variant.values())]
    header = ["Variant", *(label for label, _ in columns)]
    rows = [[variant, *(_lookup(metrics, keys) for _, keys in columns)]
            for variant, metrics in metrics_by_variant.items()]
    return header, rows


def write_comparison(
    metrics_by_variant: Mapping[str, Mapping[str, Any]],
    out_md: str | os.PathLike,
    out_html: str | os.PathLike,
    title: str = "Comparison of evaluations",
) -> None:
    """Write the comparison table as Markdown and as a self-contained HTML page (atomically)."""
    header, rows = comparison_rows(metrics_by_variant)
    lines = [f"# {title}", "", "All numbers in percent.", "", *markdown_table(header, rows)]
    with atomic_output(out_md) as tmp:
        Path(tmp).write_text("\n".join(lines).rstrip("\n") + "\n")
    write_html_report(out_html, title, headline=[], sections=[("All variants (percent)", _html_table(header, rows))])
