"""Audit pages: HTML galleries of overlays, so every intermediate mask can be looked at.

Each page is a folder with ``index.html`` and its PNG panels; it opens in a browser straight from disk.

Why one module of ~550 lines: one view per stage (masks, proposals, instances, saliency, label maps), each a short
function of the same shape, and the entry points that pick one by stage; the page machinery is
:mod:`unseg.reports.gallery`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unseg.core.io import (
    IGNORE_LABEL,
    decode_rle,
    read_image,
    read_json,
    read_label_png,
    read_saliency,
    segmentation_rle,
)
from unseg.core.provenance import sidecar_path
from unseg.reports.gallery import Panel, gallery_links, per_image_table, write_gallery
from unseg.reports.overlays import overlay_heatmap, overlay_labels, overlay_masks


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
    if det.get("source") == "saliency_component":
        return f"saliency component {det['component']}"
    if det.get("source") == "vote":  # a voted mask (unseg.stages.proposals.voted_detections)
        return f"{det['votes']} votes: " + ", ".join(f"{name} ×{count}" for name, count in det["vote_variants"].items())
    kind, value = _mask_origin(det)
    return f"eigenvector {value}" if kind else f"k={value}"


def instance_overlaps(detections: Sequence[dict], annotations: Sequence[dict]) -> dict[str, float]:
    """How well detections (masks, proposals) cover an image's ground-truth instances: ``best-overlap IoU`` (mean
    over the non-crowd instances of the best mask IoU any detection reaches, %) and ``recall@0.5`` (% of instances
    with a detection of IoU >= 0.5). Empty when the image has no such instance."""
    from pycocotools import mask as mask_utils

    instances = [item for item in annotations if not item.get("iscrowd")]
    if not instances:
        return {}
    if detections:  # COCO's own annotations are polygons: drawn at the size of the image's masks
        height, width = detections[0]["segmentation"]["size"]
        truths = [segmentation_rle(item["segmentation"], height, width) for item in instances]
        ious = np.asarray(mask_utils.iou([segmentation_rle(det["segmentation"], height, width) for det in detections],
                                         truths,
                                         [0] * len(truths))).reshape(len(detections), len(truths))
        best = ious.max(axis=0)
    else:
        best = np.zeros(len(instances))
    return {"best-overlap IoU": 100 * float(best.mean()), "recall@0.5": 100 * float((best >= 0.5).mean())}


def _annotations_by_image(ground_truth: Mapping | None) -> dict[int, list[dict]]:
    by_image: dict[int, list[dict]] = {}
    for annotation in (ground_truth or {}).get("annotations", []):
        by_image.setdefault(int(annotation["image_id"]), []).append(annotation)
    return by_image


Entry = tuple[int, str, str, dict]  # (image_id, name, path, per-image values)


@dataclass
class StageView:
    """What a gallery shows of one stage's artifact: per-image values (name → {column: number}), the columns in
    table order, the columns to order by (worst = lowest first, the first one any image has), and the panels of
    one image (``panels(image_id, name, picture)``, the picture itself not among them)."""

    values: dict[str, dict[str, float]]
    columns: list[str]
    order_by: list[str]
    panels: Callable[[int, str, np.ndarray], list[Panel]]


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


def _stage_gallery(images: Sequence[tuple[int, str, str]], view: StageView, out_dir: str | Path, title: str,
                   notes: str, provenance: str | Path | None, page_size: int | None, max_images: int | None) -> Path:
    entries = [(image_id, name, path, view.values.get(name, {})) for image_id, name, path in images]
    entries, order = _worst_first(entries, view.order_by)
    columns = [column for column in view.columns if any(column in values for *_, values in entries)]

    def panels_of(image_id, name, path, values) -> list[Panel]:
        image = read_image(path)
        return [("image", image), *view.panels(image_id, name, image)]

    return _paged_gallery(out_dir, title, entries, columns, panels_of, notes, provenance, page_size, max_images,
                          order)


def masks_view(images: Sequence[tuple[int, str, str]], masks_json: str | Path,
               ground_truth: Mapping | None = None) -> StageView:
    """Masks per k (and per eigenvector): the mask count and, with ``ground_truth`` (COCO instances keyed by
    image_id), the coverage of the image's instances (:func:`instance_overlaps`)."""
    by_image = _detections_by_image(masks_json)
    truth_by_image = _annotations_by_image(ground_truth)
    values = {name: {"masks": float(len(by_image.get(image_id, []))),
                     **instance_overlaps(by_image.get(image_id, []), truth_by_image.get(image_id, []))}
              for image_id, name, _ in images}

    def panels(image_id: int, name: str, image: np.ndarray) -> list[Panel]:
        detections = by_image.get(image_id, [])
        shown: list[Panel] = []
        for origin in sorted({_mask_origin(det) for det in detections}):
            chosen = [det for det in detections if _mask_origin(det) == origin]
            masks = [decode_rle(det["segmentation"]) for det in chosen]
            shown.append((f"{_origin_caption(chosen[0])}: {len(masks)} masks", overlay_masks(image, masks)))
        return shown

    return StageView(values, ["best-overlap IoU", "recall@0.5", "masks"], ["best-overlap IoU", "masks"], panels)


def audit_masks(images: Sequence[tuple[int, str, str]], masks_json: str | Path, out_dir: str | Path,
                provenance: str | Path | None = None, ground_truth: Mapping | None = None,
                page_size: int | None = None, max_images: int | None = None) -> Path:
    """Masks per k (and, for deep_spectral, per eigenvector): for each image (image_id, name, path), one panel per
    clustering k with that clustering's masks, then one per eigenvector index with its sign-split masks; the
    worst-covered images first (:func:`masks_view`), else the fewest masks first."""
    return _stage_gallery(images, masks_view(images, masks_json, ground_truth), out_dir, _TITLES["masks"],
                          _NOTES["masks"], provenance, page_size, max_images)


def proposals_view(images: Sequence[tuple[int, str, str]], proposals_json: str | Path, saliency_dir: str | Path,
                   rejected_json: str | Path | None = None, ground_truth: Mapping | None = None) -> StageView:
    """Proposals: kept and dropped counts, the top score and, with ``ground_truth``, the kept proposals' coverage
    of the instances (:func:`instance_overlaps`); panels: saliency, the kept proposals, the best four, what was
    dropped by reason and the first dropped masks with why."""
    by_image = _detections_by_image(proposals_json)
    rejected_by_image = _detections_by_image(rejected_json) if rejected_json else {}
    truth_by_image = _annotations_by_image(ground_truth)
    values = {}
    for image_id, name, _ in images:
        detections = by_image.get(image_id, [])
        values[name] = {"proposals": float(len(detections)),
                        "dropped": float(len(rejected_by_image.get(image_id, []))),
                        "top score": max((float(det["score"]) for det in detections), default=0.0),
                        **instance_overlaps(detections, truth_by_image.get(image_id, []))}

    def panels(image_id: int, name: str, image: np.ndarray) -> list[Panel]:
        detections = sorted(by_image.get(image_id, []), key=lambda det: -det["score"])
        soft = read_saliency(saliency_dir, name)
        shown: list[Panel] = [("saliency", overlay_heatmap(image, soft))]
        shown.append((f"{len(detections)} proposals",
                      overlay_masks(image, [decode_rle(d["segmentation"]) for d in detections[::-1]])))
        for det in detections[:4]:
            shown.append((f"score {det['score']:.2f} ({_origin_caption(det)}, "
                          f"salient {det.get('salient_fraction', 0):.2f})",
                          overlay_masks(image, [decode_rle(det["segmentation"])])))
        rejected = rejected_by_image.get(image_id, [])
        for reason in ("saliency", "nms", "crf", "components_only"):
            dropped = [det for det in rejected if det["rejected"] == reason]
            if dropped:
                shown.append((f"dropped by {reason}: {len(dropped)}",
                              overlay_masks(image, [decode_rle(d["segmentation"]) for d in dropped])))
        for det in sorted(rejected, key=lambda det: -det["score"])[:3]:
            shown.append((f"dropped ({_origin_caption(det)}, score {det['score']:.2f}): {det['reason']}",
                          overlay_masks(image, [decode_rle(det["segmentation"])])))
        return shown

    return StageView(values, ["recall@0.5", "best-overlap IoU", "proposals", "dropped", "top score"],
                     ["recall@0.5", "top score"], panels)


def audit_proposals(
    images: Sequence[tuple[int, str, str]], proposals_json: str | Path, saliency_dir: str | Path, out_dir: str | Path,
    provenance: str | Path | None = None, rejected_json: str | Path | None = None,
    ground_truth: Mapping | None = None, page_size: int | None = None, max_images: int | None = None,
) -> Path:
    """Saliency heat map, the surviving proposals (with scores) and, from ``rejected_json``, the masks that were
    dropped, by reason (saliency fraction, NMS, CRF), each of the first ones with its reason and numbers; the lowest
    recall first (:func:`proposals_view`), else the weakest top score."""
    view = proposals_view(images, proposals_json, saliency_dir, rejected_json, ground_truth)
    return _stage_gallery(images, view, out_dir, _TITLES["proposals"], _NOTES["proposals"] if rejected_json else "",
                          provenance, page_size, max_images)


def instances_view(images: Sequence[tuple[int, str, str]], proposals_json: str | Path,
                   rounds: Sequence[tuple[str, str | Path]], ground_truth: Mapping | None = None,
                   shown_score: float = 0.5) -> StageView:
    """An instance segmenter's rounds beside the proposals round 1 trained on: per image, each one's coverage of
    the ground-truth instances (:func:`instance_overlaps`, every detection counted, as AR@100 counts them) and
    its count of detections scoring at least ``shown_score``; panels: the proposals, then per round the detections
    scoring at least ``shown_score`` and the round's best three with their scores (model × coherence).

    Args:
        rounds: (label, instances.json) per round, in order.
    """
    sources = [("proposals", _detections_by_image(proposals_json))]
    sources += [(label, _detections_by_image(path)) for label, path in rounds]
    truth_by_image = _annotations_by_image(ground_truth)
    values = {}
    for image_id, name, _ in images:
        entry = {}
        for label, by_image in sources:
            detections = by_image.get(image_id, [])
            overlaps = instance_overlaps(detections, truth_by_image.get(image_id, []))
            entry.update({f"{label} {key}": value for key, value in overlaps.items()})
            entry[f"{label} ≥ {shown_score:g}"] = float(sum(det["score"] >= shown_score for det in detections))
        values[name] = entry

    def panels(image_id: int, name: str, image: np.ndarray) -> list[Panel]:
        shown: list[Panel] = []
        for position, (label, by_image) in enumerate(sources):
            detections = sorted(by_image.get(image_id, []), key=lambda det: -det["score"])
            confident = [det for det in detections if det["score"] >= shown_score] if position else detections
            caption = f"{label}: {len(confident)}" + (f" scoring ≥ {shown_score:g}" if position else "")
            shown.append((caption, overlay_masks(image, [decode_rle(det["segmentation"]) for det in confident[::-1]])))
            if position:
                for det in detections[:3]:
                    coherence = f", coherence {det['coherence']:.2f}" if "coherence" in det else ""
                    shown.append((f"{label} score {det['score']:.2f}{coherence}",
                                  overlay_masks(image, [decode_rle(det["segmentation"])])))
        return shown

    labels = [label for label, _ in sources]
    columns = [f"{label} {key}" for label in labels for key in ("recall@0.5", "best-overlap IoU")]
    columns += [f"{label} ≥ {shown_score:g}" for label in labels]
    last = labels[-1]
    return StageView(values, columns, [f"{last} recall@0.5", f"{last} ≥ {shown_score:g}"], panels)


def ground_truth_foreground(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(foreground, valid) (H, W) bool masks of a ground-truth label PNG: label > 0, and not void (255)."""
    labels = read_label_png(path)
    return (labels > 0) & (labels != IGNORE_LABEL), labels != IGNORE_LABEL


def saliency_view(images: Sequence[tuple[int, str, str]], saliency_dir: str | Path,
                  ground_truth: Mapping[str, str] | None = None) -> StageView:
    """Saliency: foreground % and, with ground truth, foreground IoU of ``> 0.5`` (void left out); panels: the soft
    map, its foreground, the ground truth, and a trained head's teacher map when the variant keeps one
    (``extras/teacher/``)."""
    ground_truth = ground_truth or {}
    teacher_dir = Path(saliency_dir) / "extras" / "teacher"
    values = {}
    for _, name, _ in images:
        soft = read_saliency(saliency_dir, name)
        values[name] = {"foreground %": 100 * float((soft > 0.5).mean())}
        if ground_truth.get(name):
            truth, valid = ground_truth_foreground(ground_truth[name])
            predicted = (soft > 0.5) & valid
            union = (predicted | truth).sum()
            values[name]["IoU"] = 100 * float((predicted & truth).sum() / union) if union else 100.0

    def panels(image_id: int, name: str, image: np.ndarray) -> list[Panel]:
        soft = read_saliency(saliency_dir, name)
        iou = values[name].get("IoU")
        shown: list[Panel] = [("soft map", overlay_heatmap(image, soft)),
                              ("foreground (> 0.5)" + (f", IoU {iou:.1f}" if iou is not None else ""),
                               overlay_masks(image, [soft > 0.5]))]
        if ground_truth.get(name):
            shown.append(("ground truth", overlay_masks(image, [ground_truth_foreground(ground_truth[name])[0]])))
        if (teacher_dir / f"{name}.png").is_file():
            shown.append(("teacher (> 0.5)", overlay_masks(image, [read_saliency(teacher_dir, name) > 0.5])))
        return shown

    return StageView(values, ["IoU", "foreground %"], ["IoU"], panels)


def audit_saliency(
    images: Sequence[tuple[int, str, str]], saliency_dir: str | Path, out_dir: str | Path,
    ground_truth: dict[str, str] | None = None, max_images: int | None = 12, provenance: str | Path | None = None,
    page_size: int | None = None,
) -> Path:
    """Every image's saliency in a sortable table (:func:`saliency_view`), and a gallery of ``max_images`` of them
    (None: all), worst foreground IoU first when there is ground truth."""
    return _stage_gallery(images, saliency_view(images, saliency_dir, ground_truth), out_dir, _TITLES["saliency"],
                          _NOTES["saliency"], provenance, page_size, max_images)


def _max_label(path: str | Path) -> int:
    labels = read_label_png(path)
    labels = labels[labels != IGNORE_LABEL]
    return int(labels.max()) if labels.size else 0


def per_image_miou(label_dir: str | Path, ground_truth: Mapping[str, str]) -> dict[str, float]:
    """name → mIoU (%) of ``label_dir/{name}.png`` against its ground truth, under the Hungarian matching of the
    clusters to the classes over all those images (:func:`unseg.evaluation.metrics.evaluate_semantic`, as the evaluate
    stage
    scores a split); images without a labelled pixel are left out."""
    from unseg.evaluation.metrics import evaluate_semantic

    names = [name for name in ground_truth if (Path(label_dir) / f"{name}.png").is_file()]
    if not names:
        return {}
    predictions = [Path(label_dir) / f"{name}.png" for name in names]
    truths = [ground_truth[name] for name in names]
    num_predicted = max(_max_label(path) for path in predictions) + 1
    num_classes = max(_max_label(path) for path in truths) + 1
    scores = evaluate_semantic(predictions, truths, num_predicted, num_classes)["per_image_miou"]
    return {name: value for name, value in scores.items() if value is not None}


def concept_map_panels(image: np.ndarray, soft: np.ndarray, labels: np.ndarray, count: int = 2) -> list[Panel]:
    """The soft maps behind a label map (TransFGU's Grad-CAM concept maps, or a bootstrapped round's M̂): the
    ``count`` classes painted on most pixels, each as a heat map over the image (bilinear from the token grid).

    Args:
        soft: (C, h, w) class scores, channel 0 the background.
        labels: (H, W) the label map they gave.
    """
    import torch

    painted = np.bincount(labels[labels != IGNORE_LABEL].ravel(), minlength=len(soft))[1:len(soft)]
    shown = []
    for label in (np.argsort(-painted, kind="stable")[:count] + 1).tolist():
        if not painted[label - 1]:
            break
        heat = torch.nn.functional.interpolate(torch.from_numpy(soft[label].astype(np.float32))[None, None],
                                               size=image.shape[:2], mode="bilinear", align_corners=False)[0, 0]
        shown.append((f"class {label} score map", overlay_heatmap(image, heat.clamp(0, 1).numpy())))
    return shown


def label_maps_view(images: Sequence[tuple[int, str, str]], label_dirs: Sequence[tuple[str, str | Path]],
                    ground_truth: Mapping[str, str] | None = None) -> StageView:
    """Label maps (pseudo-labels, predictions): with ground truth, each one's per-image mIoU
    (:func:`per_image_miou`), ordered by the last one's (the predictions beside their pseudo-labels); panels: each
    label map, then the ground truth.

    Args:
        label_dirs: (caption, folder holding ``{name}.png``) per panel.
        ground_truth: image name → ground-truth label PNG.
    """
    ground_truth = {name: path for name, path in (ground_truth or {}).items() if path}
    scores = {caption: per_image_miou(folder, ground_truth) for caption, folder in label_dirs} if ground_truth else {}
    columns = [f"mIoU {caption}" for caption, _ in label_dirs]
    values = {name: {f"mIoU {caption}": scores[caption][name] for caption, _ in label_dirs
                     if name in scores.get(caption, {})} for _, name, _ in images}

    with_soft = next((folder for _, folder in label_dirs if (Path(folder) / "soft").is_dir()), None)

    def panels(image_id: int, name: str, image: np.ndarray) -> list[Panel]:
        shown: list[Panel] = []
        for caption, folder in label_dirs:
            if not (Path(folder) / f"{name}.png").is_file():  # e.g. a support image: clustered, never painted
                continue
            score = values[name].get(f"mIoU {caption}")
            labels = read_label_png(Path(folder) / f"{name}.png")
            shown.append((caption + (f", mIoU {score:.1f}" if score is not None else ""),
                          overlay_labels(image, labels)))
            if folder == with_soft and (Path(folder) / "soft" / f"{name}.npy").is_file():
                shown += concept_map_panels(image, np.load(Path(folder) / "soft" / f"{name}.npy"), labels)
        if ground_truth.get(name):
            shown.append(("ground truth", overlay_labels(image, read_label_png(ground_truth[name]))))
        return shown

    return StageView(values, columns, columns[::-1], panels)


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
    """Label maps (pseudo-labels, predictions) beside the ground truth when known, the worst first
    (:func:`label_maps_view`)."""
    return _stage_gallery(images, label_maps_view(images, label_dirs, ground_truth), out_dir, title,
                          _NOTES["pseudolabels"], provenance, page_size, max_images)


def audit_side_by_side(images: Sequence[tuple[int, str, str]], views: Sequence[tuple[str, StageView]],
                       out_dir: str | Path, title: str, page_size: int | None = None,
                       max_images: int | None = None) -> Path:
    """Two (or more) variants of one stage on the same images: each image's row holds every variant's panels (their
    captions prefixed with the variant), the table every variant's numbers and the difference of the first
    ordering metric they share (last variant − first), the images where the variants differ most first."""
    first, last = views[0][1], views[-1][1]
    key = next((column for column in first.order_by
                if any(column in values for values in first.values.values())), None)
    columns = [f"{variant}: {column}" for variant, view in views for column in view.columns
               if any(column in values for values in view.values.values())]
    entries = []
    for image_id, name, path in images:
        values = {f"{variant}: {column}": value for variant, view in views
                  for column, value in view.values.get(name, {}).items()}
        if key is not None and key in first.values.get(name, {}) and key in last.values.get(name, {}):
            values[f"Δ {key}"] = last.values[name][key] - first.values[name][key]
        entries.append((image_id, name, path, values))
    if key is not None:
        columns.append(f"Δ {key}")
        entries.sort(key=lambda entry: -abs(entry[3].get(f"Δ {key}", 0.0)))
        order = f"largest |Δ {key}| first"
    else:
        order = "in index order"

    def panels_of(image_id, name, path, values) -> list[Panel]:
        image = read_image(path)
        return [("image", image), *((f"{variant}: {caption}", picture) for variant, view in views
                                    for caption, picture in view.panels(image_id, name, image))]

    notes = f"Variants {', '.join(variant for variant, _ in views)} of the same stage on the same images."
    return _paged_gallery(out_dir, title, entries, columns, panels_of, notes, None, page_size, max_images, order)


_TITLES = {"masks": "Spectral masks per k and per eigenvector", "saliency": "Saliency maps",
           "proposals": "Proposals after the saliency filter and NMS", "pseudolabels": "Pseudo-labels",
           "predict": "Predictions of the trained head",
           "instances": "Instance segmenter: the proposals, then each self-training round's detections"}
_NOTES = {
    "masks": ("Each colour is one mask (a connected component of one cluster, or of the border-rule side of one "
              "eigenvector's sign split)."),
    "saliency": "Foreground is the stored map > 0.5.",
    "proposals": ("Kept proposals, then the masks the filter dropped: 'saliency' (too little of the mask is "
                  "salient), 'nms' (overlaps a higher-scoring kept mask), 'crf' (CRF refinement left nothing)."),
    "pseudolabels": ("Colours are cluster ids; they match ground-truth classes only after Hungarian matching (mIoU: "
                     "under the matching over all the images shown in the table)."),
}
_NOTES["predict"] = _NOTES["pseudolabels"]
_NOTES["instances"] = ("Round 1 trained on the proposals, round r on round r-1's confident detections and the "
                       "proposals they do not cover. Recall and best-overlap IoU count every detection of a round "
                       "(as AR@100 does); the panels show those scoring at least 0.5.")
# The artifact whose provenance a stage's page links, by its role in the inputs.
_AUDITED = {"masks": "masks", "proposals": "proposals", "pseudolabels": "labels", "predict": "labels",
            "saliency": "saliency", "instances": "instances"}


def stage_view(stage: str, images: Sequence[tuple[int, str, str]], roles: Mapping[str, str],
               ground_truth: Mapping[str, str], instances: Mapping | None) -> StageView:
    """The view of one variant of ``stage`` ("masks", "saliency", "proposals", "pseudolabels" or "predict") from
    its artifacts by role (see :func:`audit_stage`)."""
    if stage == "saliency":
        return saliency_view(images, roles["saliency"], ground_truth)
    if stage == "masks":
        return masks_view(images, roles["masks"], instances)
    if stage == "proposals":
        return proposals_view(images, roles["proposals"], roles["saliency"], roles.get("rejected"), instances)
    if stage == "pseudolabels":
        return label_maps_view(images, [("pseudo-labels", roles["labels"])], ground_truth)
    if stage == "predict":  # each round's predictions and what the next trained on, then the last round's prediction
        from unseg.training.data import PREDICTION_FOLDER

        rounds = roles.get("rounds") or []
        rounds = [rounds] if isinstance(rounds, str) else list(rounds)
        label_dirs = [("pseudo-labels", roles["pseudolabels"])]
        for index, folder in enumerate(rounds, start=2):
            if (Path(folder) / PREDICTION_FOLDER).is_dir():  # round index-1's own, before the CRF or the average
                label_dirs.append((f"round {index - 1} prediction", Path(folder) / PREDICTION_FOLDER))
            label_dirs.append((f"round {index} labels", folder))
        label_dirs.append(("prediction", roles["labels"]))
        return label_maps_view(images, label_dirs, ground_truth)
    if stage == "instances":  # the proposals, then every round's detections (the last is roles["instances"])
        rounds = roles.get("rounds") or [roles["instances"]]
        rounds = [rounds] if isinstance(rounds, str) else list(rounds)
        return instances_view(images, roles["proposals"],
                              [(f"round {index}", path) for index, path in enumerate(rounds, start=1)], instances)
    raise ValueError(f"no audit page for stage {stage!r} (stages: {sorted(_TITLES)})")


def _audit_inputs(inputs: Mapping[str, str], stage: str):
    from unseg.data.index import read_index
    from unseg.stages.proposals import instance_ground_truth

    index = read_index(inputs["index"])
    images = list(zip(index.image_id.tolist(), index.name.tolist(), index.path.tolist()))
    ground_truth = {name: path for name, path in zip(index.name, index.gt_semantic) if isinstance(path, str) and path}
    # only masks and proposals are scored against instances (their fallback reads every class PNG)
    scored = stage in ("masks", "proposals", "instances") and "truth" in inputs
    instances = instance_ground_truth(index, inputs["truth"])[0] if scored else None
    return images, ground_truth, instances


def audit_stage(stage: str, inputs: dict[str, str], out_html: str | Path, max_images: int | None = None,
                page_size: int | None = 12) -> Path:
    """Write the audit page of one stage ("masks", "saliency", "proposals", "pseudolabels" or "predict"): every
    image of the index in its per-image table; ``max_images`` of them (None: all) in gallery pages of
    ``page_size``, the worst first by the stage's per-image metric.

    Args:
        inputs: role → path: always ``index``; ``masks``; ``saliency``; ``proposals``, ``rejected`` and ``saliency``;
            ``labels`` (and, for predict, ``pseudolabels`` and ``rounds``, the label folders of rounds 2, 3, ...,
            shown before the predictions); ``truth`` (the index's
            ground-truth folder, for the instances the masks and proposals are scored against).
        out_html: the page's ``index.html``; its folder holds the panels and further pages.
    """
    images, ground_truth, instances = _audit_inputs(inputs, stage)
    view = stage_view(stage, images, inputs, ground_truth, instances)
    sidecar = sidecar_path(inputs[_AUDITED[stage]]).resolve()
    provenance = sidecar if sidecar.is_file() else None
    notes = _NOTES[stage] if stage != "proposals" or inputs.get("rejected") else ""
    return _stage_gallery(images, view, Path(out_html).parent, _TITLES[stage], notes, provenance, page_size,
                          max_images)


def audit_comparison(stage: str, variants: Sequence[str], inputs: Mapping[str, str], out_html: str | Path,
                     max_images: int | None = None, page_size: int | None = 12) -> Path:
    """The side-by-side page of ``variants`` of ``stage`` (:func:`audit_side_by_side`).

    Args:
        inputs: ``index``, ``truth`` and, for the i-th variant, its roles as in :func:`audit_stage` under the keys
            ``v{i}_{role}`` (e.g. ``v0_saliency``, ``v1_saliency``).
    """
    images, ground_truth, instances = _audit_inputs(inputs, stage)
    views = []
    for position, variant in enumerate(variants):
        prefix = f"v{position}_"
        roles = {key[len(prefix):]: path for key, path in inputs.items() if key.startswith(prefix)}
        views.append((variant, stage_view(stage, images, roles, ground_truth, instances)))
    return audit_side_by_side(images, views, Path(out_html).parent,
                              f"{_TITLES[stage]}: {' vs '.join(variants)}", page_size, max_images)
