"""A dataset that grows by 1 %: the re-run's time over a fresh run's, for the index and the per-image stages.

Generates ``--images`` synthetic photos (plus 1 % more) into a plain folder, indexes it and extracts its features
with the reuse cache (unseg.features.store.ReuseCache), as the workflow's features job does; then adds 1 % new
images and times, in the same process: the re-index and the re-extraction with the cache (only the new images are
computed), the masks (spectral_multik) and saliency (spectral_bipartition) stages with their kept per-image results,
against a fresh run of each on the grown folder. Prints the seconds and the ratios (goal for the per-image stages:
at most 0.1), and checks that the re-run's artifacts hold the same images as the fresh ones.

Usage (from the project root)::

    .venv/bin/python benchmarks/bench_incremental.py --images 2000
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from unseg.config.schema import load_methods, variant_settings  # noqa: E402
from unseg.data.index import run_index  # noqa: E402
from unseg.data.synthetic import generate_synthetic_dataset  # noqa: E402
from unseg.features.extract import extract_features  # noqa: E402
from unseg.features.store import FeatureStore  # noqa: E402
from unseg.stages.masks import run_masks  # noqa: E402
from unseg.stages.saliency import run_saliency  # noqa: E402

INDEX_SETTINGS = {"format": "auto", "unreadable": "error", "min_side": 16}


def timed(function, *args, **kwargs) -> float:
    start = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--backbone", default="dino_vits16")
    parser.add_argument("--resolution", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    added = max(1, args.images // 100)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        generate_synthetic_dataset(scratch / "generated", num_images=args.images + added, image_size=args.image_size,
                                   seed=0)
        generated = sorted((scratch / "generated" / "JPEGImages").iterdir())
        photos = scratch / "photos"
        photos.mkdir()
        # every 100th image arrives later: the new ones fall between the old ones in name order
        late = set(generated[::100][:added])
        for path in generated:
            if path not in late:
                shutil.copy(path, photos / path.name)
        settings = dict(backbone=args.backbone, weights="random", resolution=args.resolution,
                        facets=["keys", "tokens", "cls", "attn"], batch_size=args.batch_size, progress=False)

        load_methods()
        schema = ROOT / "workflow" / "schemas" / "config.schema.yaml"
        masks = variant_settings("masks", {"method": "spectral_multik"}, schema)
        saliency = variant_settings("saliency", {"method": "spectral_bipartition"}, schema)

        def run_stages(run: str, reuse: bool) -> tuple[float, ...]:
            start = time.perf_counter()
            index = run_index(photos, scratch / "images.csv", scratch / "skipped.csv", INDEX_SETTINGS)
            indexed = time.perf_counter() - start
            store = scratch / f"{run}.zarr"
            shutil.rmtree(store, ignore_errors=True)  # the workflow deletes a job's output before re-running it
            extracted = timed(extract_features, index.path.tolist(), index.name.tolist(), index.image_id.tolist(),
                              store, image_sizes=list(zip(index.height, index.width)),
                              image_digests=index.sha256.tolist(), reuse=scratch / f"{run}.features-reuse"
                              if reuse else None, **settings)
            masked = timed(run_masks, store, scratch / f"{run}-masks.json", masks, progress=False,
                           reuse=scratch / f"{run}.masks-reuse" if reuse else None)
            shutil.rmtree(scratch / f"{run}-saliency", ignore_errors=True)
            salient = timed(run_saliency, store, scratch / f"{run}-saliency", saliency, progress=False,
                            reuse=scratch / f"{run}.saliency-reuse" if reuse else None)
            return indexed, extracted, masked, salient

        run_stages("run", True)  # the first run fills the caches
        for path in late:
            shutil.copy(path, photos / path.name)
        rerun = run_stages("run", True)
        fresh = run_stages("fresh", False)
        assert FeatureStore(scratch / "run.zarr").names == FeatureStore(scratch / "fresh.zarr").names
        assert sorted(p.name for p in (scratch / "run-saliency").iterdir()) == \
            sorted(p.name for p in (scratch / "fresh-saliency").iterdir())
    print(f"{args.images} images + {added} new ({args.image_size} px, {args.backbone} at {args.resolution} px, "
          f"batch {args.batch_size}):")
    for stage, again, whole in zip(("index", "features", "masks", "saliency"), rerun, fresh):
        print(f"  {stage:<9} re-run {again:7.1f} s   fresh {whole:7.1f} s   ratio {again / whole:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
