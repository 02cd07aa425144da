"""Markdown reports of metrics dicts: headline table, per-class tables, generic sections (numbers to 1 decimal)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unseg.core.io import atomic_output

HEADLINE_LABELS = {
    "miou": "mIoU",
    "pixel_accuracy": "Pixel accuracy",
    "mean_iou": "Foreground IoU (mean over images)",
    "dataset_iou": "Foreground IoU (dataset)",
    "max_fbeta": "max F-beta",
    "miou_mean": "mIoU (mean over seeds)",
    "miou_std": "mIoU (std over seeds)",
    "pixel_accuracy_mean": "Pixel accuracy (mean over seeds)",
    "AP": "AP",
    "AP50": "AP50",
    "AP75": "AP75",
    "AR1": "AR@1",
    "AR10": "AR@10",
    "AR100": "AR@100",
}


_KNOWN_KEYS = set(HEADLINE_LABELS) | {
    "title",
    "per_class_iou",
    "confusion",
    "unmatched_pixels",
    "mapping",
    "matching",
    "num_images",
    "num_labelled_pixels",
    "num_detections",
    "max_fbeta_threshold",
    "single",
    "multi",
    "recall_by_instance_count",
    "per_image_miou",
}


def format_value(value: Any) -> str:
    """A metric value as report text: numbers to 1 decimal, None / NaN as "n/a"."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "n/a" if math.isnan(value) else f"{float(value):.1f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Lines of a Markdown table (numbers to 1 decimal, None as "n/a"), followed by a blank line."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(format_value(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, bool, int, float, np.integer, np.floating))


def _render_section(title: str, value: Any, level: int = 2) -> list[str]:
    """A generic section: a key/value table for a flat dict, nested headings for nested dicts."""
    lines = [f"{'#' * level} {title}", ""]
    if isinstance(value, Mapping):
        scalars = [(key, item) for key, item in value.items() if is_scalar(item)]
        if scalars:
            lines += markdown_table(["Key", "Value"], scalars)
        for key, item in value.items():
            if isinstance(item, Mapping) and all(is_scalar(v) for v in item.values()):
                lines += [f"{'#' * (level + 1)} {key}", ""] + markdown_table(["Key", "Value"], list(item.items()))
    elif is_scalar(value):
        lines += [format_value(value), ""]
    else:
        lines += [f"`{value}`", ""]
    return lines


def _render_metrics(metrics: Mapping[str, Any], level: int = 2) -> list[str]:
    """Markdown lines for one metrics dict; section headings at ``level``."""
    h = "#" * level
    lines: list[str] = []
    details = [
        f"{label}: {format_value(metrics[key])}"
        for key, label in (("num_images", "images"), ("matching", "matching"), ("num_detections", "detections"))
        if key in metrics
    ]
    if details:
        lines += [", ".join(details), ""]

    headline = [(label, metrics[key]) for key, label in HEADLINE_LABELS.items() if key in metrics]
    headline += [
        (f"AR@{key[2:]}", metrics[key])
        for key in metrics
        if key.startswith("AR") and key[2:].isdigit() and key not in HEADLINE_LABELS
    ]
    if headline:
        lines += [f"{h} Headline", ""] + markdown_table(["Metric", "Value (%)"], headline)

    ap_sets = [name for name in ("single", "multi") if isinstance(metrics.get(name), Mapping)]
    if ap_sets:
        keys = [key for key in metrics[ap_sets[0]] if key.startswith(("AP", "AR"))]
        lines += [f"{h} Class-agnostic mask AP (single / multi detections per image)", ""]
        lines += markdown_table(["Protocol", *keys],
                                [[name, *(metrics[name].get(key) for key in keys)] for name in ap_sets])

    per_class = metrics.get("per_class_iou")
    if isinstance(per_class, Mapping) and per_class:
        lines += [f"{h} Per-class IoU", ""] + markdown_table(["Class", "IoU (%)"], list(per_class.items()))

    if "mapping" in metrics:
        names = list(per_class) if isinstance(per_class, Mapping) else []

        def class_name(index: int) -> str:
            if index < 0:
                return "unmatched"
            return names[index] if index < len(names) else f"class_{index}"

        lines += [f"{h} Class mapping", ""]
        rows = [[cluster, class_name(int(index))] for cluster, index in enumerate(metrics["mapping"])]
        lines += markdown_table(["Cluster", "Class"], rows)

    recall = metrics.get("recall_by_instance_count")
    if isinstance(recall, Mapping) and "recall" in recall:
        threshold = recall.get("iou_threshold")
        heading = f"{h} Recall by number of instances of the category in the image"
        lines += [heading + (f" (mask IoU >= {threshold:g})" if threshold is not None else ""), ""]
        counts = recall.get("num_instances", {})
        lines += markdown_table(
            ["Instances per image", "Recall (%)", "Instances"],
            [[group, value, counts.get(group)] for group, value in recall["recall"].items()],
        )

    others = {key: value for key, value in metrics.items()
              if key not in _KNOWN_KEYS and not (key.startswith("AR") and key[2:].isdigit())}
    details = [(key, value) for key, value in others.items() if is_scalar(value)]
    details += [(key, ", ".join(format_value(v) for v in value)) for key, value in others.items()
                if isinstance(value, (list, tuple)) and all(is_scalar(v) for v in value)]
    if details:
        lines += [f"{h} Details", ""] + markdown_table(["Key", "Value"], details)
    for key, value in others.items():
        if isinstance(value, Mapping):
            lines += _render_section(str(key), value, level)

    return lines


def write_report(
    metrics: Mapping[str, Any],
    path_md: str | os.PathLike,
    title: str | None = None,
    sections: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Write ``metrics`` (as returned by the functions above, possibly merged into one dict) as Markdown.

    Sections, each present only when its keys are: a headline table (mIoU, pixel accuracy, foreground IoU,
    max F-beta, AP/AR), single/multi AP table, per-class IoU table, class mapping (cluster -> class name; class
    names are taken from ``per_class_iou`` in order), recall by instance count (key
    ``recall_by_instance_count``), then any other dict entries as generic key/value sections. Numbers are given
    to 1 decimal. The file is written atomically.

    Args:
        metrics: the metrics dict.
        path_md: output Markdown path.
        title: report title (default ``metrics["title"]`` or "Evaluation report").
        sections: further titled metric dicts (e.g. "Proposals"), each rendered like ``metrics`` one heading level
            deeper.
    """
    title = title or metrics.get("title") or "Evaluation report"
    lines = [f"# {title}", ""] + _render_metrics(metrics)
    for section_title, section in (sections or {}).items():
        lines += [f"## {section_title}", ""] + _render_metrics(section, level=3)
    with atomic_output(path_md) as tmp:
        Path(tmp).write_text("\n".join(lines).rstrip("\n") + "\n")
