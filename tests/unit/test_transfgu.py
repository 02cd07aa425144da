"""TransFGU's top-down pseudo-labels: crop geometry, the foreground prior's crop split, Grad-CAM maps (Eq. 5-8), the
crops store and the ``transfgu`` pseudo-label method end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from unseg.features.crops import extract_crop_features, sliding_window_boxes, window_starts
from unseg.features.store import FeatureStore
from unseg.stages.transfgu import (
    ConceptCam,
    box_coverage,
    foreground_prior,
    response_maps,
    soft_labels,
    split_crops,
    top_mass,
)


def test_window_starts_cover_the_side_and_end_flush():
    assert window_starts(100, 50, 25) == [0, 25, 50]
    assert window_starts(100, 30, 15) == [0, 15, 30, 45, 60, 70]  # 75 would overrun: a last window flush at 70
    assert window_starts(40, 50, 25) == [0]


def test_sliding_window_counts_and_boxes_for_one_image_size():
    """A 100 x 200 image (short side 100): beta 0.5 → 50-px windows every 25 px: 3 rows x 7 columns; 0.4 → 40 px
    every 20: 4 x 9; 0.3 → 30 px every 15, plus a flush last window: 6 x 13; 0.2 → 20 px every 10: 9 x 19."""
    boxes = sliding_window_boxes(100, 200)
    assert len(boxes) == 21 + 36 + 78 + 171
    first = boxes[:21]
    assert first[0].tolist() == [0, 0, 50, 50] and first[6].tolist() == [150, 0, 200, 50]
    assert first[-1].tolist() == [150, 50, 200, 100]
    assert set((boxes[:, 2] - boxes[:, 0]).tolist()) == {50, 40, 30, 20}
    assert (boxes[:, 2] - boxes[:, 0] == boxes[:, 3] - boxes[:, 1]).all()  # square
    assert boxes[:, [2, 3]].max(0).tolist() == [200, 100]  # nothing beyond the image
    assert len(sliding_window_boxes(100, 200, scales=[0.5], step=1.0)) == 2 * 4  # rows 0, 50; columns 0, 50, 100, 150


def test_foreground_prior_and_the_crop_split_on_a_hand_made_attention_map():
    """Two heads whose mean attends the left half of a 4 x 4 grid: the prior is that half; a crop over it is
    foreground, one over the right half background, one straddling both (50 %) neither."""
    attention = np.zeros((2, 4, 4))
    attention[0, :, :2] = 0.9
    attention[1, :, :2] = 0.5
    attention[1, 0, 3] = 0.6  # mean 0.3 there, under the map's mean 0.369
    prior = foreground_prior(attention)
    expected = np.zeros((4, 4), dtype=bool)
    expected[:, :2] = True
    np.testing.assert_array_equal(prior, expected)
    boxes = np.array([[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0], [0.25, 0.0, 0.75, 1.0], [0.0, 0.0, 0.375, 0.25]])
    coverage = box_coverage(prior, boxes)
    np.testing.assert_allclose(coverage, [1.0, 0.0, 0.5, 1.0])
    foreground, background = split_crops(coverage)
    assert foreground.tolist() == [True, False, False, True]
    assert background.tolist() == [False, True, False, False]


def test_box_coverage_is_the_exact_area_overlap():
    """One marked cell (0, 0) of a 4 x 4 grid; a box over it and half of cell (0, 1): 0.0625 / 0.09375."""
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, 0] = True
    np.testing.assert_allclose(box_coverage(mask, np.array([[0.0, 0.0, 0.375, 0.25]])), [2 / 3])


def test_top_mass_keeps_the_largest_values_holding_the_mass():
    """[1, 2, 3, 4] (sum 10): from the smallest, the cumulative share is 0.1, 0.3, 0.6, 1.0; the cells above 0.2
    hold 90 % ≥ 80 %: 2, 3 and 4 are kept."""
    kept = top_mass(torch.tensor([[4.0, 1.0, 3.0, 2.0]]), 0.8)
    assert kept.tolist() == [[True, False, True, True]]


def test_response_maps_and_soft_labels_by_hand():
    """Eq. 7 with the authors' details on a 1 x 3 grid, then Eq. 6/8: attention scaled to max 1, the positive
    gradient added where it holds the mass, zero where the gradient is negative; min-max normalised; background
    ReLU(0.1 − max)."""
    attention = torch.tensor([[0.2, 0.4, 0.1]])  # scaled: 0.5, 1.0, 0.25
    gradients = torch.tensor([[[0.5, -0.1, 0.0]],  # concept 1
                              [[0.0, 0.2, -0.3]]])  # concept 2
    maps = response_maps(attention, gradients, gradient_mass=0.8)
    np.testing.assert_allclose(maps.numpy(), [[[1.0, 0.0, 0.25]], [[0.5, 1.2, 0.0]]], atol=1e-6)
    soft = soft_labels(maps, background=True)
    normalised = maps.numpy() / 1.2  # min 0
    np.testing.assert_allclose(soft[1:].numpy(), normalised, atol=1e-6)
    np.testing.assert_allclose(soft[0].numpy(), np.maximum(0.1 - normalised.max(0), 0), atol=1e-6)
    assert soft.argmax(0).tolist() == [[1, 2, 1]]
    low = soft_labels(torch.tensor([[[1.0, 0.0, 0.02]]]), background=True)  # cells under T_bg / 2 are background
    assert low.argmax(0).tolist() == [[1, 0, 0]]
    assert soft_labels(torch.tensor([[[1.0, 0.0, 0.02]]]), background=False).argmax(0).tolist() == [[1, 1, 1]]


def tiny_vit(seed: int = 0):
    import timm

    torch.manual_seed(seed)
    return timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=0, init_values=0.5).eval()


def test_the_cls_path_through_the_last_block_is_the_model_s():
    """The last block run for the CLS token alone gives the model's CLS token and CLS attention row."""
    from unseg.features.facets import forward_facets

    model = tiny_vit()
    images = torch.randn(2, 3, 32, 32)
    cam = ConceptCam(model)
    cls, row = cam.cls_from_attention(cam.last_block_input(images))
    facets = forward_facets(model, images, (4, 4), ["cls", "attn"])
    torch.testing.assert_close(cls, facets["cls"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(row.detach()[:, :, 1:].reshape(2, 2, 4, 4), facets["attn"], rtol=1e-5, atol=1e-6)


def test_grad_cam_of_a_linear_toy_model_is_its_analytic_gradient():
    """With the final norm, the MLP and the projections taken out, the CLS token is linear in its attention row:
    cls = x0 + concat_h(Σ_j a_hj v_hj). d cos(cls, s)/d a_hj is then (s/(|c||s|) − cos·c/|c|²)_h · v_hj, computed here
    in numpy; the head-averaged gradient on the patch cells must equal ConceptCam's."""
    model = tiny_vit(1)
    block = model.blocks[-1]
    model.norm = torch.nn.Identity()
    block.attn.proj = torch.nn.Identity()
    block.ls1 = torch.nn.Identity()
    torch.nn.init.zeros_(block.mlp.fc2.weight)
    torch.nn.init.zeros_(block.mlp.fc2.bias)
    image = torch.randn(1, 3, 32, 32)
    concepts = torch.randn(3, 16)
    cam = ConceptCam(model)
    attention, gradients = cam.attention_and_gradients(image, concepts, (4, 4))

    tokens = cam.last_block_input(image)[0].numpy().astype(np.float64)  # (17, 16)
    with torch.no_grad():
        qkv = block.attn.qkv(block.norm1(torch.from_numpy(tokens).float()[None]))[0].numpy().astype(np.float64)
    heads, head_dim = 2, 8
    queries, keys, values = (qkv[:, i * 16:(i + 1) * 16].reshape(17, heads, head_dim) for i in range(3))
    rows = []
    for h in range(heads):
        logits = keys[:, h] @ queries[0, h] * head_dim**-0.5
        rows.append(np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum())
    cls = tokens[0] + np.concatenate([rows[h] @ values[:, h] for h in range(heads)])
    expected = []
    for s in concepts.numpy().astype(np.float64):
        cosine = cls @ s / (np.linalg.norm(cls) * np.linalg.norm(s))
        d_cls = s / (np.linalg.norm(cls) * np.linalg.norm(s)) - cosine * cls / np.linalg.norm(cls) ** 2
        per_head = [values[:, h] @ d_cls[h * head_dim:(h + 1) * head_dim] for h in range(heads)]  # (17,) each
        expected.append(np.mean(per_head, axis=0)[1:].reshape(4, 4))
    np.testing.assert_allclose(gradients.numpy(), np.stack(expected), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(attention.numpy(), np.mean(rows, axis=0)[1:].reshape(4, 4), rtol=1e-5)


@pytest.fixture(scope="module")
def two_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("transfgu")
    rng = np.random.default_rng(0)
    paths = {}
    for index, (height, width) in enumerate([(48, 64), (64, 48)]):
        picture = rng.integers(60, 120, (height, width, 3)).astype(np.uint8)
        picture[8:32, 8:32] = (220, 40, 40)
        paths[f"img{index}"] = str(folder / f"img{index}.png")
        Image.fromarray(picture).save(paths[f"img{index}"])
    return folder, paths


def test_the_crops_store_holds_each_crop_s_cls_token(two_images):
    """Every sliding-window crop's CLS token and box; one crop's token recomputed here by hand from the image."""
    from unseg.features.backbones import create_backbone
    from unseg.features.crops import crop_batch

    folder, paths = two_images
    store_path = extract_crop_features(list(paths.values()), list(paths), [1, 2], folder / "crops.zarr",
                                       backbone="dino_vits16", weights="random", resolution=64, layout="resize",
                                       crops={"scales": [0.5, 0.25], "step": 0.5}, batch_size=7, progress=False)
    store = FeatureStore(store_path)
    assert store.attrs["crops"] == {"scales": [0.5, 0.25], "step": 0.5, "resolution": 32}
    boxes = store.facet("img0", "crop_boxes")
    assert len(boxes) == len(sliding_window_boxes(48, 64, [0.5, 0.25], 0.5)) == store.facet("img0", "crop_cls").shape[0]
    np.testing.assert_allclose(boxes[0], [0, 0, 24 / 64, 24 / 48], atol=1e-3)
    assert store.geometry("img1").original_size == (64, 48)

    model, spec = create_backbone("dino_vits16", "random")
    image = np.asarray(Image.open(paths["img0"]).convert("RGB"))
    pixel_boxes = sliding_window_boxes(48, 64, [0.5, 0.25], 0.5)
    with torch.no_grad():
        cls = model.eval().forward_features(crop_batch(image, pixel_boxes[3:4], 32, spec.mean, spec.std))[:, 0]
    np.testing.assert_allclose(store.facet("img0", "crop_cls")[3], cls[0].numpy(), rtol=2e-3, atol=2e-3)


def test_transfgu_pseudolabels_end_to_end(two_images):
    """The method on a random ViT: crops split by the stored attention as computed here, the soft maps' shape and
    background channel, and label maps that are the arg max of the soft maps brought to the image."""
    from unseg.core.geometry import grid_to_image
    from unseg.core.io import read_json, read_label_png
    from unseg.features.extract import extract_features
    from unseg.stages.pseudolabels import run_pseudolabels

    folder, paths = two_images
    store_path = folder / "f.zarr"
    extract_features(list(paths.values()), list(paths), [1, 2], store_path, backbone="dino_vits16", weights="random",
                     resolution=64, facets=["tokens", "attn"], progress=False, workers=0)
    crops_path = folder / "crops-e2e.zarr"
    extract_crop_features(list(paths.values()), list(paths), [1, 2], crops_path, backbone="dino_vits16",
                          weights="random", resolution=64, layout="resize",
                          crops={"scales": [0.5, 0.3], "step": 0.5}, progress=False)
    settings = {"method": "transfgu", "facet": "tokens", "clusters": 2, "foreground_fraction": 0.5,
                "num_restarts": 1}
    summary = run_pseudolabels(None, store_path, None, {1: "img0", 2: "img1"}, folder / "out", settings,
                               progress=False, image_paths=paths, crops_store=crops_path)
    store, crops = FeatureStore(store_path), FeatureStore(crops_path)
    expected_fg = expected_bg = 0
    for name in ("img0", "img1"):
        coverage = box_coverage(foreground_prior(store.facet(name, "attn")), crops.facet(name, "crop_boxes"))
        expected_fg += int((coverage > 0.5).sum())
        expected_bg += int((coverage < 0.2).sum())
    assert (summary["foreground_crops"], summary["background_crops"]) == (expected_fg, expected_bg)
    assert summary["num_crops"] == sum(len(crops.facet(name, "crop_cls")) for name in ("img0", "img1"))
    for name in ("img0", "img1"):
        soft = np.load(folder / "out" / "soft" / f"{name}.npy")
        assert soft.shape == (3, *store.geometry(name).grid_size) and soft.dtype == np.float16
        np.testing.assert_allclose(soft[0], np.maximum(0.1 - soft[1:].astype(np.float32).max(0), 0), atol=1e-3)
        labels = read_label_png(folder / "out" / f"{name}.png")
        expected = grid_to_image(soft.astype(np.float32), store.geometry(name)).argmax(0)
        assert labels.shape == store.geometry(name).original_size
        assert (labels == expected).mean() > 0.99  # float16 storage may flip exact ties
    assert read_json(folder / "out" / "pseudolabels.json") == []


def test_transfgu_without_crops_or_with_proposals_missing_is_a_clear_error(two_images, tmp_path):
    from unseg.stages.pseudolabels import run_pseudolabels

    folder, paths = two_images
    with pytest.raises(ValueError, match="crops"):
        run_pseudolabels(None, folder / "f.zarr", None, {1: "img0"}, tmp_path / "a", {"method": "transfgu",
                         "facet": "tokens", "clusters": 2}, progress=False, image_paths=paths)
    with pytest.raises(ValueError, match="'proposals' key"):
        run_pseudolabels(None, folder / "f.zarr", None, {1: "img0"}, tmp_path / "b", {"method": "mask_kmeans",
                         "facet": "tokens", "clusters": 2}, progress=False)


def test_the_audit_shows_the_score_maps_of_the_most_painted_classes():
    """TransFGU's concept maps on the pseudo-label page: the two classes painted on most pixels, largest first, each
    map brought to the image's size."""
    from unseg.reports.audit import concept_map_panels

    soft = np.zeros((4, 2, 2), dtype=np.float16)
    soft[3] = 1.0
    labels = np.array([[3, 3, 3, 1], [3, 3, 0, 255]] * 2, dtype=np.uint8)  # class 3 on 10 pixels, 1 on 2, 2 on none
    panels = concept_map_panels(np.zeros((4, 4, 3), dtype=np.uint8), soft, labels)
    assert [caption for caption, _ in panels] == ["class 3 score map", "class 1 score map"]
    assert panels[0][1].shape == (4, 4, 3) and panels[0][1].max() > 0 and panels[1][1].max() == 0
