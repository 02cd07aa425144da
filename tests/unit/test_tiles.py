"""Tiled features (unseg.features.tiles): the windows by hand, the merge against each window's own forward pass, and
a tiled store against the same merge (within float16)."""

import numpy as np
import pytest
import torch
from PIL import Image

from unseg.core.io import read_image
from unseg.features.backbones import create_backbone
from unseg.features.extract import extract_features
from unseg.features.facets import forward_facets
from unseg.features.preprocess import preprocess_image
from unseg.features.store import FeatureStore
from unseg.features.tiles import forward_tiled, tile_starts, tile_windows


def test_tile_starts_by_hand():
    assert tile_starts(10, 4, 3) == [0, 3, 6]  # 6 + 4 = 10: the regular last start already ends at the edge
    assert tile_starts(10, 4, 4) == [0, 4, 6]  # the last window moved back to end at 10
    assert tile_starts(11, 4, 3) == [0, 3, 6, 7]
    assert tile_starts(3, 4, 2) == [0]
    assert tile_starts(4, 4, 1) == [0]
    with pytest.raises(ValueError):
        tile_starts(4, 0, 1)


def test_tile_windows_cover_the_grid_and_clip_to_it():
    # 448 px windows of 14 px patches = 32 cells; overlap 0.25 -> stride 24
    windows = tile_windows((64, 96), 32, 0.25)
    assert [(top, left) for top, left, _, _ in windows] == [(top, left) for top in (0, 24, 32)
                                                            for left in (0, 24, 48, 64)]
    assert {(h, w) for _, _, h, w in windows} == {(32, 32)}
    assert tile_windows((20, 50), 32, 0.5) == [(0, 0, 20, 32), (0, 16, 20, 32), (0, 18, 20, 32)]
    with pytest.raises(ValueError, match="overlap"):
        tile_windows((8, 8), 4, 1.0)


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    model, spec = create_backbone("dino_vits16", "random")
    return model.eval(), spec


def test_one_window_over_the_whole_grid_is_the_plain_forward(vit):
    model, _ = vit
    batch = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        plain = forward_facets(model, batch, (3, 4), ["keys", "tokens", "cls"])
        tiled = forward_tiled(model, batch, (3, 4), ["keys", "tokens", "cls"], {"size": 64, "overlap": 0.25})
    for name in plain:
        torch.testing.assert_close(tiled[name], plain[name])


def test_tiled_cells_are_their_windows_forward_and_the_mean_where_windows_overlap(vit):
    model, _ = vit
    batch = torch.randn(1, 3, 64, 96)  # a 4 x 6 grid of 16 px patches
    facets = ["keys", "values@2", "cls"]
    with torch.no_grad():
        tiled = forward_tiled(model, batch, (4, 6), facets, {"size": 64, "overlap": 0.5})
        # 4-cell windows, stride 2: columns start at 0 and 2, one row of windows
        left = forward_facets(model, batch[:, :, :, :64], (4, 4), facets)
        right = forward_facets(model, batch[:, :, :, 32:], (4, 4), facets)
    for name in ("keys", "values@2"):
        torch.testing.assert_close(tiled[name][:, :, :2], left[name][:, :, :2])  # only the left window
        torch.testing.assert_close(tiled[name][:, :, 4:], right[name][:, :, 2:])  # only the right window
        torch.testing.assert_close(tiled[name][:, :, 2:4], (left[name][:, :, 2:] + right[name][:, :, :2]) / 2)
        # a window's tokens see only their window: the overlap differs from either window alone
        assert not torch.allclose(left[name][:, :, 2:], right[name][:, :, :2])
    torch.testing.assert_close(tiled["cls"], (left["cls"] + right["cls"]) / 2)


def test_attention_cannot_be_tiled(vit):
    model, _ = vit
    with pytest.raises(ValueError, match="attn"):
        forward_tiled(model, torch.randn(1, 3, 32, 32), (2, 2), ["keys", "attn"], {"size": 16})


def test_a_tiled_store_holds_the_merged_windows_within_float16(tmp_path, vit):
    model, spec = vit
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(path)
    store_path = tmp_path / "tiled.zarr"
    extract_features([str(path)], ["photo"], [1], store_path, backbone="dino_vits16", weights="random",
                     resolution=64, facets=["keys", "cls"], workers=0, progress=False,
                     tiles={"size": 48, "overlap": 0.25})
    store = FeatureStore(store_path)
    assert store.attrs["tiles"] == {"size": 48, "overlap": 0.25}
    geometry = store.geometry("photo")
    assert geometry.grid_size == (4, 6)
    pixels = preprocess_image(read_image(path), geometry, spec.mean, spec.std)[None]
    with torch.no_grad():
        expected = forward_tiled(model, pixels, geometry.grid_size, ["keys", "cls"], {"size": 48, "overlap": 0.25})
    np.testing.assert_allclose(store.facet("photo", "keys").astype(np.float32), expected["keys"][0].numpy(),
                               rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(store.facet("photo", "cls").astype(np.float32), expected["cls"][0].numpy(),
                               rtol=2e-3, atol=2e-3)
