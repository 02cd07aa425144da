"""The instances variant's ``report.md`` / ``rounds.json``: the proposals and every self-training round in one
table (:func:`write_rounds_report`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from unseg.core.io import atomic_output, read_json, write_json

REPORT_KEYS = ("AP", "AP50", "AP75", "AR1", "AR10", "AR100")


def write_rounds_report(rows: Sequence[tuple[str, str | Path]], out_md: str | Path, out_json: str | Path) -> dict:
    """One table of the proposals and every round: ``rows`` are (label, metrics.json) in order, the first the
    proposals'. Writes ``out_md`` and ``out_json`` ({label: the numbers}); ratios are against the first row."""
    table: dict[str, dict] = {}
    for label, path in rows:
        metrics = read_json(path)
        entry = {key: metrics.get(key) for key in REPORT_KEYS}
        entry["single_AP50"] = (metrics.get("single") or {}).get("AP50")
        entry["num_detections"] = metrics.get("num_detections")
        entry["recall_by_instance_count"] = (metrics.get("recall_by_instance_count") or {}).get("recall")
        entry["best_object_iou"] = (metrics.get("object_iou") or {}).get("best_proposal_iou")
        table[label] = entry
    first = table[rows[0][0]]

    def number(value) -> str:
        return "–" if value is None else f"{value:.1f}"

    def ratio(value, reference) -> str:
        return "–" if value is None or not reference else f"{value / reference:.2f}×"

    groups = next((list(entry["recall_by_instance_count"]) for entry in table.values()
                   if entry["recall_by_instance_count"]), [])
    header = ["", *REPORT_KEYS, "AR100 vs proposals", "single AP50", *[f"recall n={g}" for g in groups],
              "best object IoU", "detections"]
    lines = ["# Instances: proposals and each self-training round", "",
             "Class-agnostic mask AP / AR (pycocotools, percent) of every round's detections on the proposals "
             "report's images and ground truth; recall by the number of same-class instances in the image (IoU ≥ "
             "0.5).", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, entry in table.items():
        recall = entry["recall_by_instance_count"] or {}
        cells = [label, *[number(entry[key]) for key in REPORT_KEYS], ratio(entry["AR100"], first["AR100"]),
                 number(entry["single_AP50"]), *[number(recall.get(g)) for g in groups],
                 number(entry["best_object_iou"]), str(entry["num_detections"])]
        lines.append("| " + " | ".join(cells) + " |")
    write_json(out_json, table)
    with atomic_output(out_md) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return table
