"""Tests for unseg.reports.html: figures, the self-contained page and the comparison table."""

from __future__ import annotations

import base64
import re

import numpy as np

from unseg.reports.html import (
    comparison_rows,
    confusion_figure,
    evaluation_sections,
    per_class_iou_figure,
    write_comparison,
    write_html_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_figures_are_png():
    assert confusion_figure([[5, 1], [0, 4]], ["bg", "cat"]).startswith(PNG_MAGIC)
    assert per_class_iou_figure({"bg": 90.0, "cat": None}).startswith(PNG_MAGIC)


def test_html_report_is_self_contained(tmp_path):
    picture = np.zeros((20, 30, 3), np.uint8)
    picture[:, :15] = (255, 0, 0)
    out = tmp_path / "report.html"
    write_html_report(out, "T <1>", headline=[("mIoU", 51.25), ("AP", None)],
                      sections=[("Numbers", "<p>x</p>")], figures=[("bars", per_class_iou_figure({"a": 1.0}))],
                      examples=[("best: img", "mIoU 99", [("image", picture)])], legend=[("cat", (128, 0, 0))])
    text = out.read_text()
    assert "T &lt;1&gt;" in text and "51.2" in text and "n/a" in text
    sources = re.findall(r"src='([^']*)'", text)
    assert len(sources) == 2 and all(source.startswith("data:image/png;base64,") for source in sources)
    assert base64.b64decode(sources[0].split(",", 1)[1]).startswith(PNG_MAGIC)
    assert "rgb(128,0,0)" in text
    assert not re.search(r"(src|href)=['\"](?!data:)", text)  # nothing outside the file


def test_evaluation_sections_merge_per_class_columns_and_note_skips():
    metrics = {
        "per_class_iou": {"bg": 90.0, "cat": 10.0}, "mapping": [1, 0, -1], "matching": "hungarian",
        "crf": {"skipped": "no pydensecrf"},
        "linear_probe": {"miou_mean": 70.0, "miou_std": 1.5, "pixel_accuracy_mean": 80.0, "seeds": [0, 1],
                         "per_class_iou": {"bg": 95.0, "cat": 45.0}},
        "proposals": {"single": {"AP": 1.0, "AP50": 2.0}, "multi": {"AP": 3.0, "AP50": 4.0}},
    }
    sections = dict(evaluation_sections(metrics))
    per_class = sections["Per-class IoU (%)"]
    assert "<th>Linear probe</th>" in per_class and "<td>cat</td><td>10.0</td><td>45.0</td>" in per_class
    assert "<li>0 → cat</li><li>1 → bg</li><li>2 → unmatched</li>" in sections["Cluster to class mapping (hungarian)"]
    features = sections["Feature evaluations and post-processing (%)"]
    assert "70.0" in features and "1.5" in features and "skipped, no pydensecrf" in features
    assert "<td>Proposals, multi</td><td>3.0</td><td>4.0</td>" in sections["Class-agnostic COCO mask AP / AR (%)"]


def test_comparison_rows_and_files(tmp_path):
    metrics = {
        "a": {"miou": 50.0, "pixel_accuracy": 90.0, "proposals": {"multi": {"AP50": 30.0}}},
        "b": {"miou": 60.0, "pixel_accuracy": 91.0, "kmeans": {"miou_mean": 20.0, "miou_std": 2.0}},
    }
    header, rows = comparison_rows(metrics)
    assert header == ["Variant", "mIoU", "Pixel acc.", "K-means mIoU", "K-means std", "Proposals AP50 (multi)"]
    assert rows == [["a", 50.0, 90.0, None, None, 30.0], ["b", 60.0, 91.0, 20.0, 2.0, None]]
    write_comparison(metrics, tmp_path / "c.md", tmp_path / "c.html")
    markdown = (tmp_path / "c.md").read_text()
    assert "| a | 50.0 | 90.0 | n/a | n/a | 30.0 |" in markdown
    assert "<td>b</td><td>60.0</td>" in (tmp_path / "c.html").read_text()
