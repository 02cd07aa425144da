"""Training speed and memory: images/s per trainer (frozen features, and the last ViT blocks fine-tuned on augmented
images), and peak RSS at 1× and 10× the images on frozen features.

Reads a finished demo run (``snakemake --cores 2``: results/synthetic/features/dinov2-s14.zarr and the km3
pseudo-labels). The 10× dataset is the same store with every image linked under ten names (hard links, no copy),
so it differs from 1× only in the number of images: a trainer that holds every image's tokens in memory grows
tenfold, a streaming one does not. Each measurement runs in a fresh process; RSS is reported as the peak and as
the growth over the process's RSS after its imports.

Usage (from the project root)::

    .venv/bin/python benchmarks/bench_train.py
    .venv/bin/python benchmarks/bench_train.py --device cuda --batch-sizes 8 16 32 64   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def repeated_store(store: Path, labels: Path, times: int, work: Path) -> tuple[Path, Path]:
    """``store`` and its label folder with every image under ``times`` names (name-r0, name-r1, ...)."""
    out_store, out_labels = work / f"x{times}.zarr", work / f"x{times}-labels"
    if out_store.exists():
        return out_store, out_labels
    from unseg.features.store import link_tree

    shutil.rmtree(out_labels, ignore_errors=True)
    out_labels.mkdir(parents=True)
    tmp = work / f".x{times}.zarr.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    root = json.loads((store / "zarr.json").read_text())
    groups = [entry for entry in sorted(store.iterdir()) if (entry / "zarr.json").is_file()]
    root["attributes"]["num_images"] = len(groups) * times
    (tmp / "zarr.json").write_text(json.dumps(root))
    for group in groups:
        for copy in range(times):
            link_tree(group, tmp / f"{group.name}-r{copy}")
            os.link(labels / f"{group.name}.png", out_labels / f"{group.name}-r{copy}.png")
    tmp.rename(out_store)
    return out_store, out_labels


def child(args: argparse.Namespace) -> None:
    """One training run in this process; prints a JSON line."""
    from unseg.config.schema import load_methods, variant_settings
    from unseg.data.index import image_paths
    from unseg.features.store import FeatureStore
    from unseg.stages.train import run_train

    load_methods()

    names = FeatureStore(args.store).names
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    settings = variant_settings("train", {"method": args.method, "epochs": args.epochs, "batch_size": args.batch_size,
                                          "device": args.device, **json.loads(args.options)},
                                ROOT / "workflow" / "schemas" / "config.schema.yaml")
    originals = image_paths(args.index)  # the repeated stores name each image "{name}-r{copy}"
    paths = {name: originals[name.rsplit("-r", 1)[0]] for name in names}
    run_train(args.store, args.labels, names, args.out, 4, settings, progress=False, image_paths=paths)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"images": len(names), "seconds": seconds, "images_per_s": len(names) * args.epochs / seconds,
                      "peak_rss_mb": peak / 1024, "growth_mb": (peak - before) / 1024}))


def measure(store: Path, labels: Path, index: Path, method: str, epochs: int, batch_size: int, device: str | None,
            options: str, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, __file__, "--child", "--store", str(store), "--labels", str(labels), "--method", method,
               "--index", str(index),
               "--epochs", str(epochs), "--batch-size", str(batch_size), "--options", options, "--out", str(out)]
    if device:
        command += ["--device", device]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=ROOT / "results" / "synthetic")
    parser.add_argument("--features", default="dinov2-s14")
    parser.add_argument("--pseudolabels", default="km3")
    parser.add_argument("--work", type=Path, default=ROOT / "resources" / "cache" / "bench_train")
    parser.add_argument("--device")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--labels", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--index", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    index = args.results / "index" / "images.csv"

    store = args.results / "features" / f"{args.features}.zarr"
    labels = args.results / "pseudolabels" / args.pseudolabels
    if not store.is_dir() or not labels.is_dir():
        sys.exit(f"no {store} or {labels}: run the demo first (snakemake --cores 2)")
    args.work.mkdir(parents=True, exist_ok=True)
    one, one_labels = repeated_store(store, labels, 1, args.work)
    ten, ten_labels = repeated_store(store, labels, 10, args.work)

    print(f"memory: linear_head, 2 epochs, batch 8, device {args.device or 'default'}")
    small = measure(one, one_labels, index, "linear_head", 2, 8, args.device, "{}", args.work / "out")
    large = measure(ten, ten_labels, index, "linear_head", 2, 8, args.device, "{}", args.work / "out")
    for label, row in (("1x", small), ("10x", large)):
        print(f"  {label:>4} {row['images']:4d} images  peak RSS {row['peak_rss_mb']:7.0f} MB  "
              f"growth over imports {row['growth_mb']:6.0f} MB")
    print(f"  peak RSS 10x / 1x: {large['peak_rss_mb'] / small['peak_rss_mb']:.2f}  "
          f"(growth {large['growth_mb'] / max(small['growth_mb'], 1e-9):.2f})")

    print(f"speed: images/s over 2 epochs of {small['images']} images (scan pass included)")
    for method, options in (("linear_head", "{}"), ("deeplab_aspp", "{}"), ("mask_transformer", "{}"),
                            ("linear_head", '{"finetune_blocks": 1}'), ("linear_head", '{"finetune_blocks": 2}')):
        for batch_size in args.batch_sizes:
            row = measure(one, one_labels, index, method, 2, batch_size, args.device, options, args.work / "out")
            print(f"  {method:<17} {options:<22} batch {batch_size:3d}: {row['images_per_s']:7.1f} images/s")


if __name__ == "__main__":
    main()
