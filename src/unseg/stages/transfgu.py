"""TransFGU's top-down pseudo-labels (Yin et al., ECCV 2022, section 3.2): concepts from crops, Grad-CAM maps.

1. **Concepts.** The CLS tokens of sliding-window crops (:mod:`unseg.features.crops`, a features variant of their own)
are
   split by a foreground prior: the last block's CLS attention (mean over heads) binarised at its mean; a crop is
   foreground when more than 50 % of it is attended, background when more than 80 % is not (section 4.2). k-means
   (Euclidean, section 3.2) runs on each group separately; the centroids are the concepts S (K, D).
2. **Response maps** (Eq. 5-7). For every image, the gradient of the cosine similarity between its CLS token and
   each concept S_k with respect to the last block's CLS-to-patch attention A (mean over heads) is added to A:
   M^k = A + Grad-CAM_k. As in the authors' code (damo-cv/TransFGU, ``Segmenter.get_grad_mask``), A is scaled to a
   maximum of 1, only the positive gradient is added, restricted to the cells holding ``gradient_mass`` (0.8) of it,
   and M^k is 0 wherever the gradient is negative (attending there would lower the similarity to S_k).
3. **Labels** (Eq. 6, 8). The maps are min-max normalised per image (as the authors' loss normalises them);
   with a background, M^bg = ReLU(T_bg − max_k M^k), T_bg = 0.1; the label is the arg max over (M^bg, M^1..M^K).

Only the last block's CLS row matters for the CLS token's gradient (LayerNorm and the MLP act per token), so the
map of one image costs one no-grad forward and K backward passes through a single token's path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

BACKGROUND_THRESHOLD = 0.1  # TransFGU Eq. 8: T_bg, "the max probability of background", 0.1 in all experiments


def foreground_prior(attention: np.ndarray) -> np.ndarray:
    """TransFGU's foreground prior (section 4.2): the CLS attention binarised at its mean.

    Args:
        attention: (heads, h, w) or (h, w) float, the last block's CLS-to-patch attention.

    Returns:
        (h, w) bool, True where the head-averaged attention exceeds its mean.
    """
    attention = np.asarray(attention, dtype=np.float64)
    mean_map = attention.mean(axis=0) if attention.ndim == 3 else attention
    return mean_map > mean_map.mean()


def box_coverage(mask: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The fraction of each box's area that lies inside ``mask``, the mask's cells tiling the unit square.

    Args:
        mask: (h, w) bool or float in [0, 1] (cell (i, j) covers [j/w, (j+1)/w] × [i/h, (i+1)/h]).
        boxes: (n, 4) float boxes (x0, y0, x1, y1) as fractions of the image's width and height.

    Returns:
        (n,) float64 in [0, 1] (exact area overlap, not sampled).
    """
    mask = np.asarray(mask, dtype=np.float64)
    height, width = mask.shape
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)

    def overlaps(low: np.ndarray, high: np.ndarray, cells: int) -> np.ndarray:  # (n, cells) lengths
        edges = np.arange(cells + 1) / cells
        return np.clip(np.minimum(high[:, None], edges[None, 1:]) - np.maximum(low[:, None], edges[None, :-1]), 0,
                       None)

    along_x = overlaps(boxes[:, 0], boxes[:, 2], width)
    along_y = overlaps(boxes[:, 1], boxes[:, 3], height)
    inside = np.einsum("ni,ij,nj->n", along_y, mask, along_x)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.divide(inside, area, out=np.zeros_like(inside), where=area > 0)


def split_crops(coverage: np.ndarray, foreground_fraction: float = 0.5, background_fraction: float = 0.8,
                ) -> tuple[np.ndarray, np.ndarray]:
    """Foreground and background crops by the prior's coverage (section 4.2: "more than 50 % of pixels belonging
    to" the prior, "more than 80 % of pixels that belong to" its complement). Crops in between are neither.

    Returns:
        (foreground, background): (n,) bool each.
    """
    coverage = np.asarray(coverage, dtype=np.float64)
    return coverage > foreground_fraction, (1.0 - coverage) > background_fraction


def top_mass(values: torch.Tensor, mass: float) -> torch.Tensor:
    """The largest entries of each row of non-negative ``values`` (…, n) that together hold ``mass`` of the row's
    sum (the authors' ``binarize_mask``, from DINO's attention visualisation): a bool tensor of the same shape."""
    ordered, order = values.sort(dim=-1)
    cumulative = ordered.cumsum(-1) / ordered.sum(-1, keepdim=True).clamp(min=1e-30)
    keep_sorted = cumulative > (1.0 - mass)
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def response_maps(attention: torch.Tensor, gradients: torch.Tensor, gradient_mass: float = 0.8) -> torch.Tensor:
    """Eq. 7: each concept's response map from the attention and the similarity gradients (module docstring).

    Args:
        attention: (h, w) float, the head-averaged CLS-to-patch attention.
        gradients: (K, h, w) float, d cos(x_cls, S_k) / d attention (head-averaged).
        gradient_mass: the positive gradient is kept on the cells holding this fraction of it (authors' code: 0.8).

    Returns:
        (K, h, w) float32 maps M^k.
    """
    concepts, height, width = gradients.shape
    scaled = attention.float() / attention.max().clamp(min=1e-30)
    positive = gradients.float().clamp(min=0).reshape(concepts, -1)
    kept = positive * top_mass(positive, gradient_mass)
    maps = scaled[None] + kept.reshape(concepts, height, width)
    return maps.masked_fill(gradients < 0, 0.0)


def soft_labels(maps: torch.Tensor, background: bool, threshold: float = BACKGROUND_THRESHOLD) -> torch.Tensor:
    """Eq. 6 and 8: the per-image min-max normalised maps, with the background map first when ``background``.

    Args:
        maps: (K, h, w) response maps.

    Returns:
        (K + 1, h, w) float32: channel 0 = ReLU(T_bg − max_k M^k) (all zeros without a background), channels 1..K
        the normalised M^k; the pseudo-label is the arg max over channels (0 = background).
    """
    low, high = maps.min(), maps.max()
    normalised = (maps - low) / (high - low).clamp(min=1e-12)
    if background:
        back = F.relu(threshold - normalised.max(dim=0, keepdim=True).values)
    else:
        back = torch.full_like(normalised[:1], -1.0)  # never the arg max: the scene has no background class
    return torch.cat([back, normalised]).float()


class ConceptCam:
    """Grad-CAM of concepts on a timm ViT's last attention block (Eq. 5-7).

    Args:
        model: a timm VisionTransformer in eval mode (frozen; only the gradient w.r.t. the attention is taken).
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()
        self.prefix = int(getattr(model, "num_prefix_tokens", 1))

    def last_block_input(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images → (B, N, D) tokens entering the last block (no gradient; the last block
        itself is not run here: :meth:`cls_from_attention` runs it for the CLS token alone)."""
        model = self.model
        with torch.no_grad():
            tokens = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
            for block in model.blocks[:-1]:
                tokens = block(tokens)
        return tokens

    def cls_from_attention(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last block on the CLS token alone, its attention row a leaf tensor that requires grad.

        Args:
            tokens: (B, N, D) input of the last block.

        Returns:
            (cls (B, D) after the final norm, attention (B, heads, N) the CLS row, softmax-normalised).
        """
        block = self.model.blocks[-1]
        attention = block.attn
        batch, count, dim = tokens.shape
        with torch.no_grad():
            normed = block.norm1(tokens)
            qkv = attention.qkv(normed).reshape(batch, count, 3, attention.num_heads, attention.head_dim)
            queries, keys, values = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            queries, keys = attention.q_norm(queries), attention.k_norm(keys)
            logits = (queries[:, :, :1] * attention.scale) @ keys.transpose(-2, -1)  # (B, heads, 1, N)
        row = logits[:, :, 0].float().softmax(dim=-1).detach().requires_grad_(True)
        mixed = (row[:, :, None].to(values.dtype) @ values).transpose(1, 2).reshape(batch, 1, -1)  # (B, 1, D)
        if hasattr(attention, "norm"):
            mixed = attention.norm(mixed)
        mixed = attention.proj(mixed)
        cls = tokens[:, :1] + block.ls1(mixed)
        cls = cls + block.ls2(block.mlp(block.norm2(cls)))
        return self.model.norm(cls)[:, 0], row

    def attention_and_gradients(self, image: torch.Tensor, concepts: torch.Tensor, grid: Sequence[int],
                                ) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's head-averaged CLS attention and, per concept, d cos(x_cls, S_k) / d attention.

        Args:
            image: (1, 3, H, W) normalised float32.
            concepts: (K, D) float32 concept features S.
            grid: (h, w) token grid of the image.

        Returns:
            (attention (h, w), gradients (K, h, w)) float32 on the CPU.
        """
        tokens = self.last_block_input(image)
        with torch.enable_grad():
            cls, row = self.cls_from_attention(tokens)
            similarity = F.normalize(cls.float(), dim=-1) @ F.normalize(concepts.to(cls.device).float(), dim=-1).T
            gradients = []
            for k in range(similarity.shape[1]):
                (grad,) = torch.autograd.grad(similarity[0, k], row, retain_graph=k + 1 < similarity.shape[1])
                gradients.append(grad[0].mean(0)[self.prefix:])
        height, width = int(grid[0]), int(grid[1])
        attention = row.detach()[0].mean(0)[self.prefix:].reshape(height, width)
        return attention.cpu(), torch.stack(gradients).reshape(-1, height, width).cpu()
