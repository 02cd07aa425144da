"""One image's whole trail: every stage's artifact of one image, side by side in one PNG (``unseg trail``).

A panel per artifact found under ``results/{dataset}/`` (layout: ``workflow/rules/common.smk``'s PATHS), in pipeline
order: the image and its ground truth, each saliency variant (soft map and its 0.5 threshold), each masks variant
(every mask of the image), each proposals variant (the kept proposals), each pseudo-label variant, each
self-training round's labels (rounds ≥ 2) and each prediction variant. Stages that have not run are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from unseg.core.io import decode_rle, read_image, read_json, read_label_png, read_saliency
from unseg.reports.overlays import overlay_heatmap, overlay_labels, overlay_masks


@dataclass(frozen=True)
class TrailPanel:
    """One picture of the trail: its stage, what it shows, and the (H, W, 3) uint8 picture."""

    stage: str
    caption: str
    picture: np.ndarray


def _variants(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if not path.name.startswith(".")) if folder.is_dir() else []


def _detections_of(path: Path, image_id: int) -> list[dict]:
    return [det for det in read_json(path) if int(det["image_id"]) == image_id]


def trail_panels(results: str | Path, name: str) -> list[TrailPanel]:
    """The panels of image ``name`` from the artifacts under ``results`` (``results/{dataset}``).

    Raises:
        FileNotFoundError: no index under ``results``.
        KeyError: ``name`` is not an indexed image (the message lists a few that are).
    """
    from unseg.data.index import read_index

    results = Path(results)
    index_path = results / "index" / "images.csv"
    if not index_path.is_file():
        raise FileNotFoundError(f"no index at {str(index_path)!r}: is {str(results)!r} a results/{{dataset}} folder "
                                "of a run?")
    index = read_index(index_path)
    rows = index[index["name"] == name]
    if rows.empty:
        raise KeyError(f"image {name!r} is not in {str(index_path)!r} (it has e.g. {index['name'].head(5).tolist()})")
    row = rows.iloc[0]
    image, image_id = read_image(row["path"]), int(row["image_id"])
    panels = [TrailPanel("image", f"{name} ({row['split']})", image)]
    if row["gt_semantic"]:
        truth = read_label_png(row["gt_semantic"])
        panels.append(TrailPanel("ground truth", "ground truth", overlay_labels(image, truth)))
    for variant in _variants(results / "saliency"):
        if (variant / f"{name}.png").is_file():
            soft = read_saliency(variant, name)
            panels.append(TrailPanel("saliency", f"saliency {variant.name}: soft", overlay_heatmap(image, soft)))
            panels.append(TrailPanel("saliency", f"saliency {variant.name}: > 0.5",
                                     overlay_masks(image, [soft > 0.5])))
    for stage, file_name in (("masks", "masks.json"), ("proposals", "proposals.json")):
        for variant in _variants(results / stage):
            if (variant / file_name).is_file():
                detections = sorted(_detections_of(variant / file_name, image_id), key=lambda det: det["score"])
                masks = [decode_rle(det["segmentation"]) for det in detections]
                panels.append(TrailPanel(stage, f"{stage} {variant.name}: {len(masks)}", overlay_masks(image, masks)))
    for variant in _variants(results / "pseudolabels"):
        if (variant / f"{name}.png").is_file():
            panels.append(TrailPanel("pseudolabels", f"pseudo-labels {variant.name}",
                                     overlay_labels(image, read_label_png(variant / f"{name}.png"))))
    for variant in _variants(results / "train"):
        rounds = sorted(variant.glob("round-*/labels"), key=lambda path: int(path.parent.name[6:]))
        for labels in rounds:
            previous = f"round-{int(labels.parent.name[6:]) - 1}"
            if (labels / "prediction" / f"{name}.png").is_file():  # that round's own, before the CRF or average
                panels.append(TrailPanel("train", f"train {variant.name} {previous} prediction",
                                         overlay_labels(image, read_label_png(labels / "prediction" / f"{name}.png"))))
            if (labels / f"{name}.png").is_file():
                panels.append(TrailPanel("train", f"train {variant.name} {labels.parent.name} labels",
                                         overlay_labels(image, read_label_png(labels / f"{name}.png"))))
    for variant in _variants(results / "predict"):
        if (variant / f"{name}.png").is_file():
            panels.append(TrailPanel("predict", f"predict {variant.name}",
                                     overlay_labels(image, read_label_png(variant / f"{name}.png"))))
    return panels


def render_trail(panels: list[TrailPanel], out_png: str | Path, panel_side: int = 256, columns: int = 6) -> Path:
    """Lay the panels out in rows of ``columns``, each fitted into a ``panel_side`` square with its caption below.

    Returns:
        the written PNG's path.
    """
    caption_height = 18
    rows = -(-len(panels) // columns)
    sheet = Image.new("RGB", (columns * panel_side, rows * (panel_side + caption_height)), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    for position, panel in enumerate(panels):
        picture = Image.fromarray(panel.picture)
        picture.thumbnail((panel_side, panel_side), Image.BILINEAR)
        left = (position % columns) * panel_side
        top = (position // columns) * (panel_side + caption_height)
        sheet.paste(picture, (left + (panel_side - picture.width) // 2, top + (panel_side - picture.height) // 2))
        draw.text((left + 4, top + panel_side + 3), panel.caption[: panel_side // 6], fill=(20, 20, 20))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png)
    return out_png
