"""MaskCut (Wang et al., "Cut and Learn", CVPR 2023, §3.1): several objects per image by repeated normalized cuts.

Each cut partitions the image's token graph, whose edges are the cosine similarities of the keys thresholded at τ
(1 above τ, ε = 1e-5 elsewhere), by the second smallest generalized eigenvector x of (D − W) x = λ D x, split at its
mean. The side holding the largest |x| is the foreground, unless it holds three or more of the grid's four corners
(then the other side is); the mask is the connected component of that side holding its peak. Before the next cut
the mask's tokens are removed from the graph (their features zeroed, so they keep only ε edges) and a later mask
never re-uses them. A cut whose mask overlaps the previous one at IoU > 0.5 or covers at most 1 % of the grid ends
the image's cuts (CutLER's ``maskcut.py`` repeats the same cut on the unchanged graph, and accepts the repeat of
one rejected for its overlap, as the previous mask is then empty).

The cuts of a batch of images run together on one device: x = D^{-1/2} u, u the eigenvector of the second largest
eigenvalue of D^{-1/2} W D^{-1/2}, by a full symmetric eigensolve (``torch.linalg.eigh``, float32): the thresholded
graph is not low-rank, and on it the block Krylov solver of :mod:`unseg.ops.eigensolver` can stall (residual 4e-2
on planted tokens); a full solve costs ~75 ms per 1,024-token image on 2 CPU cores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from unseg.core.devices import resolve_device
from unseg.ops.spectral import GridMask, mask_coherence, unit_rows

EDGE_EPSILON = 1e-5  # the weight of a below-τ edge (CutLER's get_affinity_matrix)
CORNERS_FOR_BACKGROUND = 3  # a side with this many of the four grid corners is background (object-centric prior)


def thresholded_affinity(features: torch.Tensor, tau: float, eps: float = EDGE_EPSILON) -> torch.Tensor:
    """(B, N, N) float32 graph of MaskCut: 1 where the cosine similarity of two tokens is above ``tau``, else
    ``eps``. A zero token (removed by an earlier cut) has similarity 0 with every token, itself included.

    Args:
        features: (B, N, D) float tokens.
    """
    unit = torch.nn.functional.normalize(features.float(), dim=-1)
    similarity = unit @ unit.transpose(1, 2)
    return torch.where(similarity > tau, 1.0, eps)  # scalars: no (B, N, N) tensors of ones and epsilons


def foreground_of_cut(fiedler: np.ndarray, grid_size: tuple[int, int]) -> np.ndarray:
    """The (h, w) bool foreground of one cut from its (h·w,) generalized Fiedler vector ``fiedler`` (either sign):
    the vector is turned so that its largest-magnitude entry, the peak, is positive, and split at its mean; the
    side holding the peak is the foreground unless it holds three or more of the grid's corners (then the other
    side, its peak the most negative entry); of that side, the 4-connected component holding its peak.

    CutLER's ``maskcut.py`` applies the corner rule to the side above the mean of the vector as the solver returns
    it, so which rule decides depends on the solver's sign; turning the vector first gives the same mask for x
    and −x."""
    oriented = fiedler if fiedler[np.argmax(np.abs(fiedler))] >= 0 else -fiedler
    side = oriented > oriented.mean()
    grid = side.reshape(grid_size)
    corners = int(grid[0, 0]) + int(grid[0, -1]) + int(grid[-1, 0]) + int(grid[-1, -1])
    if corners >= CORNERS_FOR_BACKGROUND:
        side, oriented = ~side, -oriented
    components, _ = ndimage.label(side.reshape(grid_size))
    return components == components.flat[int(np.argmax(oriented))]


def generalized_fiedler_vectors(weights: torch.Tensor) -> torch.Tensor:
    """(B, N) second smallest generalized eigenvectors x of (D − W) x = λ D x for a batch of (B, N, N) symmetric
    non-negative graphs ``weights`` with positive degrees: x = D^{-1/2} u, u the eigenvector of the second largest
    eigenvalue of D^{-1/2} W D^{-1/2} (sign arbitrary)."""
    inv_sqrt = weights.sum(dim=-1).clamp(min=1e-12).rsqrt()
    normalized = inv_sqrt[:, :, None] * weights
    normalized *= inv_sqrt[:, None, :]  # in place: one (B, N, N) copy of the graph, not two
    _, vectors = torch.linalg.eigh(normalized)  # ascending eigenvalues
    return vectors[..., -2] * inv_sqrt


def maskcut_masks(
    grids: Sequence[np.ndarray],
    num_cuts: int = 3,
    tau: float = 0.15,
    min_area_fraction: float = 0.01,
    max_previous_iou: float = 0.5,
    center: bool = True,
    device: str | torch.device | None = None,
) -> list[list[GridMask]]:
    """MaskCut's masks of a batch of token grids, in the order cut (``k`` = 2, ``cluster`` = the cut's index).
    Each mask's ``coherence`` is computed on the tokens as given (not centred).

    Args:
        grids: per image an (h, w, D) float token grid (CutLER: the last block's keys); images with the same token
            count are cut together.
        num_cuts: N, the most masks per image (CutLER: 3).
        tau: the affinity threshold τ (CutLER §3.1: 0.15).
        min_area_fraction: a mask of at most this fraction of the grid ends the cuts (CutLER: 0.01).
        max_previous_iou: a mask overlapping the previous one above this IoU ends the cuts (CutLER: 0.5).
        center: subtract each image's mean token before the cosine similarities. DINOv2's keys share a component of
            ~93 % of their norm (cosines 0.6-0.96 on COCO photos), so at τ = 0.15 every edge is 1 and the cut is
            noise; centred, their cosines spread over -0.6..0.6 (docs/benchmarks.md, "Objects in 500 COCO photos").

    Returns:
        per image its :class:`~unseg.ops.spectral.GridMask` list, each mask's ``coherence`` the mean cosine
        similarity of its tokens.
    """
    device = resolve_device(device)
    results: list[list[GridMask]] = [[] for _ in grids]
    groups: dict[tuple[int, int], list[int]] = {}
    for position, grid in enumerate(grids):
        groups.setdefault((grid.shape[0] * grid.shape[1], grid.shape[-1]), []).append(position)
    for (count, dim), positions in groups.items():
        features = torch.as_tensor(np.stack([np.asarray(grids[p], np.float32).reshape(count, dim)
                                             for p in positions]), device=device)
        if center:
            features = features - features.mean(dim=1, keepdim=True)
        removed = np.zeros((len(positions), count), dtype=bool)  # tokens of earlier masks
        previous: list[np.ndarray | None] = [None] * len(positions)
        active = list(range(len(positions)))
        for cut in range(num_cuts):
            if not active:
                break
            kept = features[active] * torch.as_tensor(~removed[active], device=device)[..., None]
            fiedlers = generalized_fiedler_vectors(thresholded_affinity(kept, tau)).cpu().numpy()
            still_active = []
            for row, member in enumerate(active):
                position = positions[member]
                grid_size = grids[position].shape[:2]
                mask = foreground_of_cut(fiedlers[row], grid_size)
                last = previous[member]
                overlap = (np.logical_and(mask, last).sum() / max(np.logical_or(mask, last).sum(), 1)
                           if last is not None else 0.0)
                if mask.mean() <= min_area_fraction or overlap > max_previous_iou:
                    continue  # the graph would not change: every further cut would be this one again
                previous[member] = mask
                new = mask & ~removed[member].reshape(grid_size)
                removed[member] |= mask.reshape(-1)
                if new.any():
                    results[position].append(GridMask(mask=new, k=2, cluster=cut, component=0,
                                                      coherence=mask_coherence(unit_rows(grids[position]), new)))
                still_active.append(member)
            active = still_active
    return results
