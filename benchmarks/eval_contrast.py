"""MaskContrast embeddings against the raw ViT tokens they are learned on, by MaskContrast's evaluations.

Trains the ``maskcontrast`` contrast method (the library function the workflow's ``contrast`` rule calls) on a
finished run's feature store and saliency maps, then scores both feature sets on the labelled images of ``--split``:
k-means of every token (Hungarian mIoU, 5 seeds), MaskContrast's object k-means (one prototype per image inside the
saliency foreground) and segment retrieval of the saliency foreground/background segments among the ground-truth
segments of ``--reference-split`` (leave-own-image-out). The saliency maps are the same for both feature sets, so
only the embeddings differ.

Usage (from the project root, after a run of the config that made ``results/{dataset}``)::

    .venv/bin/python benchmarks/eval_contrast.py --results results/synthetic --num-classes 3 \\
        --set epochs=40 batch_size=8 --out /tmp/contrast
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from unseg.config.schema import load_methods, variant_settings  # noqa: E402
from unseg.core.io import read_label_png, read_saliency  # noqa: E402
from unseg.data.index import index_split, read_index  # noqa: E402
from unseg.evaluation import probe  # noqa: E402
from unseg.features.store import FeatureStore  # noqa: E402
from unseg.stages.contrast import EMBEDDINGS_FACET, ContrastInputs, run_contrast  # noqa: E402

SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def scores(store: FeatureStore, facet: str, rows, reference_rows, saliency: Path, num_classes: int) -> dict:
    """k-means (tokens, objects) and saliency-segment retrieval mIoU of one facet on the labelled rows."""
    tokens = [store.facet(name, facet) for name in rows["name"]]
    labels = [read_label_png(path) for path in rows["gt_semantic"]]
    foregrounds = [read_saliency(saliency, name) > 0.5 for name in rows["name"]]
    reference_tokens = [store.facet(name, facet) for name in reference_rows["name"]]
    reference_labels = [read_label_png(path) for path in reference_rows["gt_semantic"]]
    token_kmeans = probe.kmeans_evaluation(tokens, labels, num_classes)
    try:
        object_kmeans = probe.object_kmeans_evaluation(tokens, foregrounds, labels, num_classes)
    except ValueError:  # fewer images than object classes
        object_kmeans = {"miou_mean": float("nan"), "miou_std": float("nan")}
    retrieval = probe.segment_retrieval(tokens, [f.astype(np.uint8) for f in foregrounds], labels, reference_tokens,
                                        reference_labels, num_classes, query_ids=list(rows["name"]),
                                        reference_ids=list(reference_rows["name"]))
    return {"kmeans_tokens": round(token_kmeans["miou_mean"], 2),
            "kmeans_tokens_std": round(token_kmeans["miou_std"], 2),
            "kmeans_objects": round(object_kmeans["miou_mean"], 2),
            "kmeans_objects_std": round(object_kmeans["miou_std"], 2), "retrieval": round(retrieval["miou"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True, help="results/{dataset} of a finished run")
    parser.add_argument("--features", default="dinov2-s14")
    parser.add_argument("--saliency", default="bipart")
    parser.add_argument("--index", type=Path, default=None, help="default: {results}/index/images.csv")
    parser.add_argument("--num-classes", type=int, required=True, help="object classes without background")
    parser.add_argument("--split", default="val")
    parser.add_argument("--reference-split", default=None, help="default: --split (leave-own-image-out)")
    parser.add_argument("--set", nargs="*", default=[], help="contrast settings, key=value (YAML values)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reuse", action="store_true", help="score the embeddings already in --out, no training")
    args = parser.parse_args()

    load_methods()
    given = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    settings = variant_settings("contrast", given, SCHEMA)
    index = read_index(args.index or args.results / "index" / "images.csv")
    rows = index_split(index, args.split)
    rows = rows[rows["gt_semantic"] != ""]
    reference = index_split(index, args.reference_split or args.split)
    reference = reference[reference["gt_semantic"] != ""]
    store_path = args.results / "features" / f"{args.features}.zarr"
    saliency = args.results / "saliency" / args.saliency
    args.out.mkdir(parents=True, exist_ok=True)
    inputs = ContrastInputs(store_path, dict(zip(index["name"], index["path"])), saliency, args.out / "model",
                            args.out / "embeddings.zarr", settings)
    start = time.perf_counter()
    last = None if args.reuse else run_contrast(inputs, settings)
    seconds = time.perf_counter() - start
    num_classes = args.num_classes + 1
    result = {
        "settings": given, "train_seconds": round(seconds, 1), "last_epoch": last,
        "images": len(rows), "reference_images": len(reference),
        "raw tokens": scores(FeatureStore(store_path), "tokens", rows, reference, saliency, num_classes),
        "maskcontrast": scores(FeatureStore(args.out / "embeddings.zarr"), EMBEDDINGS_FACET, rows, reference,
                               saliency, num_classes),
    }
    print(json.dumps(result, indent=1))
    (args.out / "scores.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
