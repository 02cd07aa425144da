"""The masks stage's per-image host work (k-means for every k, components, upsampling to the image, RLE encoding),
on one thread against the job's threads (unseg.core.threads.map_images), in one process on the same images.

On a GPU the eigensolver takes a fraction of a millisecond per image, so this host work bounds the masks stage (and
the fused path): docs/benchmarks.md, "The fused path". The spectra are solved once, before timing. Prints ms per
image of both, the ratio, and whether the rows are identical.

Usage (from the project root)::

    .venv/bin/python benchmarks/bench_masks_host.py --images '../shared/data/weizmann-horse/images/*.jpg' --limit 8
"""

from __future__ import annotations

import argparse
import glob
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from unseg.config.registry import REGISTRIES  # noqa: E402
from unseg.features.extract import extract_features  # noqa: E402
from unseg.features.store import FeatureStore  # noqa: E402
from unseg.ops.eigensolver import grid_spectra  # noqa: E402
from unseg.stages.masks import batch_mask_results  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default=str(ROOT.parent / "shared/data/weizmann-horse/images/*.jpg"))
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3, help="timed passes over the images")
    parser.add_argument("--backbone", default="dino_vits8")
    parser.add_argument("--resolution", type=int, default=448)
    parser.add_argument("--method", default="spectral_multik", choices=["spectral_multik", "deep_spectral"])
    args = parser.parse_args(argv)
    paths = sorted(glob.glob(args.images))[: args.limit]
    if not paths:
        print(f"no images match {args.images!r}", file=sys.stderr)
        return 2
    import unseg.config.schema  # noqa: F401  (registers the methods)

    method = REGISTRIES["masks"].get(args.method)
    settings = method.settings({})
    with tempfile.TemporaryDirectory() as folder:
        store_path = Path(folder) / "keys.zarr"
        extract_features(paths, [Path(p).stem for p in paths], list(range(1, len(paths) + 1)), store_path,
                         backbone=args.backbone, weights="random", resolution=args.resolution, layout="crop",
                         facets=["keys"], batch_size=len(paths), progress=False)
        store = FeatureStore(store_path)
        names = store.names
        grids = [store.facet(name, "keys") for name in names]
        vectors = settings.get("num_eigenvectors", max(settings["k"]))
        spectra = grid_spectra(grids, vectors)
        geometries = [store.geometry(name) for name in names]
        ids = [store.image_id(name) for name in names]

        class Solved:  # the method with its spectra solved already: only the host work is timed
            attributes = method.attributes

            @staticmethod
            def function(batch, **kwargs):
                import unseg.stages.masks as masks

                original = masks.grid_spectra
                masks.grid_spectra = lambda *a, **k: [spectra[names.index(n)] for n in batch.names]
                try:
                    return method.function(batch, **kwargs)
                finally:
                    masks.grid_spectra = original

        threads = torch.get_num_threads()
        timings, rows = {}, {}
        for label, count in (("one thread", 1), (f"{threads} threads", threads)):
            torch.set_num_threads(count)
            batch_mask_results(Solved, settings, names, grids, geometries, ids)  # warm-up
            start = time.perf_counter()
            for _ in range(args.repeat):
                rows[label] = batch_mask_results(Solved, settings, names, grids, geometries, ids)
            timings[label] = (time.perf_counter() - start) / (args.repeat * len(names)) * 1000
        torch.set_num_threads(threads)
    grid = grids[0].shape[:2]
    print(f"{args.method}, {len(names)} images, {args.backbone} at {args.resolution} px (grid {grid[0]}x{grid[1]}), "
          f"{len(rows['one thread']) // len(names)} masks per image")
    for label, value in timings.items():
        print(f"{label}: {value:.1f} ms per image")
    first, second = timings.values()
    same = rows["one thread"] == rows[f"{threads} threads"]
    print(f"ratio: {first / second:.2f}x; rows identical: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
