import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unseg.core.geometry import grid_to_image, image_to_grid, resize_geometry
from unseg.features.backbones import BACKBONES, create_backbone
from unseg.features.extract import extract_features
from unseg.features.facets import forward_facets
from unseg.features.store import FeatureStore


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
    from unseg.core.io import read_image
    from unseg.features.preprocess import preprocess_image

    direct = forward_facets(
        model, preprocess_image(read_image(paths[1]), store.geometry("b"), spec.mean, spec.std)[None], (2, 3)
    )
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
        extract_features([str(bad)], ["broken"], [1], tmp_path / "f.zarr", "dino_vits16", "random", resolution=32,
                         progress=False)
    assert not (tmp_path / "f.zarr").exists()


def test_grid_image_round_trip():
    from unseg.core.geometry import ResizeGeometry

    geometry = ResizeGeometry((8, 12), (32, 48), (2, 3))
    grid = np.zeros((2, 3), dtype=np.float32)
    grid[0, 0] = 1
    pixels = grid_to_image(grid, geometry)
    assert pixels.shape == (8, 12) and pixels[0, 0] == 1 and pixels[7, 11] == 0
    mask = np.zeros((8, 12), dtype=bool)
    mask[:4, :4] = True
    np.testing.assert_allclose(image_to_grid(mask, (2, 3)), [[1, 0, 0], [0, 0, 0]])


# ---------------------------------------------------------------------------------------------- crop layout


def test_crop_geometry_keeps_the_exact_aspect_and_crops_the_remainder():
    # 300x450 → short side 100: 100x150 resized; 16-px patches → 6x9 cells = 96x144 kept from the top-left.
    geometry = resize_geometry((300, 450), short_side=100, patch_size=16, layout="crop")
    assert geometry.resized_size == (100, 150) and geometry.grid_size == (6, 9)
    assert geometry.box == (0, 0, 96, 144) and geometry.input_size == (96, 144)
    assert resize_geometry((300, 450), 100, 16).box == (0, 0, 96, 144)  # resize layout: the whole (rounded) image
    with pytest.raises(ValueError, match="layout"):
        resize_geometry((10, 10), 16, 16, layout="pad")


def test_grid_to_image_honours_the_crop_by_hand():
    from unseg.core.geometry import ResizeGeometry

    # Original 10x10 shown at 20x20; the ViT saw the top-left 16x16 (2x2 cells of 8 px). Cell centres sit at
    # resized 4 and 12, i.e. original 2 and 6; pixel y has centre y + 0.5, so its grid coordinate is (y - 1.5) / 4.
    geometry = ResizeGeometry((10, 10), (20, 20), (2, 2), (0, 0, 16, 16))
    grid = np.array([[0.0, 1.0], [2.0, 3.0]])
    pixels = grid_to_image(grid, geometry)
    assert pixels.shape == (10, 10)
    coordinate = np.clip((np.arange(10) - 1.5) / 4, 0, 1)  # edge replication beyond the outer cell centres
    expected = 2 * coordinate[:, None] + coordinate[None, :]
    np.testing.assert_allclose(pixels, expected, atol=1e-6)
    assert pixels[9, 9] == 3  # the cropped-off bottom-right strip repeats the edge cell
    # Without a crop the mapping is torch's bilinear resize (align_corners=False).
    plain = ResizeGeometry((13, 7), (28, 14), (2, 1))
    values = np.random.default_rng(0).random((3, 2, 1)).astype(np.float32)
    reference = torch.nn.functional.interpolate(torch.from_numpy(values)[None], size=(13, 7), mode="bilinear",
                                                align_corners=False)[0].numpy()
    np.testing.assert_allclose(grid_to_image(values, plain), reference, atol=1e-6)


def test_image_to_grid_with_a_crop_by_hand():
    from unseg.core.geometry import ResizeGeometry

    # Same geometry as above: cell rows cover original rows [0, 4) and [4, 8); rows 8-9 were cropped off.
    geometry = ResizeGeometry((10, 10), (20, 20), (2, 2), (0, 0, 16, 16))
    mask = np.zeros((10, 10), dtype=bool)
    mask[8:, :] = True  # only in the cropped-off strip
    mask[0:2, 0:4] = True  # half of cell (0, 0)
    np.testing.assert_allclose(image_to_grid(mask, geometry), [[0.5, 0], [0, 0]])
    # Without a crop and with divisible sizes the footprints are adaptive pooling's.
    plain = ResizeGeometry((8, 12), (32, 48), (2, 3))
    soft = np.random.default_rng(1).random((8, 12))
    np.testing.assert_allclose(image_to_grid(soft, plain), image_to_grid(soft, (2, 3)), atol=1e-6)


# ---------------------------------------------------------------------------------------------- facets


def test_intermediate_block_facets_match_a_manual_forward():
    model, spec = create_backbone("dino_vits16", "random")
    batch = torch.randn(2, 3, 32, 48)
    out = forward_facets(model, batch, (2, 3), ["keys", "keys@1", "tokens@-11", "attn@1", "cls@1", "keys@-1"])
    with torch.no_grad():
        x = model.norm_pre(model._pos_embed(model.patch_embed(batch)))
        x0 = model.blocks[0](x)
        block = model.blocks[1]
        qkv = block.attn.qkv(block.norm1(x0)).reshape(2, 7, 3, spec.num_heads, -1)
        q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
        attention = ((q @ k.transpose(-2, -1)) * block.attn.scale).softmax(-1)[:, :, 0, 1:]
        x1 = block(x0)
    torch.testing.assert_close(out["keys@1"].reshape(2, 6, -1), qkv[:, 1:, 1].reshape(2, 6, -1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["attn@1"].reshape(2, spec.num_heads, 6), attention, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["tokens@-11"].reshape(2, 6, -1), x1[:, 1:], atol=1e-5, rtol=1e-4)  # 12 blocks
    torch.testing.assert_close(out["cls@1"], x1[:, 0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["keys@-1"], out["keys"])  # "@-1" is the last block
    assert not torch.allclose(out["keys@1"], out["keys"])
    with pytest.raises(ValueError, match="out of range"):
        forward_facets(model, batch, (2, 3), ["keys@12"])
    with pytest.raises(ValueError, match="unknown facet"):
        forward_facets(model, batch, (2, 3), ["logits"])


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_registry_entry_extracts_into_a_store(tmp_path, name):
    patch = BACKBONES[name].patch_size
    paths = write_images(tmp_path, [(2 * patch, 3 * patch)])
    facets = ["keys", "queries", "values", "tokens", "cls", "attn", "keys@0"]
    extract_features(paths, ["only"], [7], tmp_path / "f.zarr", backbone=name, weights="random",
                     resolution=2 * patch, facets=facets, workers=0, progress=False)
    store = FeatureStore(tmp_path / "f.zarr")
    spec = BACKBONES[name]
    assert store.facet("only", "keys@0").shape == (2, 3, spec.embed_dim)
    assert store.facet("only", "attn").shape == (spec.num_heads, 2, 3)
    assert store.root["only"]["tokens"].dtype == np.float16
    assert all(np.isfinite(store.facet("only", facet)).all() for facet in facets)


# ---------------------------------------------------------------------------------------------- shards, laziness


def _array_bytes(path):
    import warnings

    import zarr

    root = zarr.open_group(str(path), mode="r")
    with warnings.catch_warnings():  # order.json sits in the store on purpose (not a zarr node)
        warnings.filterwarnings("ignore", message="Object at .* is not recognized as a component")
        return {(name, facet): (array.dtype, array[...].tobytes(), dict(group.attrs))
                for name, group in root.groups() for facet, array in group.arrays()}


def test_two_shards_equal_one_extraction_bit_for_bit(tmp_path):
    from unseg.features.extract import assemble_shards, shard_plan

    paths = write_images(tmp_path, [(40, 40), (40, 60), (40, 40), (40, 60), (40, 40)])
    names, ids = ["a", "b", "c", "d", "e"], [1, 2, 3, 4, 5]
    settings = dict(backbone="dino_vits16", weights="random", resolution=32, facets=["keys", "cls", "attn@3"],
                    batch_size=2, layout="crop", progress=False)
    extract_features(paths, names, ids, tmp_path / "one.zarr", workers=0, **settings)
    shards = [extract_features(paths, names, ids, tmp_path / f"{i}.zarr", shard=(i, 2), workers=1, **settings)
              for i in range(2)]
    # Batches of the whole list: [a, c], [e] (40x40) and [b, d] (40x60); shards own whole batches.
    plan = shard_plan(paths, names, ids, [(40, 40), (40, 60)] * 2 + [(40, 40)], "dino_vits16", 32, "crop", 2, 2)
    assert [[image["name"] for image in shard] for shard in plan] == [["a", "c", "e"], ["b", "d"]]
    with pytest.raises(RuntimeError, match="incomplete"):
        FeatureStore(shards[0])  # a shard alone is never a store downstream may read
    with pytest.raises(ValueError, match="not all 2 shards"):
        assemble_shards(shards[:1], tmp_path / "half.zarr")
    joined = assemble_shards(shards, tmp_path / "joined.zarr")
    assert _array_bytes(joined) == _array_bytes(tmp_path / "one.zarr")
    store = FeatureStore(joined)
    assert store.names == names and store.attrs["num_images"] == 5 and store.attrs["layout"] == "crop"
    # Hard links: the joined store shares the shard's chunk files instead of copying them.
    chunk = Path(shards[0]) / "a" / "keys" / "c" / "0" / "0" / "0"
    assert (joined / "a" / "keys" / "c" / "0" / "0" / "0").stat().st_ino == chunk.stat().st_ino


def test_reading_one_image_reads_only_its_files(tmp_path, monkeypatch):
    from zarr.storage import LocalStore

    paths = write_images(tmp_path, [(32, 32), (32, 32), (32, 48)])
    extract_features(paths, ["a", "b", "c"], [1, 2, 3], tmp_path / "f.zarr", backbone="dino_vits16",
                     weights="random", resolution=32, facets=["keys", "tokens"], workers=0, progress=False)
    store = FeatureStore(tmp_path / "f.zarr")
    read_keys = []
    original_get = LocalStore.get

    async def counting_get(self, key, *args, **kwargs):
        read_keys.append(key)
        return await original_get(self, key, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "get", counting_get)
    assert store.facet("b", "keys").shape == (2, 2, 384)
    assert store.geometry("b").grid_size == (2, 2)
    assert read_keys and all(key.startswith("b/") for key in read_keys), read_keys


def test_direct_writer_metadata_is_what_zarr_writes(tmp_path):
    import zarr

    from unseg.features.store import zarr_array_metadata

    for shape in [(3, 4, 5), (7,)]:
        data = np.arange(np.prod(shape), dtype=np.float16).reshape(shape)
        zarr.open_group(str(tmp_path / "z.zarr"), mode="w").create_array("x", data=data, chunks=shape, compressors=None)
        assert json.loads((tmp_path / "z.zarr/x/zarr.json").read_text()) == zarr_array_metadata(shape)
        chunk = tmp_path / "z.zarr/x/c" / Path(*["0"] * len(shape))
        assert chunk.read_bytes() == data.astype("<f2").tobytes()


def test_the_8_bit_writer_metadata_and_codes_are_what_zarr_writes_and_decodes(tmp_path):
    import warnings

    import zarr
    from zarr.codecs import FixedScaleOffset

    from unseg.features.store import quantize_uint8, zarr_array_metadata

    data = (np.random.default_rng(0).normal(size=(3, 4, 5)) * 3).astype(np.float16)
    codes, offset, scale = quantize_uint8(data)
    assert codes.dtype == np.uint8 and codes.min() == 0 and codes.max() == 255
    assert offset == float(data.min()) and scale == pytest.approx(255 / (float(data.max()) - float(data.min())))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        array = zarr.open_group(str(tmp_path / "z.zarr"), mode="w").create_array(
            "x", shape=data.shape, chunks=data.shape, dtype="f2", compressors=None,
            filters=[FixedScaleOffset(offset=offset, scale=scale, dtype="<f2", astype="|u1")])
        array[...] = data
        decoded = zarr.open_array(str(tmp_path / "z.zarr/x"))[...]
    assert json.loads((tmp_path / "z.zarr/x/zarr.json").read_text()) == zarr_array_metadata(data.shape, (offset, scale))
    # zarr's own encoding rounds in float16; ours in float64: the codes differ by at most one step
    written = np.frombuffer((tmp_path / "z.zarr/x/c/0/0/0").read_bytes(), dtype=np.uint8).reshape(data.shape)
    assert np.abs(written.astype(int) - codes.astype(int)).max() <= 1
    step = (float(data.max()) - float(data.min())) / 255
    assert np.abs(decoded.astype(np.float64) - data).max() <= step  # zarr's round trip, for reference
    ours = codes / scale + offset
    assert np.abs(ours - data.astype(np.float64)).max() <= step / 2 + 1e-9
    assert quantize_uint8(np.full((2, 2), 3.0))[1:] == (3.0, 1.0)  # a constant array


def test_quantizing_a_batch_on_the_device_gives_exactly_the_reference_codes_offsets_and_scales():
    from unseg.features.store import quantize_uint8, quantize_uint8_rows

    rows = (np.random.default_rng(1).normal(size=(4, 7, 9, 5)) * [[[[3.0]]], [[[0.01]]], [[[200.0]]], [[[1.0]]]])
    rows = rows.astype(np.float16)
    rows[3] = 2.5  # a constant row: scale 1, every code 0
    codes, offsets, scales = quantize_uint8_rows(torch.from_numpy(rows))
    assert codes.dtype == torch.uint8 and codes.shape == rows.shape
    assert offsets.dtype == scales.dtype == torch.float64
    for row in range(len(rows)):
        reference_codes, reference_offset, reference_scale = quantize_uint8(rows[row])
        np.testing.assert_array_equal(codes[row].numpy(), reference_codes)
        assert float(offsets[row]) == reference_offset and float(scales[row]) == reference_scale
    assert float(scales[3]) == 1.0 and int(codes[3].max()) == 0


def test_a_uint8_store_decodes_to_the_reference_quantization_of_the_float16_store(tmp_path):
    from unseg.features.store import quantize_uint8

    paths = write_images(tmp_path, [(40, 40), (40, 60), (40, 40)])
    names = ["a", "b", "c"]
    stores = {}
    for quantize in (None, "uint8"):
        stores[quantize] = tmp_path / f"{quantize}.zarr"
        extract_features(paths, names, [1, 2, 3], stores[quantize], backbone="dino_vits16", weights="random",
                         resolution=48, facets=["keys", "cls"], batch_size=2, workers=0, progress=False,
                         quantize=quantize)
    float16, uint8 = FeatureStore(stores[None]), FeatureStore(stores["uint8"])
    for name in names:
        for facet in ("keys", "cls"):
            codes, offset, scale = quantize_uint8(float16.facet(name, facet).astype(np.float16))
            expected = (codes / scale + offset).astype(np.float16).astype(np.float32)
            np.testing.assert_array_equal(uint8.facet(name, facet), expected)


def test_the_zstd_writer_metadata_and_chunks_are_what_zarr_writes_and_decodes(tmp_path):
    import warnings

    import zarr
    from zarr.codecs import FixedScaleOffset, ZstdCodec

    from unseg.features.store import chunk_compressor, quantize_uint8, zarr_array_metadata

    data = (np.random.default_rng(0).normal(size=(6, 4, 5)) * 3).astype(np.float16)
    codes, offset, scale = quantize_uint8(data)
    for name, offset_scale, payload in (("f16", None, data.astype("<f2").tobytes()),
                                        ("u8", (offset, scale), codes.tobytes())):
        with warnings.catch_warnings():  # zarr warns that numcodecs codecs are outside the v3 spec
            warnings.simplefilter("ignore")
            filters = None if offset_scale is None else [FixedScaleOffset(offset=offset, scale=scale, dtype="<f2",
                                                                          astype="|u1")]
            zarr.open_group(str(tmp_path / "z.zarr"), mode="a").create_array(
                name, shape=data.shape, chunks=data.shape, dtype="f2", compressors=[ZstdCodec(level=1)],
                filters=filters)
        metadata = zarr_array_metadata(data.shape, offset_scale, "zstd")
        assert json.loads((tmp_path / f"z.zarr/{name}/zarr.json").read_text()) == metadata
        # our chunk, under zarr's own metadata: zarr decodes it to the data (8 bits: within half a step)
        (tmp_path / f"z.zarr/{name}/c/0/0/0").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f"z.zarr/{name}/c/0/0/0").write_bytes(chunk_compressor("zstd").encode(payload))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            decoded = zarr.open_array(str(tmp_path / f"z.zarr/{name}"))[...]
        tolerance = 0 if offset_scale is None else (float(data.max()) - float(data.min())) / 510 + 0.01
        assert np.abs(decoded.astype(np.float64) - data).max() <= tolerance, name


def test_a_zstd_store_reads_back_what_the_uncompressed_one_holds_in_fewer_bytes(tmp_path):
    paths = write_images(tmp_path, [(40, 40), (40, 60)])
    kwargs = dict(backbone="dino_vits16", weights="random", resolution=32, facets=["keys", "attn"], progress=False)
    extract_features(paths, ["a", "b"], [1, 2], tmp_path / "u8.zarr", quantize="uint8", **kwargs)
    extract_features(paths, ["a", "b"], [1, 2], tmp_path / "u8z.zarr", quantize="uint8", compress="zstd", **kwargs)
    plain, packed = FeatureStore(tmp_path / "u8.zarr"), FeatureStore(tmp_path / "u8z.zarr")
    assert packed.attrs["compress"] == "zstd" and "compress" not in plain.attrs
    assert packed.attrs["resume_key"] != plain.attrs["resume_key"]
    for name in ("a", "b"):
        for facet in ("keys", "attn"):
            np.testing.assert_array_equal(packed.facet(name, facet), plain.facet(name, facet))

    def chunk_bytes(store):
        return sum(path.stat().st_size for path in Path(store).rglob("*")
                   if path.is_file() and "c" in path.relative_to(store).parts)

    assert chunk_bytes(tmp_path / "u8z.zarr") < chunk_bytes(tmp_path / "u8.zarr")
    with pytest.raises(ValueError, match="compress 'lz4'"):
        extract_features(paths, ["a", "b"], [1, 2], tmp_path / "x.zarr", compress="lz4", **kwargs)


def test_an_8_bit_store_is_half_the_bytes_and_reads_within_half_a_step(tmp_path):
    paths = write_images(tmp_path, [(40, 40), (40, 60)])
    kwargs = dict(backbone="dino_vits16", weights="random", resolution=32, facets=["keys", "cls", "attn"],
                  progress=False)
    extract_features(paths, ["a", "b"], [1, 2], tmp_path / "f16.zarr", **kwargs)
    extract_features(paths, ["a", "b"], [1, 2], tmp_path / "u8.zarr", quantize="uint8", **kwargs)
    full, small = FeatureStore(tmp_path / "f16.zarr"), FeatureStore(tmp_path / "u8.zarr")
    assert small.attrs["quantize"] == "uint8" and "quantize" not in full.attrs
    for name in ("a", "b"):
        for facet in ("keys", "cls", "attn"):
            reference, read = full.facet(name, facet), small.facet(name, facet)
            step = (reference.max() - reference.min()) / 255
            # half a step of the code, plus float16's own rounding of the decoded value
            assert np.abs(read - reference).max() <= step / 2 + np.abs(reference).max() * 2 ** -10, (name, facet)

    def chunk_bytes(store):  # every chunk file (under a c/ folder), metadata left out
        return sum(path.stat().st_size for path in Path(store).rglob("*")
                   if path.is_file() and "c" in path.relative_to(store).parts)

    values = sum(full.facet(name, facet).size for name in ("a", "b") for facet in ("keys", "cls", "attn"))
    assert chunk_bytes(tmp_path / "u8.zarr") == values and chunk_bytes(tmp_path / "f16.zarr") == 2 * values
    with pytest.raises(ValueError, match="quantize 'int4'"):
        extract_features(paths, ["a", "b"], [1, 2], tmp_path / "x.zarr", quantize="int4", **kwargs)


def test_a_reextraction_reuses_the_unchanged_images_and_equals_a_fresh_one(tmp_path, capsys):
    import hashlib
    import os

    paths = write_images(tmp_path, [(40, 40)] * 4)
    digest = [hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in paths]
    settings = dict(backbone="dino_vits16", weights="random", resolution=32, facets=["keys", "cls"], batch_size=4,
                    progress=False, workers=0)
    cache = tmp_path / "v.reuse"
    extract_features(paths[:3], ["a", "b", "c"], [1, 2, 3], tmp_path / "v.zarr", image_digests=digest[:3],
                     reuse=cache, **settings)
    assert len(list(cache.iterdir())) == 3
    chunk = tmp_path / "v.zarr" / "c" / "keys" / "c" / "0" / "0" / "0"
    inode = chunk.stat().st_ino
    shutil.rmtree(tmp_path / "v.zarr")  # as the workflow does before re-running a job
    # "a" is gone, "b" edited, "c" unchanged (now id 1), "d" new
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(paths[1])
    digest[1] = hashlib.sha256(Path(paths[1]).read_bytes()).hexdigest()
    capsys.readouterr()
    extract_features(paths[1:], ["b", "c", "d"], [1, 2, 3], tmp_path / "v.zarr", image_digests=digest[1:],
                     reuse=cache, **settings)
    assert "1 image(s) reused from the last extraction (same file and settings), 2 to compute" in \
        capsys.readouterr().err
    assert chunk.stat().st_ino == inode  # linked back in, not recomputed
    extract_features(paths[1:], ["b", "c", "d"], [1, 2, 3], tmp_path / "fresh.zarr", **settings)
    reused, fresh = _array_bytes(tmp_path / "v.zarr"), _array_bytes(tmp_path / "fresh.zarr")
    assert reused.keys() == fresh.keys()
    assert reused[("c", "keys")] == fresh[("c", "keys")] and reused[("c", "cls")] == fresh[("c", "cls")]
    # b and d were computed in a batch of 2, not of 3 as in the fresh run: equal within float16 rounding
    rerun_store, fresh_store = FeatureStore(tmp_path / "v.zarr"), FeatureStore(tmp_path / "fresh.zarr")
    for name in ("b", "d"):
        for facet in ("keys", "cls"):
            np.testing.assert_allclose(rerun_store.facet(name, facet).astype(np.float32),
                                       fresh_store.facet(name, facet).astype(np.float32), rtol=2e-3, atol=2e-3)
        assert rerun_store.geometry(name) == fresh_store.geometry(name)
    assert rerun_store.image_id("c") == 2
    assert len(os.listdir(cache)) == 3  # the cache holds this store's images only
    # other settings reuse nothing
    shutil.rmtree(tmp_path / "v.zarr")
    extract_features(paths[1:], ["b", "c", "d"], [1, 2, 3], tmp_path / "v.zarr", image_digests=digest[1:],
                     reuse=cache, **{**settings, "resolution": 48})
    assert "0 image(s) reused" in capsys.readouterr().err
