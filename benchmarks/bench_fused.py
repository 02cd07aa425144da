"""The fused path's speed: features + masks + saliency in one process (unseg.features.fused) against the unfused stages
run one
after the other (extraction, then the masks and saliency stages reading the store back), on the same images.

Prints images/s of: the extraction alone; the masks stage and the saliency stage from the store; the unfused
total (the three in sequence); the fused job; and the ratio fused / unfused. The methods are the defaults
(spectral_multik, spectral_bipartition) at their schema's settings; random weights (timing only).

Usage (from the project root)::

    .venv/bin/python benchmarks/bench_fused.py --resolution 112 --limit 16                # CPU, small
    python3 benchmarks/bench_fused.py --backbone dino_vits8 --resolution 448 --repeat 4 \\
        --images '.gpudata/horses/images/*.jpg' --batch-size 64 --workers 12                # GPU
"""

from __future__ import annotations

import argparse
import glob
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from unseg.config.schema import validate_config  # noqa: E402
from unseg.config.variants import fused_variants  # noqa: E402
from unseg.features.extract import extract_features  # noqa: E402
from unseg.features.fused import FusedConsumer  # noqa: E402
from unseg.stages.masks import run_masks  # noqa: E402
from unseg.stages.saliency import run_saliency  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default=str(ROOT.parent / "shared/data/weizmann-horse/images/*.jpg"))
    parser.add_argument("--limit", type=int, default=328)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--backbone", default="dino_vits8")
    parser.add_argument("--resolution", type=int, default=448)
    parser.add_argument("--layout", default="crop", choices=["resize", "crop"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--quantize", default=None, choices=["uint8"])
    parser.add_argument("--store-dir", default=None)
    args = parser.parse_args(argv)
    paths = sorted(glob.glob(args.images))[: args.limit] * args.repeat
    if not paths:
        print(f"no images match {args.images!r}", file=sys.stderr)
        return 2
    names = [f"{Path(p).stem}_{i}" for i, p in enumerate(paths)]
    config = validate_config({
        "dataset": {"name": "bench", "root": "unused"},
        "features": {"f": {"backbone": args.backbone, "weights": "random", "fused": True}},
        "masks": {"multik": {"features": "f"}}, "saliency": {"bipart": {"features": "f"}},
    }, ROOT / "workflow/schemas/config.schema.yaml")
    variants = fused_variants(config, "f")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"{device} ({torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}); {args.backbone} at "
          f"{args.resolution} px {args.layout}, {len(paths)} images, batch {args.batch_size}; masks "
          f"{variants['masks']['multik']['method']} k={variants['masks']['multik']['k']}, saliency "
          f"{variants['saliency']['bipart']['method']}")
    extraction = dict(backbone=args.backbone, weights="random", resolution=args.resolution, facets=["keys"],
                      batch_size=args.batch_size, layout=args.layout, workers=args.workers, writers=args.writers,
                      quantize=args.quantize, progress=False)
    folder = Path(tempfile.mkdtemp(prefix="bench_fused_", dir=args.store_dir))
    seconds = {}
    try:  # a warm-up extraction of one batch first: the timed runs start with the images cached and kernels loaded
        extract_features(paths[: args.batch_size], names[: args.batch_size], list(range(1, args.batch_size + 1)),
                         folder / "warm-up.zarr", **extraction)
        start = time.perf_counter()
        extract_features(paths, names, list(range(1, len(paths) + 1)), folder / "plain.zarr", **extraction)
        seconds["extraction"] = time.perf_counter() - start
        start = time.perf_counter()
        run_masks(folder / "plain.zarr", folder / "masks.json", variants["masks"]["multik"], progress=False)
        seconds["masks stage"] = time.perf_counter() - start
        start = time.perf_counter()
        run_saliency(folder / "plain.zarr", folder / "saliency", variants["saliency"]["bipart"], progress=False)
        seconds["saliency stage"] = time.perf_counter() - start
        seconds["unfused total"] = seconds["extraction"] + seconds["masks stage"] + seconds["saliency stage"]
        start = time.perf_counter()
        consumer = FusedConsumer(variants, folder / "fused", dict(zip(names, paths)))
        extract_features(paths, names, list(range(1, len(paths) + 1)), folder / "fused/features.zarr",
                         on_written=consumer, **extraction)
        consumer.finish()
        seconds["fused"] = time.perf_counter() - start
        same = (folder / "masks.json").read_bytes() == (folder / "fused/masks/multik.json").read_bytes()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print("\n| part | images/s |\n|---|---|")
    for part, value in seconds.items():
        print(f"| {part} | {len(paths) / value:.1f} |")
    print(f"\nfused / unfused: {seconds['unfused total'] / seconds['fused']:.2f}x the images/s; fused / extraction "
          f"alone: {seconds['extraction'] / seconds['fused']:.2f}; masks.json identical: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
