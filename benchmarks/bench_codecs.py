"""Which zarr v3 codec should a feature store use: bytes per image, write and read speed, measured.

Reads ``--images`` images' facets from an existing store (float16 as the features stage wrote them), writes each
image's facets again through zarr itself with every candidate codec chain (float16, and the 8-bit codes of
``quantize: uint8``, each uncompressed and under zstd, blosc-lz4 and blosc-zstd with byte shuffle, gzip), and
prints per chain: bytes per image, write MB/s and read MB/s of the decoded float16 data, and the ratios against
the uncompressed chain of the same precision, measured in the same process.

Usage (from the project root, on any store the workflow wrote)::

    .venv/bin/python benchmarks/bench_codecs.py results/horses/features/dinov2-s14.zarr --images 64

The features stage itself writes uncompressed chunks (:func:`unseg.features.store.zarr_array_metadata`); this script
is
the measurement behind that choice (docs/benchmarks.md, "Storage: codecs").
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def codec_chains() -> dict[str, dict]:
    """name → the compressors of a chain (zarr.create_array's ``compressors``), None for uncompressed."""
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

    return {
        "none": None,
        "zstd-1": [ZstdCodec(level=1)],
        "zstd-3": [ZstdCodec(level=3)],
        "blosc-lz4-shuffle": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=2)],
        "blosc-zstd-shuffle": [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=2)],
        "gzip-1": [GzipCodec(level=1)],
    }


def write_images(folder: Path, images: list[dict[str, np.ndarray]], compressors, quantize: bool) -> None:
    """Every image's facets as zarr arrays (one chunk each, as the features stage stores them)."""
    import zarr
    from zarr.codecs import FixedScaleOffset

    from unseg.features.store import quantize_uint8

    root = zarr.open_group(str(folder), mode="w")
    for index, arrays in enumerate(images):
        group = root.create_group(f"img{index}")
        for facet, array in arrays.items():
            filters = None
            if quantize:
                _, offset, scale = quantize_uint8(array)
                filters = [FixedScaleOffset(offset=offset, scale=scale, dtype="<f2", astype="|u1")]
            target = group.create_array(facet, shape=array.shape, chunks=array.shape, dtype="f2",
                                        compressors=compressors, filters=filters)
            target[...] = array


def read_images(folder: Path, count: int, facets: list[str]) -> float:
    """Read every array back as float32 (what FeatureStore.facet does); returns a checksum so nothing is skipped."""
    import zarr

    root = zarr.open_group(str(folder), mode="r")
    total = 0.0
    for index in range(count):
        group = root[f"img{index}"]
        for facet in facets:
            total += float(np.asarray(group[facet][...], dtype=np.float32).ravel()[0])
    return total


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store", type=Path, help="a feature store the workflow wrote (float16)")
    parser.add_argument("--images", type=int, default=64, help="how many of its images to rewrite")
    parser.add_argument("--repeat", type=int, default=3, help="reads per chain (the best is kept)")
    parser.add_argument("--tmp", type=Path, default=None, help="where to write the copies (default: the system's temp)")
    args = parser.parse_args()

    from unseg.features.store import FeatureStore

    store = FeatureStore(args.store)
    facets = list(store.attrs["facets"])
    names = store.names[: args.images]
    images = [{facet: store.facet(name, facet).astype(np.float16) for facet in facets} for name in names]
    raw_mb = sum(array.nbytes for arrays in images for array in arrays.values()) / 1e6
    print(f"{args.store}: {len(names)} images, facets {facets}, {raw_mb / len(names):.3f} MB of float16 per image\n")
    print("| precision | codec | bytes / image | × uncompressed | write MB/s | read MB/s | read × uncompressed |")
    print("|---|---|---|---|---|---|---|")
    work = Path(tempfile.mkdtemp(dir=args.tmp, prefix="unseg-codecs-"))
    try:
        for quantize in (False, True):
            reference = None
            for name, compressors in codec_chains().items():
                folder = work / f"{'u8' if quantize else 'f16'}-{name}.zarr"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    start = time.perf_counter()
                    write_images(folder, images, compressors, quantize)
                    write_s = time.perf_counter() - start
                    read_s = float("inf")
                    for _ in range(args.repeat):
                        start = time.perf_counter()
                        read_images(folder, len(images), facets)
                        read_s = min(read_s, time.perf_counter() - start)
                size = folder_bytes(folder) / len(images)
                if reference is None:
                    reference = (size, read_s)
                print(f"| {'uint8' if quantize else 'float16'} | {name} | {size:,.0f} | {size / reference[0]:.3f} | "
                      f"{raw_mb / write_s:.0f} | {raw_mb / read_s:.0f} | {reference[1] / read_s:.2f} |", flush=True)
                shutil.rmtree(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
