"""The instances stage's entry points, one per job of ``workflow/rules/instances.smk``: round r's targets
(:func:`run_round_targets`), its training (:func:`run_instances_train`) and its detections
(:func:`run_instances_predict`); the rounds' report is :func:`unseg.stages.instances.report.write_rounds_report`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from unseg.config.registry import REGISTRIES
from unseg.core.devices import resolve_device
from unseg.core.io import read_json, write_json
from unseg.features.store import FeatureStore
from unseg.stages.instances.data import InstanceTrainingInputs
from unseg.stages.instances.detect import detect_instances, load_instance_model
from unseg.stages.instances.targets import merge_round_targets


def run_round_targets(predictions_json: str | Path, proposals_json: str | Path, out_json: str | Path,
                      settings: Mapping[str, Any]) -> dict:
    """Write round r's ``targets.json`` from round r-1's ``instances.json`` and the proposals
    (:func:`merge_round_targets` with the round's ``self_training_score``, ``self_training_iou`` and
    ``keep_proposals`` and ``min_target_score``: :func:`unseg.training.rounds.merge_settings_of_round`);
    returns the counts by source."""
    merged = merge_round_targets(read_json(predictions_json), read_json(proposals_json),
                                 settings["self_training_score"], settings["self_training_iou"],
                                 settings["keep_proposals"], settings.get("min_target_score", 0.0))
    write_json(out_json, merged, indent=None)
    counts = {source: sum(det["source"] == source for det in merged) for source in ("prediction", "proposal")}
    print(f"round targets: {counts['prediction']} confident detections (score >= {settings['self_training_score']}) "
          f"+ {counts['proposal']} proposals they do not cover", file=sys.stderr)
    return counts


def run_instances_train(store_path: str | Path, targets_json: str | Path, names_by_id: Mapping[int, str],
                        out_dir: str | Path, settings: Mapping[str, Any], image_paths: Mapping[str, str | Path] | None
                        = None, initial_model: str | Path | None = None, progress: bool = True) -> dict:
    """Train one round of the variant's method on ``targets_json`` (COCO results of the images of
    ``names_by_id``; an image without a target trains as background).

    Args:
        settings: the round's settings (:func:`unseg.training.rounds.settings_of_round`): ``method``,
            ``facet`` and the method's own.
    """
    method = REGISTRIES["instances"].get(settings["method"])
    config = {"method": method.name, "facet": settings["facet"], **method.settings(settings)}
    detections: dict[str, list[dict]] = {name: [] for _, name in sorted(names_by_id.items(), key=lambda kv: kv[1])}
    for det in read_json(targets_json):
        name = names_by_id.get(int(det["image_id"]))
        if name is not None:
            detections[name].append(det)
    inputs = InstanceTrainingInputs(Path(store_path), settings["facet"], detections, Path(out_dir), config,
                                    {name: Path(path) for name, path in image_paths.items()} if image_paths else None,
                                    Path(initial_model) if initial_model else None, progress)
    return method(inputs, settings=settings)


def run_instances_predict(model_path: str | Path, store_path: str | Path, names: Sequence[str], out_json: str | Path,
                          image_paths: Mapping[str, str | Path] | None = None, device: str | None = None,
                          progress: bool = True, rescore: str = "coherence", rescore_facet: str = "keys",
                          crf: bool = False) -> int:
    """Detect the instances of every named image with a round's model → ``out_json`` (refined and rescored as
    :func:`detect_instances` says); returns the count."""
    model, config = load_instance_model(model_path)
    store = FeatureStore(store_path)
    detections = detect_instances(model, config, store, names, image_paths, resolve_device(device), progress,
                                  rescore, rescore_facet, crf)
    write_json(out_json, detections, indent=None)
    return len(detections)
