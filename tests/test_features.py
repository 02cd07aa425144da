import numpy as np
import pytest
import torch
from PIL import Image

from unseg.backbones import create_backbone
from unseg.features import (
    FeatureStore,
    extract_features,
    forward_facets,
    grid_to_image,
    image_to_grid,
    resize_geometry,
)


def test_resize_geometry_keeps_aspect_and_patch_multiples():
    geometry = resize_geometry((300, 450), short_side=224, patch_size=14)
    assert geometry.grid_size == (16, 24)  # 224/14 = 16; 450 * 224/300 = 336 = 24 patches
    assert geometry.resized_size == (224, 336)
    assert resize_geometry((10, 10), 5, 16).grid_size == (1, 1)


def test_forward_facets_match_manual_attention():
    model, spec = create_backbone("dino_vits16", "random")
    batch = torch.randn(1, 3, 32, 48)
    out = forward_facets(model, batch, (2, 3))
    assert out["keys"].shape == (1, 2, 3, spec.embed_dim) and out["attn"].shape == (1, spec.num_heads, 2, 3)
    # Independent path: timm's non-fused attention keeps nothing either, so recompute q·k from the block input.
    block = model.blocks[-1]
    with torch.no_grad():
        x = model.patch_embed(batch)
        x = model._pos_embed(x)
        x = model.norm_pre(x)
        for previous in model.blocks[:-1]:
            x = previous(x)
        qkv = block.attn.qkv(block.norm1(x)).reshape(1, 7, 3, spec.num_heads, -1)
        q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
        full = ((q @ k.transpose(-2, -1)) * block.attn.scale).softmax(-1)[:, :, 0]  # (1, heads, 7) from CLS
        attention = full[:, :, 1:]
        keys = qkv[:, 1:, 1].reshape(1, 6, -1)
    torch.testing.assert_close(out["attn"].reshape(1, spec.num_heads, 6), attention, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["keys"].reshape(1, 6, -1), keys, atol=1e-5, rtol=1e-4)
    # CLS-to-patch attention sums to one minus the CLS's attention to itself.
    torch.testing.assert_close(out["attn"].sum(dim=(2, 3)), 1 - full[:, :, 0], atol=1e-5, rtol=1e-4)


def write_images(folder, sizes):
    rng = np.random.default_rng(0)
    paths = []
    for index, (height, width) in enumerate(sizes):
        path = folder / f"img{index}.png"
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_store_round_trip_is_lazy_and_complete(tmp_path):
    paths = write_images(tmp_path, [(40, 40), (40, 60), (40, 40)])
    store_path = tmp_path / "f.zarr"
    extract_features(paths, ["a", "b", "c"], [1, 2, 3], store_path, backbone="dino_vits16", weights="random",
                     resolution=32, facets=["keys", "tokens", "cls", "attn"], progress=False)
    store = FeatureStore(store_path)
    assert store.names == ["a", "b", "c"] and store.patch_size == 16
    assert store.facet("b", "keys").shape == (2, 3, 384) and store.facet("a", "cls").shape == (384,)
    assert store.geometry("b").original_size == (40, 60) and store.image_id("c") == 3
    assert store.attrs["complete"] and store.attrs["weights_digest"]
    # The stored keys equal a direct forward in float16 precision.
    model, spec = create_backbone("dino_vits16", "random")
    from unseg.features import preprocess_image
    from unseg.io import read_image

    direct = forward_facets(model, preprocess_image(read_image(paths[1]), store.geometry("b"), spec.mean, spec.std)[None], (2, 3))
    np.testing.assert_allclose(store.facet("b", "keys"), direct["keys"][0].numpy(), atol=2e-2, rtol=1e-2)
    with pytest.raises(KeyError, match="queries"):
        store.facet("a", "queries")
    # Each image is its own chunk: removing another image's data leaves this one readable.
    import shutil

    shutil.rmtree(store_path / "a")
    assert store.facet("b", "tokens").shape == (2, 3, 384)


def test_incomplete_store_is_refused(tmp_path):
    import zarr

    root = zarr.open_group(str(tmp_path / "x.zarr"), mode="w")
    root.attrs["complete"] = False
    with pytest.raises(RuntimeError, match="incomplete"):
        FeatureStore(tmp_path / "x.zarr")


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(Exception, match="broken.jpg"):
        extract_features([str(bad)], ["broken"], [1], tmp_path / "f.zarr", "dino_vits16", "random", resolution=32, progress=False)
    assert not (tmp_path / "f.zarr").exists()


def test_grid_image_round_trip():
    from unseg.features import ResizeGeometry

    geometry = ResizeGeometry((8, 12), (32, 48), (2, 3))
    grid = np.zeros((2, 3), dtype=np.float32)
    grid[0, 0] = 1
    pixels = grid_to_image(grid, geometry)
    assert pixels.shape == (8, 12) and pixels[0, 0] == 1 and pixels[7, 11] == 0
    mask = np.zeros((8, 12), dtype=bool)
    mask[:4, :4] = True
    np.testing.assert_allclose(image_to_grid(mask, (2, 3)), [[1, 0, 0], [0, 0, 0]])
