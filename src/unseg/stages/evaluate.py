"""The evaluate stage: the predictions and proposals of one pipeline branch against the dataset's ground truth.

Semantic and object metrics come from :mod:`unseg.evaluation.metrics`, instance metrics from
:mod:`unseg.evaluation.instance_metrics`,
the feature evaluations from :mod:`unseg.evaluation.probe`; this module runs them on one index split and writes
``metrics.json``, ``report.md`` (:mod:`unseg.reports.markdown`) and ``report.html`` (:mod:`unseg.reports.html`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unseg.core.io import IGNORE_LABEL, read_json, read_label_png, read_saliency, write_json
from unseg.evaluation.instance_metrics import recall_by_instance_count, single_and_multi_ap
from unseg.evaluation.metrics import (
    evaluate_semantic,
    evaluate_semantic_arrays,
    object_segmentation_scores,
)
from unseg.reports.markdown import HEADLINE_LABELS, write_report

# The evaluate stage: predictions and proposals of one pipeline branch against the dataset's ground truth.


def run_evaluation(
    index_csv: str | os.PathLike,
    truth_dir: str | os.PathLike,
    predictions_dir: str | os.PathLike,
    proposals_json: str | os.PathLike | None,
    out_metrics: str | os.PathLike,
    out_report: str | os.PathLike,
    settings: Mapping[str, Any],
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    provenance: Mapping[str, Any] | None = None,
    out_html: str | os.PathLike | None = None,
    saliency_dir: str | os.PathLike | None = None,
    features_store: str | os.PathLike | None = None,
    training_labels: Mapping[str, str | os.PathLike] | None = None,
) -> dict[str, Any]:
    """Evaluate one branch on an index split; write ``metrics.json``, ``report.md`` and optionally ``report.html``.

    - semantic: predicted label PNGs (``predictions_dir/{name}.png``) vs SegmentationClass PNGs, matched over the
      whole split (background is class 0 and is matched like any class); per-image mIoU under that matching;
    - ``crf`` (option): the same after dense-CRF refinement of the predictions (key ``crf``; skipped with a note
      when pydensecrf is missing);
    - instances: class-agnostic mask AP/AR (single and multi) and recall by number of same-class instances, for the
      proposals and for the predicted instances (``predictions_dir/instances.json``), when instance ground truth
      exists;
    - ``saliency_dir``: the branch's saliency maps vs ground-truth foreground (label > 0, void ignored): key
      ``object_segmentation`` (foreground IoU, accuracy, max F-beta; hard masks at soft >= 0.5);
    - ``training_labels`` (label → folder of PNGs): what the branch's model was trained on (the pseudo-labels, each
      self-training round's refined labels), scored like the predictions (key ``training_labels``), so a report
      shows whether the trained model beats its own inputs;
    - ``features_store`` with options ``kmeans``, ``linear_probe``, ``retrieval``: the feature evaluations of
      :mod:`unseg.evaluation.probe` on the option ``facet`` (the probe and retrieval train on / retrieve from the
      option's
      ``train_split`` / ``reference_split``, evaluate on ``split``).

    Args:
        truth_dir: the index stage's ``ground_truth`` folder: ``classes.json`` (class names, whether class 0 is a
            background) and ``instances.json`` (:func:`unseg.data.index.coco_ground_truth`).
        num_classes: object classes without background; default: from ``classes.json``, else the largest
            ground-truth label.
        class_names: names of the object classes (background is prepended); default: from ``classes.json``.
        settings: the evaluate variant as the config schema completes it: ``split``, ``matching``, ``crf``,
            ``facet``, ``num_examples`` and, when present, ``kmeans``, ``linear_probe``, ``retrieval``.
    """
    import hashlib
    import json

    from unseg.data.index import coco_ground_truth, index_split, read_classes, read_index

    options = settings
    split, matching = settings["split"], settings["matching"]
    index = read_index(index_csv)
    rows = index_split(index, split)
    metrics: dict[str, Any] = {"title": f"Evaluation on split '{split}' ({len(rows)} images)", "split": split}
    labelled = rows[rows["gt_semantic"] != ""].reset_index(drop=True)
    names: list[str] = []
    if len(labelled):
        pred_paths = [Path(predictions_dir) / f"{name}.png" for name in labelled["name"]]
        missing = [str(path) for path in pred_paths if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"no prediction for {len(missing)} images, first {missing[0]!r}")
        num_predicted = max(_max_label(path) for path in pred_paths) + 1
        classes = read_classes(truth_dir)
        known = classes["names"] if not class_names else None  # every class id's name, background (or not) first
        if num_classes is None:
            num_classes = len(known) - 1 if known else max(_max_label(path) for path in labelled["gt_semantic"])
        if known and len(known) == num_classes + 1:
            names = list(known)
        else:
            names = ["background", *(class_names or [f"class_{i}" for i in range(1, num_classes + 1)])]
        metrics.update(
            evaluate_semantic(
                pred_paths, labelled["gt_semantic"].tolist(), num_predicted, num_classes + 1, matching, names
            )
        )
        if training_labels:
            metrics["training_labels"] = _training_label_scores(labelled, training_labels, num_classes + 1, matching,
                                                                names)
        if options["crf"]:
            metrics["crf"] = _crf_scores(labelled, pred_paths, num_predicted, num_classes + 1, matching, names)
        if saliency_dir is not None and classes["has_background"]:
            metrics["object_segmentation"] = _saliency_scores(labelled, saliency_dir)
        if features_store is not None:
            metrics.update(
                _feature_evaluations(index, labelled, pred_paths, features_store, num_classes + 1, names, options,
                                     saliency_dir)
            )
    ground_truth = coco_ground_truth(rows, truth_dir)
    if ground_truth is not None and ground_truth["annotations"]:
        image_ids = {int(image_id) for image_id in rows["image_id"]}
        for key, path in (
            ("predicted_instances", Path(predictions_dir) / "instances.json"),
            ("proposals", proposals_json),
        ):
            if path is None:  # a branch whose pseudo-labels came from no proposals (transfgu)
                continue
            detections = [det for det in read_json(path) if int(det["image_id"]) in image_ids]
            metrics[key] = {
                **single_and_multi_ap(ground_truth, detections),
                "recall_by_instance_count": recall_by_instance_count(ground_truth, detections),
            }
    metrics["provenance"] = dict(provenance or {})
    metrics["config_digest"] = hashlib.sha256(
        json.dumps(provenance or {}, sort_keys=True, default=str).encode()
    ).hexdigest()[:16]
    write_json(out_metrics, metrics)

    section_titles = {
        "crf": "After dense-CRF post-processing",
        "object_segmentation": "Object segmentation: saliency vs ground-truth foreground",
        "training_labels": "What the model was trained on (same matching)",
        "kmeans": "K-means of frozen features (Hungarian, mean over seeds)",
        "kmeans_objects": "K-means of per-image foreground prototypes (MaskContrast's protocol)",
        "linear_probe": "Linear probe on frozen features",
        "retrieval": "Segment retrieval",
        "proposals": "Proposals (class-agnostic)",
        "predicted_instances": "Predicted instances (class-agnostic)",
    }
    hidden = ("provenance", "confusion", "per_image_miou", *section_titles)
    report = {key: value for key, value in metrics.items() if key not in hidden}
    sections = {title: metrics[key] for key, title in section_titles.items() if key in metrics}
    write_report(report, out_report, sections=sections)
    if out_html is not None:
        _write_evaluation_html(metrics, out_html, labelled, predictions_dir, int(options["num_examples"]))
    return metrics


def _training_label_scores(labelled, folders: Mapping[str, str | os.PathLike], num_classes: int, matching: str,
                           names) -> dict[str, Any]:
    """mIoU and pixel accuracy of each training-label folder on the labelled images: {label: {miou, ...}}."""
    scores = {}
    for label, folder in folders.items():
        paths = [Path(folder) / f"{name}.png" for name in labelled["name"]]
        num_predicted = max(_max_label(path) for path in paths) + 1
        result = evaluate_semantic(paths, labelled["gt_semantic"].tolist(), num_predicted, num_classes, matching, names)
        scores[label] = {"miou": result["miou"], "pixel_accuracy": result["pixel_accuracy"]}
    return scores


def _crf_scores(labelled, pred_paths, num_predicted: int, num_classes: int, matching: str, names) -> dict[str, Any]:
    """Semantic scores of CRF-refined predictions (hard labels turned into soft probabilities first)."""
    from unseg.core.io import read_image
    from unseg.ops.crf import crf_available, dense_crf_labels, labels_to_probabilities

    if not crf_available():
        return {"skipped": "pydensecrf is not installed (pip install 'pydensecrf2==1.1')"}

    def refined():
        for pred_path, row in zip(pred_paths, labelled.itertuples()):
            prediction = read_label_png(pred_path)
            image = read_image(row.path)
            refined_labels = dense_crf_labels(image, labels_to_probabilities(prediction, num_predicted))
            yield row.name, refined_labels, read_label_png(row.gt_semantic)

    scores = evaluate_semantic_arrays(refined(), num_predicted, num_classes, matching, names)
    return {key: value for key, value in scores.items() if key not in ("confusion", "per_image_miou")}


def _saliency_scores(labelled, saliency_dir: str | os.PathLike) -> dict[str, Any]:
    """Object-segmentation scores of the saliency maps over the labelled images; void pixels left out."""

    predicted, targets, soft = [], [], []
    for row in labelled.itertuples():
        target = read_label_png(row.gt_semantic)
        saliency = read_saliency(saliency_dir, row.name)
        if saliency.shape != target.shape:
            raise ValueError(f"saliency map of {row.name!r} in {str(saliency_dir)!r} has shape {saliency.shape}, "
                             f"ground truth {target.shape}")
        valid = target != IGNORE_LABEL
        targets.append(target[valid] > 0)  # 1-D: the scores are per-pixel, so flattening drops void pixels cleanly
        soft.append(saliency[valid])
        predicted.append(saliency[valid] >= 0.5)
    return object_segmentation_scores(predicted, targets, soft)


def _feature_evaluations(
    index, labelled, pred_paths, features_store, num_classes: int, names, options, saliency_dir=None
) -> dict[str, Any]:
    """K-means evaluation, linear probe and segment retrieval on the store's token grids (each when configured);
    MaskContrast's object k-means and saliency-segment retrieval use the branch's saliency maps."""
    from unseg.data.index import index_split
    from unseg.evaluation import probe
    from unseg.features.store import FeatureStore

    store = FeatureStore(features_store)
    facet = options["facet"]

    def load(rows):
        return ([store.facet(name, facet) for name in rows["name"]],
                [read_label_png(path) for path in rows["gt_semantic"]])

    def labelled_split(split_name: str):
        try:
            rows = index_split(index, split_name)
        except ValueError:
            return None
        rows = rows[rows["gt_semantic"] != ""]
        return rows if len(rows) else None

    tokens, labels = load(labelled)
    results: dict[str, Any] = {}
    if options.get("kmeans"):
        settings = options["kmeans"]
        results["kmeans"] = probe.kmeans_evaluation(tokens, labels, num_classes, seeds=settings["seeds"],
                                                    class_names=names)
        if settings["objects"] and saliency_dir is None:
            results["kmeans_objects"] = {"skipped": "the branch has no saliency maps (kmeans.objects)"}
        elif settings["objects"]:
            foregrounds = [read_saliency(saliency_dir, name) > 0.5 for name in labelled["name"]]
            try:
                results["kmeans_objects"] = {"foreground": "saliency > 0.5", **probe.object_kmeans_evaluation(
                    tokens, foregrounds, labels, num_classes, seeds=settings["seeds"],
                    pca_components=settings["pca_components"], class_names=names)}
            except ValueError as error:  # fewer images with foreground than object classes
                results["kmeans_objects"] = {"skipped": str(error)}
    for key in ("linear_probe", "retrieval"):
        settings = options.get(key)
        if not settings:
            continue
        split_key = "train_split" if key == "linear_probe" else "reference_split"
        reference_split = settings[split_key]
        reference_rows = labelled_split(reference_split)
        if reference_rows is None:
            results[key] = {
                "skipped": f"no labelled image in split {reference_split!r} (evaluate option {key}.{split_key})"
            }
            continue
        reference_tokens, reference_labels = load(reference_rows)
        note = {split_key: reference_split}
        if key == "linear_probe" and reference_split == _single_split(labelled):
            note["warning"] = "trained and scored on the same images: an optimistic upper bound"
        if key == "retrieval":
            note["leave_own_image_out"] = True
        if key == "linear_probe":
            results[key] = {
                **note,
                **probe.linear_probe(reference_tokens, reference_labels, tokens, labels, num_classes,
                                     seeds=settings["seeds"], steps=settings["steps"], class_names=names),
            }
        else:
            if settings["segments"] == "saliency" and saliency_dir is None:
                results[key] = {"skipped": "the branch has no saliency maps (retrieval.segments: saliency)"}
                continue
            segments = ([(read_saliency(saliency_dir, name) > 0.5).astype(np.uint8) for name in labelled["name"]]
                        if settings["segments"] == "saliency" else [read_label_png(path) for path in pred_paths])
            note["segments"] = settings["segments"]
            own_images = {"query_ids": list(labelled["name"]), "reference_ids": list(reference_rows["name"])}
            results[key] = {**note, "all classes": _without_confusion(probe.segment_retrieval(
                tokens, segments, labels, reference_tokens, reference_labels, num_classes,
                num_neighbours=settings["num_neighbours"], class_names=names, **own_images))}
            for subset_name, subset in (settings.get("class_subsets") or {}).items():
                unknown = [c for c in subset if (c not in names) if isinstance(c, str)]
                if unknown:
                    raise ValueError(f"evaluate option retrieval.class_subsets.{subset_name}: "
                                     f"unknown classes {unknown} (known: {names})")
                kept = [names.index(c) if isinstance(c, str) else int(c) for c in subset]
                results[key][subset_name] = _without_confusion(probe.segment_retrieval(
                    tokens, segments, labels, reference_tokens, reference_labels, num_classes,
                    num_neighbours=settings["num_neighbours"], classes=kept, class_names=[names[c] for c in kept],
                    **own_images))
            results[key]["miou"] = results[key]["all classes"]["miou"]
    return results


def _single_split(rows) -> str | None:
    """The split of the given index rows when they all share one, else None."""
    splits = set(rows["split"])
    return splits.pop() if len(splits) == 1 else None


def _without_confusion(scores: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in scores.items() if key not in ("confusion", "unmatched_pixels")}


def _write_evaluation_html(metrics, out_html, labelled, predictions_dir, num_examples: int) -> None:
    """report.html: headline cards, figures, tables, best and worst images with overlays."""
    from unseg.core.io import read_image, voc_palette
    from unseg.reports.html import (
        confusion_figure,
        evaluation_sections,
        per_class_iou_figure,
        section_html,
        write_html_report,
    )
    from unseg.reports.overlays import overlay_labels

    headline = [(label, metrics[key]) for key, label in HEADLINE_LABELS.items() if key in metrics]
    for key, label in (("crf", "mIoU + CRF"), ("linear_probe", "Linear probe mIoU"), ("kmeans", "K-means mIoU"),
                       ("kmeans_objects", "K-means mIoU (objects)"), ("retrieval", "Retrieval mIoU")):
        value = metrics.get(key, {})
        if isinstance(value, Mapping) and (value.get("miou") is not None or value.get("miou_mean") is not None):
            headline.append((label, value.get("miou", value.get("miou_mean"))))
    saliency = metrics.get("object_segmentation")
    if saliency:
        headline += [("Saliency IoU", saliency["mean_iou"]), ("Saliency max F-beta", saliency.get("max_fbeta"))]
    for key, label in (("proposals", "Proposals AP50"), ("predicted_instances", "Instances AP50")):
        if key in metrics:
            headline.append((label, metrics[key]["multi"]["AP50"]))

    figures = []
    per_class = metrics.get("per_class_iou")
    if per_class:
        figures.append(("Per-class IoU after matching", per_class_iou_figure(per_class)))
        figures.append(("Confusion matrix after matching; each column normalised over the true class",
                        confusion_figure(metrics["confusion"], list(per_class))))
    html_sections = evaluation_sections(metrics)
    details = {key: metrics[key] for key in ("split", "num_images", "num_labelled_pixels", "config_digest")
               if key in metrics}
    html_sections.append(("Details", section_html(details)))

    examples = []
    per_image = {name: value for name, value in (metrics.get("per_image_miou") or {}).items() if value is not None}
    if per_image and num_examples > 0:
        ranked = sorted(per_image, key=lambda name: per_image[name], reverse=True)
        chosen = [("best", name) for name in ranked[:num_examples]]
        chosen += [("worst", name) for name in ranked[::-1][:num_examples] if name not in ranked[:num_examples]]
        mapping = np.asarray(metrics["mapping"] + [-1] * 256, dtype=np.int64)[:256]
        mapping[mapping < 0] = IGNORE_LABEL
        rows_by_name = {row.name: row for row in labelled.itertuples()}
        for kind, name in chosen:
            row = rows_by_name[name]
            image = read_image(row.path)
            prediction = read_label_png(Path(predictions_dir) / f"{name}.png")
            mapped = mapping[prediction].astype(np.uint8)
            examples.append((f"{kind}: {name}", f"mIoU {per_image[name]:.1f} % (matched as over the whole split)",
                             [("image", image),
                              ("ground truth", overlay_labels(image, read_label_png(row.gt_semantic))),
                              ("prediction (matched to classes)", overlay_labels(image, mapped))]))
    legend = [(name, color) for name, color in zip(per_class or {}, voc_palette().tolist()) if name != "background"]
    write_html_report(out_html, metrics.get("title", "Evaluation report"), headline, html_sections, figures, examples,
                      subtitle="All numbers in percent. Unmatched clusters are drawn white.",
                      legend=legend + [("unmatched / void", (255, 255, 255))])


def _max_label(path: str | os.PathLike) -> int:
    """Largest label in a label PNG, 255 (ignore) excluded."""
    labels = read_label_png(path)
    return int(labels[labels != IGNORE_LABEL].max(initial=0))
