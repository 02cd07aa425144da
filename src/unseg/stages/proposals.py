"""The proposals stage: masks kept by the saliency filter and NMS, and the proposals report.

Artifacts:
- proposals: a COCO results list like masks (:mod:`unseg.stages.masks`), after the saliency filter and NMS, each with
  ``salient_fraction`` (fraction of the mask's pixels where the soft saliency > 0.5); score = salient_fraction ×
  max(coherence, 0) (or × area fraction: ``score: salient_area``), so masks that are salient and coherent rank
  first; with ``unsalient_weight`` > 0 the masks the filter would drop are kept, scored that weight × coherence
  (or area fraction), marked ``"salient": false``; ``k``, ``cluster``, ``component`` and ``eigen_index`` are
  carried over from the mask. With ``components`` (a saliency variant), each connected component of that map's
  foreground joins them (:func:`saliency_components`, ``"source": "saliency_component"``), beside the masks. With
  ``votes`` (more masks variants), the masks of all of them are voted first (:func:`voted_detections`, CuVLER's
  VoteCut; ``score: salient_votes`` ranks by the votes) and the vote replaces NMS.
- proposals report: :func:`evaluate_proposals` (class-agnostic AP/AR, recall by instance count, object IoU).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from unseg.core.io import (
    IGNORE_LABEL,
    decode_rle,
    encode_rle,
    read_image,
    read_json,
    read_label_png,
    read_saliency,
    write_json,
)
from unseg.data.index import coco_ground_truth, index_split, read_classes, read_index
from unseg.data.index import names_by_id as index_names_by_id
from unseg.ops.vote import VOTE_AGREEMENT, VOTE_IOU, rle_ious, vote_masks

if TYPE_CHECKING:
    import pandas as pd


def mask_nms(detections: list[dict], iou_threshold: float) -> list[dict]:
    """Greedy non-maximum suppression by mask IoU, within one image.

    Args:
        detections: dicts with RLE ``segmentation`` and ``score``.

    Returns:
        the kept detections, highest score first; a mask is dropped when its IoU with a kept one exceeds the
        threshold.
    """
    return mask_nms_explained(detections, iou_threshold)[0]


def mask_nms_explained(detections: list[dict], iou_threshold: float
                       ) -> tuple[list[dict], list[tuple[dict, dict, float]]]:
    """:func:`mask_nms`, and for each suppressed detection the kept one that suppressed it (the first, by score,
    whose IoU exceeds the threshold) and that IoU: (kept, [(suppressed, suppressor, iou), ...])."""
    ordered = sorted(detections, key=lambda det: -det["score"])
    if iou_threshold >= 1.0:  # no IoU exceeds 1: nothing to suppress, so no pairwise IoU (the vote's case)
        return ordered, []
    ious = rle_ious([det["segmentation"] for det in ordered])
    kept: list[int] = []
    suppressed: list[tuple[dict, dict, float]] = []
    for index in range(len(ordered)):
        by = next((other for other in kept if ious[index, other] > iou_threshold), None)
        if by is None:
            kept.append(index)
        else:
            suppressed.append((ordered[index], ordered[by], float(ious[index, by])))
    return [ordered[index] for index in kept], suppressed


PROPOSAL_SCORES = ("salient_coherence", "salient_area", "salient_votes")


def filter_proposals(
    detections: list[dict], saliency: np.ndarray, min_salient_fraction: float = 0.5, nms_iou: float = 0.5,
    score: str = "salient_coherence", unsalient_weight: float = 0.0,
) -> list[dict]:
    """Keep one image's masks that are mostly salient, rescore them, and deduplicate by NMS.

    Args:
        detections: that image's masks (COCO results dicts).
        saliency: (H0, W0) float soft foreground; a pixel is salient when > 0.5.
        score: ``salient_coherence``: salient fraction × max(coherence, 0) (the mask's own score);
            ``salient_area``: salient fraction × the mask's area fraction of the image (Engstler et al.'s
            re-implementation); ``salient_votes``: salient fraction × (the voted mask's ``votes`` + its area
            fraction), i.e. by votes (CuVLER's cluster size), ties by area (:func:`voted_detections`).
        unsalient_weight: 0 drops a mask below ``min_salient_fraction``; > 0 keeps it (``"salient": false``) scored
            this weight × its coherence or area fraction (the salient fraction left out: it is near 0 for exactly
            the objects the saliency map missed), so recall can rise while salient masks mostly rank first.
    """
    return filter_proposals_explained(detections, saliency, min_salient_fraction, nms_iou, score,
                                      unsalient_weight)[0]


def _origin(det: dict) -> str:
    return ", ".join(f"{key} {det[key]}" for key in ("k", "cluster", "component", "eigen_index") if key in det)


def filter_proposals_explained(
    detections: list[dict], saliency: np.ndarray, min_salient_fraction: float = 0.5, nms_iou: float = 0.5,
    score: str = "salient_coherence", unsalient_weight: float = 0.0,
) -> tuple[list[dict], list[dict]]:
    """:func:`filter_proposals`, and the masks it dropped, each with why: ``rejected`` (``"saliency"`` or
    ``"nms"``), ``reason`` (a sentence with the numbers), its ``salient_fraction``, and for NMS ``suppressed_by``
    (score, origin and IoU of the kept mask that won)."""
    if score not in PROPOSAL_SCORES:
        raise ValueError(f"proposals score {score!r}: one of {PROPOSAL_SCORES}")
    salient = saliency > 0.5
    candidates, rejected = [], []
    for det in detections:
        pixels = decode_rle(det["segmentation"])
        fraction = float(salient[pixels].mean()) if pixels.any() else 0.0
        if score == "salient_coherence":
            quality = max(det["score"], 0.0)
        elif score == "salient_votes":
            if "votes" not in det:
                raise ValueError("proposals score salient_votes ranks voted masks: name the masks variants to vote "
                                 "with in the proposals variant's 'votes'")
            quality = det["votes"] + float(pixels.mean())
        else:
            quality = float(pixels.mean())
        if fraction >= min_salient_fraction:
            candidates.append({**det, "salient_fraction": round(fraction, 6), "score": round(fraction * quality, 6)})
        elif unsalient_weight > 0:
            candidates.append({**det, "salient_fraction": round(fraction, 6), "salient": False,
                               "score": round(unsalient_weight * quality, 6)})
        else:
            rejected.append({**det, "salient_fraction": round(fraction, 6), "rejected": "saliency",
                             "reason": f"salient fraction {fraction:.2f} < {min_salient_fraction:g}"})
    kept, suppressed = mask_nms_explained(candidates, nms_iou)
    for det, by, iou in suppressed:
        rejected.append({**det, "rejected": "nms",
                         "reason": f"IoU {iou:.2f} > {nms_iou:g} with a kept mask of score {by['score']:.2f} "
                                   f"({_origin(by)})",
                         "suppressed_by": {"score": by["score"], "iou": round(iou, 6),
                                           **{key: by[key] for key in ("k", "cluster", "component", "eigen_index")
                                              if key in by}}})
    return kept, rejected


def voted_detections(detections: Sequence[dict], image_id: int, iou_threshold: float = VOTE_IOU,
                     agreement: float = VOTE_AGREEMENT) -> list[dict]:
    """One image's masks from several masks variants, voted (:func:`unseg.ops.vote.vote_masks`, CuVLER's VoteCut).

    Args:
        detections: COCO results dicts of one image, each with ``variant`` (the masks variant it comes from).

    Returns:
        COCO results dicts (``category_id`` 1), most votes first, each with ``votes`` (its cluster's size: the
        score), ``vote_variants`` ({masks variant: members from it}) and ``"source": "vote"``; the masks they merge
        stay in their masks artifacts, named by ``vote_variants``.
    """
    if not detections:
        return []
    masks = np.stack([decode_rle(det["segmentation"]) for det in detections])
    voted = []
    for mask, members in vote_masks(masks, rle_ious([det["segmentation"] for det in detections]), iou_threshold,
                                    agreement):
        variants = dict(Counter(detections[member]["variant"] for member in members))
        voted.append({"image_id": int(image_id), "category_id": 1, "segmentation": encode_rle(mask),
                      "area": int(mask.sum()), "score": float(len(members)), "votes": len(members),
                      "vote_variants": variants, "source": "vote"})
    return voted


SALIENCY_COMPONENT = "saliency_component"
# A saliency component's score is COMPONENT_WEIGHT x its mean saliency; smaller ones than COMPONENT_MIN_AREA of the
# image are left out (docs/benchmarks.md: weights 0.3-0.5 give the same AP50 and AR, 0.7-1 cost the demo's AP50).
COMPONENT_WEIGHT = 0.5
COMPONENT_MIN_AREA = 0.01


def saliency_components(saliency: np.ndarray, image_id: int, min_area_fraction: float = COMPONENT_MIN_AREA,
                        weight: float = COMPONENT_WEIGHT) -> list[dict]:
    """Candidate proposals from a saliency map: each 8-connected component of its foreground (> 0.5) covering at
    least ``min_area_fraction`` of the image, scored ``weight`` × its mean soft saliency.

    A sharp saliency map (a foreground head refined by a dense CRF) outlines whole objects more closely than the
    spectral masks cut on the token grid, but merges objects that touch; the weight (0.5) ranks the
    components below most salient masks, so a merged pair costs little precision, and they do not take part in the
    masks' NMS (each is one more candidate; AR counts the best one per object).

    Args:
        saliency: (H0, W0) float soft foreground in [0, 1].

    Returns:
        COCO results dicts (``category_id`` 1) with ``component`` (its index), ``salient_fraction`` 1.0 and
        ``"source": "saliency_component"``, in component order.
    """
    labelled, count = ndimage.label(saliency > 0.5, structure=np.ones((3, 3), dtype=bool))
    if not count:
        return []
    areas = np.bincount(labelled.ravel(), minlength=count + 1)
    sums = np.bincount(labelled.ravel(), weights=saliency.ravel(), minlength=count + 1)
    found = []
    for component in range(1, count + 1):
        if areas[component] < min_area_fraction * saliency.size:
            continue
        mask = labelled == component
        found.append({"image_id": int(image_id), "category_id": 1, "segmentation": encode_rle(mask),
                      "area": int(areas[component]), "score": round(weight * sums[component] / areas[component], 6),
                      "salient_fraction": 1.0, "component": component, "source": SALIENCY_COMPONENT})
    return found


def refine_mask_with_crf(image: np.ndarray, mask: np.ndarray, confidence: float = 0.8) -> np.ndarray:
    """Snap a mask to image edges with a dense CRF (two labels: outside / inside).

    Args:
        image: (H, W, 3) uint8.
        mask: (H, W) bool.
        confidence: probability the unary term gives to the mask's own label at each pixel.

    Returns:
        (H, W) bool refined mask.
    """
    from unseg.ops.crf import dense_crf_labels, labels_to_probabilities

    return dense_crf_labels(image, labels_to_probabilities(mask.astype(np.int64), 2, confidence)) == 1


def run_proposals(
    masks_json: str | Path,
    saliency_dir: str | Path,
    index_csv: str | Path,
    out_json: str | Path,
    settings: Mapping[str, Any],
    progress: bool = True,
    out_rejected: str | Path | None = None,
    components_dir: str | Path | None = None,
    votes: Mapping[str, str | Path] | None = None,
) -> int:
    """Saliency filter + NMS over all images' masks → COCO results JSON. Returns the proposal count.

    ``out_rejected``: the masks that were dropped, as COCO results each with ``rejected`` (``saliency``, ``nms``
    or ``crf``: the CRF emptied it), ``reason`` and its numbers (:func:`filter_proposals_explained`), for the audit.

    Args:
        index_csv: the dataset index (image ids, names and paths).
        settings: the proposals variant: ``min_salient_fraction``, ``nms_iou`` (see :func:`filter_proposals`) and
            ``crf``: refine each kept proposal with :func:`refine_mask_with_crf` (needs pydensecrf); refined
            proposals carry ``"crf": true``, their score is kept, empty results are dropped.
        components_dir: a saliency folder whose foreground's components join the kept masks
            (:func:`saliency_components`; None: none do). With ``settings["components_only"]`` they are the only
            proposals: the masks the filter kept are rejected too (``"rejected": "components_only"``).
    """
    index = read_index(index_csv)
    names_by_id = index_names_by_id(index)
    image_paths = dict(zip(index["name"], index["path"]))
    min_salient_fraction, nms_iou, crf = settings["min_salient_fraction"], settings["nms_iou"], settings["crf"]
    score, unsalient_weight = settings.get("score", "salient_coherence"), settings.get("unsalient_weight", 0.0)
    if crf and not image_paths:
        raise ValueError("CRF refinement of proposals needs the image paths")
    components_only = bool(settings.get("components_only", False))
    if components_only and components_dir is None:
        raise ValueError("proposals components_only: the proposals would be empty without 'components' (a saliency "
                         "variant whose foreground's pieces are the proposals)")
    if score == "salient_votes" and not votes:
        raise ValueError("proposals score salient_votes ranks voted masks: name the masks variants to vote with in "
                         "the proposals variant's 'votes'")
    sources = {settings.get("masks", "masks"): masks_json, **(votes or {})}
    by_image: dict[int, list[dict]] = {}
    for variant, path in sources.items():
        for det in read_json(path):
            by_image.setdefault(int(det["image_id"]), []).append({**det, "variant": variant} if votes else det)
    if votes:
        nms_iou = 1.0  # the vote's clusters are the deduplication
    proposals, dropped = [], []
    for image_id, detections in tqdm(sorted(by_image.items()), desc="proposals", unit="img", disable=not progress):
        name = names_by_id[image_id]
        if votes:
            detections = voted_detections(detections, image_id, settings.get("vote_iou", VOTE_IOU),
                                          settings.get("vote_agreement", VOTE_AGREEMENT))
        kept, rejected = filter_proposals_explained(detections, read_saliency(saliency_dir, name),
                                                    min_salient_fraction, nms_iou, score, unsalient_weight)
        if components_only:
            rejected += [{**det, "rejected": "components_only",
                          "reason": "components_only: only the saliency components are proposals"} for det in kept]
            kept = []
        if components_dir is not None:
            kept += saliency_components(read_saliency(components_dir, name), image_id)
        if crf:
            image = read_image(image_paths[name])
            refined = []
            for det in kept:
                mask = refine_mask_with_crf(image, decode_rle(det["segmentation"]))
                if mask.any():
                    refined.append({**det, "segmentation": encode_rle(mask), "area": int(mask.sum()), "crf": True})
                else:
                    rejected.append({**det, "rejected": "crf", "reason": "the dense CRF left no pixel"})
            kept = refined
        proposals.extend(kept)
        dropped.extend(rejected)
    write_json(out_json, proposals, indent=None)
    if out_rejected is not None:
        write_json(out_rejected, dropped, indent=None)
    return len(proposals)


# ----------------------------------------------------------------------------------------------------------------
# Evaluation of proposals: class-agnostic AP / AR, recall by instance count, object IoU of proposals and saliency.


def semantic_component_instances(
    semantic: np.ndarray, min_area: int = 100
) -> list[tuple[int, np.ndarray]]:
    """Approximate instances of a class label map: the 8-connected components of each class's pixels.

    VOC draws a void (255) outline around every object, so touching objects of one class usually fall apart into
    separate components; objects split by an occluder become several instances, and objects that still touch
    merge — an approximation of SegmentationObject, used when a dataset ships no instance PNGs.

    Args:
        semantic: (H, W) uint8 labels, 0 background, 255 void.
        min_area: components with fewer pixels are dropped (specks of void-cut objects).

    Returns:
        (category, (H, W) bool mask) per instance, by category then component order.
    """
    instances = []
    for category in np.unique(semantic):
        if category in (0, IGNORE_LABEL):
            continue
        labelled, count = ndimage.label(semantic == category, structure=np.ones((3, 3), dtype=bool))
        for index in range(1, count + 1):
            component = labelled == index
            if component.sum() >= min_area:
                instances.append((int(category), component))
    return instances


def semantic_components_ground_truth(rows: "pd.DataFrame", min_area: int = 100) -> dict:
    """COCO instance ground truth from the SegmentationClass PNGs of index rows (see
    :func:`semantic_component_instances`); rows (an index DataFrame) without a class PNG are left out."""
    images, annotations, max_label = [], [], 0
    for row in rows.sort_values("image_id").itertuples(index=False):
        if not row.gt_semantic:
            continue
        semantic = read_label_png(row.gt_semantic)
        images.append({"id": int(row.image_id), "file_name": row.path, "height": semantic.shape[0],
                       "width": semantic.shape[1]})
        for category, mask in semantic_component_instances(semantic, min_area):
            max_label = max(max_label, category)
            annotations.append({"id": len(annotations) + 1, "image_id": int(row.image_id), "category_id": category,
                                "segmentation": encode_rle(mask), "area": int(mask.sum()), "iscrowd": 0})
    categories = [{"id": label, "name": f"class_{label}"} for label in range(1, max_label + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}


def instance_ground_truth(rows: "pd.DataFrame", truth_dir: str | Path,
                          min_instance_area: int = 100) -> tuple[dict | None, str]:
    """The instance ground truth proposals are scored against, and where it comes from: the index stage's
    ``instances.json`` (:func:`unseg.data.index.coco_ground_truth`); without it, for a dataset with a background class,
    connected components of each class (:func:`semantic_components_ground_truth`, an approximation said so in the
    source); else None."""
    # Without a background class (COCO-Stuff, Cityscapes) every pixel is some class: the connected components of
    # classes (sky, road) do not say what an object is.
    ground_truth = coco_ground_truth(rows, truth_dir)
    if ground_truth is not None:
        return ground_truth, "instance annotations"
    if read_classes(truth_dir)["has_background"] and (rows["gt_semantic"] != "").any():
        return semantic_components_ground_truth(rows, min_instance_area), (
            f"approximate: 8-connected components (>= {min_instance_area} px) of each class in "
            "SegmentationClass (no instance PNGs)")
    return None, ""


def object_proposal_scores(
    proposals: Sequence[dict], saliency: np.ndarray, foreground: np.ndarray
) -> dict[str, float]:
    """Object IoU (percent) of one image's proposals and saliency against its (H, W) bool foreground.

    Returns:
        ``best_proposal_iou`` (the proposal with the highest IoU: an oracle pick, the recall side),
        ``top_proposal_iou`` (the highest-scoring proposal), ``proposal_union_iou`` (the union of all proposals),
        ``saliency_iou`` (saliency > 0.5); an image without proposals scores 0 on the proposal entries.
    """

    def iou(mask: np.ndarray) -> float:
        union = np.count_nonzero(mask | foreground)
        return 100.0 * np.count_nonzero(mask & foreground) / union if union else 100.0

    masks = [decode_rle(det["segmentation"]) for det in proposals]
    ordered = sorted(range(len(masks)), key=lambda index: -proposals[index]["score"])
    return {
        "best_proposal_iou": max((iou(mask) for mask in masks), default=0.0),
        "top_proposal_iou": iou(masks[ordered[0]]) if masks else 0.0,
        "proposal_union_iou": iou(np.logical_or.reduce(masks)) if masks else 0.0,
        "saliency_iou": iou(saliency > 0.5),
    }


def evaluate_proposals(
    index_csv: str | Path,
    truth_dir: str | Path,
    proposals_json: str | Path,
    saliency_dir: str | Path,
    out_metrics: str | Path,
    out_report: str | Path,
    split: str = "all",
    foreground_masks: Mapping[str, str] | None = None,
    min_instance_area: int = 100,
    provenance: Mapping | None = None,
    title: str | None = None,
) -> dict:
    """Score the proposals of one variant (or any COCO results: an instances round's detections); write
    ``metrics.json`` and ``report.md`` (headed ``title``, default "Proposals").

    * instances (when the dataset has them): class-agnostic mask AP/AR@{1,10,100} (pycocotools; MaskDistill's
      single = top proposal per image, multi = all) and recall by the number of same-class instances in the image
      (mask IoU >= 0.5; 1..5, 6+). Ground truth: the index stage's ``ground_truth/instances.json``
      (:func:`unseg.data.index.coco_ground_truth`, in ``truth_dir``); without it, connected components of each class in
      SegmentationClass (:func:`semantic_component_instances`, an approximation, said so in the report).
    * objects (when foreground is known: ``foreground_masks`` name → mask PNG (non-zero = object), else class
      PNG labels 1..254): mean over images of :func:`object_proposal_scores`, and saliency scores
      (:func:`unseg.stages.evaluate.object_segmentation_scores`, with max F-beta on the soft map).

    Args:
        split: index split to score ("all" for every image).
    """
    from unseg.evaluation.instance_metrics import recall_by_instance_count, single_and_multi_ap
    from unseg.evaluation.metrics import object_segmentation_scores
    from unseg.reports.markdown import write_report

    rows = index_split(read_index(index_csv), split)
    image_ids = {int(image_id) for image_id in rows["image_id"]}
    proposals = [det for det in read_json(proposals_json) if int(det["image_id"]) in image_ids]
    metrics: dict = {"title": f"{title or 'Proposals'} on split '{split}' ({len(rows)} images)",
                     "num_images": len(rows), "num_detections": len(proposals)}
    has_background = read_classes(truth_dir)["has_background"]  # without one, no pixel is "the object"
    ground_truth, source = instance_ground_truth(rows, truth_dir, min_instance_area)
    if ground_truth is not None and ground_truth["annotations"]:
        annotated = {image["id"] for image in ground_truth["images"]}
        scored = [det for det in proposals if det["image_id"] in annotated]
        metrics.update(single_and_multi_ap(ground_truth, scored))
        metrics.update({key: value for key, value in metrics["multi"].items() if key.startswith(("AP", "AR"))})
        metrics["recall_by_instance_count"] = recall_by_instance_count(ground_truth, scored)
        metrics["instance_ground_truth"] = {"source": source, "num_instances": len(ground_truth["annotations"]),
                                            "num_images": len(ground_truth["images"])}

    by_image: dict[int, list[dict]] = {}
    for det in proposals:
        by_image.setdefault(int(det["image_id"]), []).append(det)
    per_image, saliency_maps, foregrounds = [], [], []
    for row in rows.itertuples(index=False):
        if foreground_masks is not None and row.name in foreground_masks:
            foreground = read_label_png(foreground_masks[row.name]) > 0
        elif foreground_masks is None and row.gt_semantic and has_background:
            labels = read_label_png(row.gt_semantic)
            foreground = (labels > 0) & (labels != IGNORE_LABEL)
        else:
            continue
        saliency = read_saliency(saliency_dir, row.name)
        if saliency.shape != foreground.shape:
            raise ValueError(f"saliency of {row.name!r} has shape {saliency.shape}, its mask {foreground.shape}")
        per_image.append(object_proposal_scores(by_image.get(int(row.image_id), []), saliency, foreground))
        saliency_maps.append(saliency)
        foregrounds.append(foreground)
    if per_image:
        metrics["object_iou"] = {key: float(np.mean([scores[key] for scores in per_image])) for key in per_image[0]}
        metrics["object_iou"]["num_images"] = len(per_image)
        saliency_scores = object_segmentation_scores([s > 0.5 for s in saliency_maps], foregrounds, saliency_maps)
        metrics["saliency"] = {key: value for key, value in saliency_scores.items()}
    if provenance is not None:
        metrics["provenance"] = dict(provenance)
    write_json(out_metrics, metrics)
    report_metrics = {key: value for key, value in metrics.items() if key != "provenance"}
    write_report(report_metrics, out_report)
    return metrics
