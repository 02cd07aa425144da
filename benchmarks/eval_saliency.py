"""Every saliency variant of a table on one feature store, scored against ground-truth foreground (label > 0, void
left out): mean per-image foreground IoU, dataset IoU and max F-beta (beta² = 0.3), as the evaluate stage scores a
branch's saliency (unseg.evaluation.metrics.object_segmentation_scores) — at each image's original resolution.

Usage (from the project root, after the workflow has written the store and the index)::

    .venv/bin/python benchmarks/eval_saliency.py --results results/horses --features dinov2-s14
    .venv/bin/python benchmarks/eval_saliency.py --results results/voc-crops --features dinov2-s14 --out /tmp/sal

The variants are VARIANTS below (each completed by the config schema, as the workflow would; ``--only TEXT`` runs the
variant labelled TEXT, or else those whose label contains TEXT); their maps are written under --out (default: a
temporary folder) so they can be looked at.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from unseg.config.schema import load_methods, variant_settings
from unseg.core.io import IGNORE_LABEL, read_label_png, read_saliency
from unseg.data.index import read_index
from unseg.evaluation.metrics import object_segmentation_scores
from unseg.stages.saliency import run_saliency

VARIANTS = {
    "spectral_bipartition (split, the old default)": {"method": "spectral_bipartition"},
    "spectral_bipartition, threshold otsu": {"method": "spectral_bipartition", "threshold": "otsu"},
    "spectral_bipartition, partition kmeans": {"method": "spectral_bipartition", "partition": "kmeans"},
    "border_background": {"method": "border_background"},
    "foreground_head (teacher border_background), FOUND's self-training": {"method": "foreground_head",
                                                                          "teacher_iterations": 100},
    "foreground_head (teacher border_background), the default": {"method": "foreground_head"},
    "foreground_head (teacher spectral_bipartition)": {"method": "foreground_head",
                                                       "teacher": "spectral_bipartition"},
    "border_background, refine crf": {"method": "border_background", "refine": "crf"},
    "foreground_head (teacher border_background), refine crf": {"method": "foreground_head", "refine": "crf"},
    "foreground_head (teacher border_background), refine crf, threshold otsu": {"method": "foreground_head",
                                                                                "refine": "crf", "threshold": "otsu"},
}


def score(index: pd.DataFrame, saliency_dir: Path) -> dict:
    predicted, targets, soft = [], [], []
    for row in index.reset_index().itertuples():
        target = read_label_png(row.gt_semantic)
        saliency = read_saliency(saliency_dir, row.name)
        valid = target != IGNORE_LABEL
        targets.append(target[valid] > 0)
        soft.append(saliency[valid])
        predicted.append(saliency[valid] > 0.5)
    return object_segmentation_scores(predicted, targets, soft)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True, help="results/{dataset}")
    parser.add_argument("--features", required=True, help="the features variant")
    parser.add_argument("--facet", default="keys")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--only", default=None, help="run only the variant of this label, or else those whose label "
                                                     "contains this text")
    args = parser.parse_args()
    load_methods()
    schema = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
    index = read_index(args.results / "index" / "images.csv")  # names stay strings (COCO's are digits)
    index = index[index["gt_semantic"] != ""].set_index("name")
    out = args.out or Path(tempfile.mkdtemp(prefix="saliency-"))
    store = args.results / "features" / f"{args.features}.zarr"
    print(f"{len(index)} images with ground truth; maps under {out}\n")
    print("| saliency variant | mean IoU | dataset IoU | max F-beta | s |\n|---|---|---|---|---|")
    paths = dict(zip(index.index, index["path"]))  # read by the refinement step
    for label, given in VARIANTS.items():
        if args.only and (args.only != label if args.only in VARIANTS else args.only not in label):
            continue
        settings = variant_settings("saliency", {"facet": args.facet, **given}, schema)
        folder = out / label.split(" ")[0].replace(",", "") / str(abs(hash(label)) % 10**6)
        start = time.perf_counter()
        run_saliency(store, folder, settings, progress=False, image_paths=paths)
        seconds = time.perf_counter() - start
        scores = score(index, folder)
        print(f"| {label} | {scores['mean_iou']:.1f} | {scores['dataset_iou']:.1f} | {scores['max_fbeta']:.1f} | "
              f"{seconds:.0f} |", flush=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
