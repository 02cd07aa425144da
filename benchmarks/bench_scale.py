"""Flat memory and constant per-image cost: the index, features, masks, saliency, proposals, pseudo-labels, train (a
linear head, two epochs) and predict stages, and the fused path (features + masks + saliency in one job,
unseg.features.fused), on generated synthetic datasets of growing size (small images, a random ViT, the CPU), each
stage a
library call in a fresh process, as a workflow job is.

Prints, per dataset size and stage: images/s, bytes per image of the stage's artifact on disk and the process's
peak resident memory; then each stage's per-image time and peak RSS at the largest size relative to the smallest
(the goal: both within 20 %, i.e. ratios <= 1.2).

Usage (from the project root)::

    .venv/bin/python benchmarks/bench_scale.py --sizes 1000,3000,10000
    .venv/bin/python benchmarks/bench_scale.py --sizes 100,300 --out /tmp/scale-small   # a quick look
    .venv/bin/python benchmarks/bench_scale.py --stages index,fused                     # the fused path alone

Each size gets its own dataset and results under --out (default /tmp/unseg-scale); datasets are kept between
runs (generation is deterministic), results are recomputed.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
STAGES = ("index", "features", "masks", "saliency", "proposals", "pseudolabels", "train", "predict", "fused")
TRAIN_EPOCHS = 2  # a linear head: per-image cost is what scales, not how long it trains


def variant(stage: str, **given) -> dict:
    from unseg.config.schema import load_methods, variant_settings

    load_methods()
    return variant_settings(stage, given, SCHEMA)


def run_stage(stage: str, root: Path, results: Path, resolution: int) -> dict:
    """One stage, in this process (the child): its artifact under ``results`` and how long it took."""
    import unseg.features.extract  # noqa: F401  (imports and method registration are start-up, not per-image cost)
    import unseg.stages.masks  # noqa: F401
    import unseg.stages.pseudolabels  # noqa: F401
    import unseg.stages.saliency  # noqa: F401

    index_csv = results / "index" / "images.csv"
    store = results / "features.zarr"
    start = time.perf_counter()
    if stage == "index":
        from unseg.config.schema import validate_config
        from unseg.data.index import run_index

        config = validate_config({"dataset": {"name": "scale", "root": str(root)}}, SCHEMA)
        (results / "index").mkdir(parents=True, exist_ok=True)
        run_index(root, index_csv, results / "index" / "skipped.csv", config["dataset"],
                  resized_dir=results / "index" / "resized")
        artifact = results / "index"
    elif stage == "features":
        from unseg.features.extract import run_features

        settings = variant("features", backbone="dino_vits16", weights="random", resolution=resolution,
                           facets=["keys", "tokens"], batch_size=32)
        run_features(index_csv, store, settings, threads=2)
        artifact = store
    elif stage == "fused":
        from unseg.features.fused import run_fused_shard

        settings = variant("features", backbone="dino_vits16", weights="random", resolution=resolution,
                           facets=["keys", "tokens"], batch_size=32, fused=True)
        fused = {"masks": {"m": variant("masks", features="f", k=[2, 3])}, "saliency": {"s": variant("saliency",
                                                                                                   features="f")}}
        run_fused_shard(index_csv, results / "fused", settings, fused, threads=2)
        artifact = results / "fused"
    elif stage == "masks":
        from unseg.stages.masks import run_masks

        run_masks(store, results / "masks.json", variant("masks", features="f", k=[2, 3]), progress=False)
        artifact = results / "masks.json"
    elif stage == "saliency":
        from unseg.stages.saliency import run_saliency

        run_saliency(store, results / "saliency", variant("saliency", features="f"), progress=False)
        artifact = results / "saliency"
    elif stage == "proposals":
        from unseg.stages.proposals import run_proposals

        run_proposals(results / "masks.json", results / "saliency", index_csv, results / "proposals.json",
                      variant("proposals", masks="m", saliency="s"), progress=False,
                      out_rejected=results / "rejected.json")
        artifact = results / "proposals.json"
    elif stage == "pseudolabels":
        from unseg.data.index import names_by_id, read_index
        from unseg.stages.pseudolabels import run_pseudolabels

        run_pseudolabels(results / "proposals.json", store, results / "saliency",
                         names_by_id(read_index(index_csv)), results / "pseudolabels",
                         variant("pseudolabels", proposals="p", features="f", clusters=3), progress=False)
        artifact = results / "pseudolabels"
    elif stage == "train":
        from unseg.data.index import read_index
        from unseg.stages.train import run_train

        run_train(store, results / "pseudolabels", read_index(index_csv).name.tolist(), results / "train", 4,
                  variant("train", pseudolabels="k", features="f", method="linear_head", epochs=TRAIN_EPOCHS),
                  progress=False)
        artifact = results / "train"
    elif stage == "predict":
        from unseg.data.index import image_paths
        from unseg.stages.predict import predict

        predict(results / "train" / "model.pt", store, image_paths(index_csv), results / "predict", progress=False)
        artifact = results / "predict"
    else:
        raise ValueError(f"unknown stage {stage!r}")
    seconds = time.perf_counter() - start
    files = [artifact] if artifact.is_file() else [path for path in artifact.rglob("*") if path.is_file()]
    return {"seconds": seconds, "bytes": sum(path.stat().st_size for path in files),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,3000,10000", help="dataset sizes, comma-separated")
    parser.add_argument("--image-size", type=int, default=64, help="side of the generated square images (px)")
    parser.add_argument("--resolution", type=int, default=64, help="the ViT's input short side (px)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/unseg-scale"))
    parser.add_argument("--stages", default=",".join(STAGES), help="the stages to run, in this order, comma-separated "
                        "(a stage needs the artifacts of the stages before it in the default order; fused: index)")
    parser.add_argument("--child", nargs=3, metavar=("STAGE", "ROOT", "RESULTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one stage in a fresh process: its numbers as JSON on the last line
        stage, root, results = args.child
        print(json.dumps(run_stage(stage, Path(root), Path(results), args.resolution)))
        return

    from unseg.data.synthetic import generate_synthetic_dataset

    sizes = [int(size) for size in args.sizes.split(",")]
    stages = args.stages.split(",")
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        sys.exit(f"--stages: unknown {unknown}; choose from {list(STAGES)}")
    rows: dict[tuple[int, str], dict] = {}
    print("| images | stage | images/s | bytes / image | peak RSS (MB) |\n|---|---|---|---|---|", flush=True)
    for size in sizes:
        root = args.out / f"data-{size}"
        if not (root / "annotations" / "instances.json").is_file():
            generate_synthetic_dataset(root, num_images=size, image_size=args.image_size)
        results = args.out / f"results-{size}"
        subprocess.run(["rm", "-rf", str(results)], check=True)
        results.mkdir(parents=True)
        for stage in stages:
            done = subprocess.run([sys.executable, __file__, "--resolution", str(args.resolution), "--child", stage,
                                   str(root), str(results)], capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"stage {stage} at {size} images failed:\n{done.stderr[-3000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows[size, stage] = row
            print(f"| {size} | {stage} | {size / row['seconds']:.1f} | {row['bytes'] / size:,.0f} | "
                  f"{row['peak_rss_mb']:.0f} |", flush=True)
    small, large = sizes[0], sizes[-1]
    print(f"\n{large} images against {small}: per-image time and peak RSS ratios (goal <= 1.2)\n")
    print("| stage | per-image time | peak RSS |\n|---|---|---|")
    for stage in stages:
        time_ratio = (rows[large, stage]["seconds"] / large) / (rows[small, stage]["seconds"] / small)
        rss_ratio = rows[large, stage]["peak_rss_mb"] / rows[small, stage]["peak_rss_mb"]
        print(f"| {stage} | {time_ratio:.2f} | {rss_ratio:.2f} |")


if __name__ == "__main__":
    main()
