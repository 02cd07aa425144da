"""MaskContrast (the contrast stage): its loss, momentum encoder, queue, the object k-means protocol and the store of
learned embeddings (issue 18)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unseg.evaluation.probe import foreground_prototype, object_kmeans_evaluation, pca_whiten
from unseg.stages.contrast import (
    EMBEDDINGS_FACET,
    PrototypeQueue,
    balanced_bce,
    mask_prototypes,
    momentum_update,
    prototype_contrastive_loss,
)

from helpers import TINY_CONTRAST as TINY_SETTINGS


def planted_images(folder, count: int = 6, size: int = 64, tinted: bool = False):
    """``count`` pictures of a red box (even index) or a blue box (odd) on noise, grey or (``tinted``) of a random
    colour per image, their saliency maps (the box) and planted labels (0 background, 1 red, 2 blue):
    (name → path, name → (foreground, labels))."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "saliency").mkdir(parents=True)
    paths, truth = {}, {}
    for index in range(count):
        if tinted:
            tint = rng.integers(40, 200, 3)
            picture = np.clip(tint + rng.integers(-20, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            side = size * 9 // 16
            top, left = rng.integers(2, size - side - 2, 2)
        else:
            picture = rng.integers(90, 140, (size, size, 3)).astype(np.uint8)
            side, top, left = 36, 8 + 2 * (index % 3), 10 + 3 * (index % 4)
        picture[top : top + side, left : left + side] = (220, 40, 40) if index % 2 == 0 else (40, 60, 220)
        saliency = np.zeros((size, size), dtype=np.uint8)
        saliency[top : top + side, left : left + side] = 255
        name = f"img{index}"
        Image.fromarray(picture).save(folder / f"{name}.png")
        Image.fromarray(saliency, mode="L").save(folder / "saliency" / f"{name}.png")
        paths[name] = folder / f"{name}.png"
        truth[name] = (saliency > 0, np.where(saliency > 0, 1 + index % 2, 0).astype(np.uint8))
    return paths, truth


def planted_store(folder, paths) -> None:
    from unseg.features.extract import extract_features

    extract_features([str(p) for p in paths.values()], list(paths), list(range(1, len(paths) + 1)), folder / "f.zarr",
                     backbone="dino_vits16", weights="random", resolution=64, facets=["tokens"], progress=False,
                     workers=0)


def contrast_inputs(folder, paths, out: str, **settings):
    from unseg.config.schema import variant_settings
    from unseg.stages.contrast import ContrastInputs

    from helpers import SCHEMA

    completed = variant_settings("contrast", {**TINY_SETTINGS, **settings}, SCHEMA)
    return ContrastInputs(folder / "f.zarr", paths, folder / "saliency", folder / out / "model",
                          folder / out / "embeddings.zarr", completed, progress=False), completed


@pytest.fixture(scope="module")
def contrast_run(tmp_path_factory):
    """A tiny MaskContrast run on planted boxes over random ViT-S/16 tokens: (input store, learned store, folder)."""
    from unseg.config.schema import load_methods
    from unseg.features.store import FeatureStore
    from unseg.stages.contrast import run_contrast

    load_methods()
    folder = tmp_path_factory.mktemp("contrast")
    paths, _ = planted_images(folder)
    planted_store(folder, paths)
    inputs, settings = contrast_inputs(folder, paths, "run")
    run_contrast(inputs, settings)
    return FeatureStore(folder / "f.zarr"), FeatureStore(inputs.embeddings_path), folder


def test_contrastive_loss_equals_the_hand_computed_value():
    # 2 images, 2 foreground pixels each (1 x 2 grids), 2-dim embeddings, a queue of 2 negatives, T = 0.5
    embeddings = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]],   # image 0: pixels (1, 0) and (0, 1)
                               [[[0.6, 0.0]], [[0.8, 1.0]]]])  # image 1: pixels (0.6, 0.8) and (0, 1)
    masks = torch.ones(2, 1, 2, dtype=torch.bool)
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    negatives = torch.tensor([[-1.0, 0.0], [0.0, -1.0]])
    pixels = [((1.0, 0.0), 0), ((0.0, 1.0), 0), ((0.6, 0.8), 1), ((0.0, 1.0), 1)]
    expected = 0.0
    for (x, y), owner in pixels:
        logits = [(x * px + y * py) / 0.5 for px, py in [(1, 0), (0, 1), (-1, 0), (0, -1)]]
        expected += -logits[owner] + math.log(sum(math.exp(value) for value in logits))
    expected /= len(pixels)
    loss = prototype_contrastive_loss(embeddings, masks, prototypes, negatives, temperature=0.5)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # a background pixel takes no part: masking out pixel 2 of image 1 drops its term
    masks[1, 0, 1] = False
    partial = sum(-row[o] + math.log(sum(math.exp(v) for v in row)) for row, o in [
        ([2.0, 0.0, -2.0, 0.0], 0), ([0.0, 2.0, 0.0, -2.0], 0), ([1.2, 1.6, -1.2, -1.6], 1)]) / 3
    assert float(prototype_contrastive_loss(embeddings, masks, prototypes, negatives, 0.5)) == \
        pytest.approx(partial, rel=1e-6)
    # a queued prototype of the pixel's own image (negative 0 came from image 0) is not one of its negatives
    without_own = sum(-row[o] + math.log(sum(math.exp(v) for v in row)) for row, o in [
        ([2.0, 0.0, 0.0], 0), ([0.0, 2.0, -2.0], 0), ([1.2, 1.6, -1.2, -1.6], 1)]) / 3
    got = prototype_contrastive_loss(embeddings, masks, prototypes, negatives, 0.5, torch.tensor([0, 1]),
                                     torch.tensor([0, 7]))
    assert float(got) == pytest.approx(without_own, rel=1e-6)


def test_balanced_bce_is_maskcontrast_s_hed_weighting():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (2, 5, 6))
    labels = (rng.random((2, 5, 6)) < 0.3).astype(np.float64)
    # the reference implementation's formula (MaskContrast pretrain/modules/losses.py), written out in numpy
    w = (1 - labels).sum() / labels.size
    positive = (logits >= 0).astype(np.float64)
    value = logits * (labels - positive) - np.log(1 + np.exp(logits - 2 * logits * positive))
    expected = (w * -(labels * value).sum() + (1 - w) * -((1 - labels) * value).sum()) / labels.size
    got = balanced_bce(torch.tensor(logits), torch.tensor(labels))
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_prototypes_are_the_normalised_sums_inside_the_masks():
    rng = np.random.default_rng(1)
    embeddings = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    masks = np.zeros((2, 4, 4), dtype=np.float32)
    masks[0, :2, :2] = 1
    masks[1, 3, :] = 1
    got = mask_prototypes(torch.tensor(embeddings), torch.tensor(masks)).numpy()
    for image in range(2):
        summed = embeddings[image][:, masks[image] > 0].sum(1)
        np.testing.assert_allclose(got[image], summed / np.linalg.norm(summed), rtol=1e-5)


def test_momentum_update_moves_only_trained_parameters():
    torch.manual_seed(0)
    query, key = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    query.bias.requires_grad_(False)  # a frozen parameter: left as the key has it
    key_weight, key_bias = key.weight.detach().clone(), key.bias.detach().clone()
    momentum_update(key, query, 0.9)
    torch.testing.assert_close(key.weight, 0.9 * key_weight + 0.1 * query.weight.detach(), rtol=0, atol=1e-7)
    assert torch.equal(key.bias, key_bias)


def test_the_queue_is_first_in_first_out_and_wraps():
    queue = PrototypeQueue(3, 2, torch.Generator().manual_seed(0))
    assert torch.allclose(queue.vectors.norm(dim=1), torch.ones(3))  # random unit vectors to start
    first = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    queue.enqueue(first, torch.tensor([4, 5]))
    assert torch.equal(queue.vectors[:2], first) and queue.pointer == 2
    assert queue.owners.tolist() == [4, 5, -1]  # the random start belongs to no image
    second = torch.tensor([[-1.0, 0.0], [0.0, -1.0]])
    queue.enqueue(second, torch.tensor([6, 7]))  # overwrites slot 2, then wraps to the oldest (slot 0)
    assert torch.equal(queue.vectors, torch.tensor([[0.0, -1.0], [0.0, 1.0], [-1.0, 0.0]])) and queue.pointer == 1
    assert queue.owners.tolist() == [7, 5, 6]
    batch = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])
    queue.enqueue(batch, torch.tensor([1, 2, 3, 4]))  # more than the queue holds: the last 3 stay, oldest first
    oldest_first = torch.roll(queue.vectors, -queue.pointer, dims=0)
    assert torch.equal(oldest_first, batch[1:]) and torch.roll(queue.owners, -queue.pointer).tolist() == [2, 3, 4]


def test_object_kmeans_paints_each_foreground_with_its_prototype_s_cluster():
    # 8 images: a foreground square whose token colour is one of two planted directions; background tokens random
    rng = np.random.default_rng(0)
    tokens, foregrounds, labels = [], [], []
    for index in range(8):
        planted = index % 2
        grid = rng.normal(0, 0.1, (4, 4, 6)).astype(np.float32)
        grid[1:3, 1:3, planted] += 3.0
        foreground = np.zeros((32, 32), dtype=bool)
        foreground[8:24, 8:24] = True
        label = np.where(foreground, planted + 1, 0).astype(np.uint8)
        tokens.append(grid), foregrounds.append(foreground), labels.append(label)
    result = object_kmeans_evaluation(tokens, foregrounds, labels, num_classes=3, seeds=[0, 1])
    assert result["miou_mean"] == pytest.approx(100.0) and result["num_prototypes"] == 8
    assert result["pca_components"] == 0  # 8 prototypes: too few to whiten (10 per axis)
    # swapping two images' foregrounds (the planted class stays in the tokens) costs exactly what it should
    prototype = foreground_prototype(tokens[0], foregrounds[0])
    assert prototype.argmax() == 0 and np.linalg.norm(prototype) == pytest.approx(1.0)
    assert foreground_prototype(tokens[0], np.zeros((32, 32), dtype=bool)) is None


def test_pca_whitening_gives_unit_variance_axes_and_refuses_too_few_points():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(40, 5)) * np.array([5.0, 2.0, 1.0, 0.5, 0.1])
    whitened, count = pca_whiten(points, 3)
    assert count == 3 and whitened.shape == (40, 3)  # min(3, 5, 40 // 10)
    np.testing.assert_allclose(whitened.std(0, ddof=1), 1.0, rtol=1e-5)
    unchanged, none = pca_whiten(points[:19], 32)  # 19 // 10 = 1 axis: no whitening
    assert none == 0 and np.array_equal(unchanged, points[:19])


def test_the_learned_store_has_the_embeddings_of_every_image_in_the_input_geometry(contrast_run):
    from unseg.features.store import FeatureStore

    base, learned, _ = contrast_run
    assert learned.attrs["facets"] == [EMBEDDINGS_FACET] and learned.attrs["embed_dim"] == 8
    assert learned.attrs["backbone"] == base.attrs["backbone"] and learned.attrs["complete"]
    for name in base.names:
        embeddings = learned.facet(name, EMBEDDINGS_FACET)
        assert embeddings.shape == (*base.geometry(name).grid_size, 8)
        np.testing.assert_allclose(np.linalg.norm(embeddings, axis=-1), 1.0, atol=2e-3)  # float16 unit vectors
        assert learned.geometry(name) == base.geometry(name) and learned.image_id(name) == base.image_id(name)
    assert isinstance(FeatureStore(learned.path), FeatureStore)


def test_an_interrupted_training_resumes_to_the_uninterrupted_weights(contrast_run, monkeypatch):
    import unseg.stages.contrast as contrast
    import unseg.training.engine as engine

    base, _, folder = contrast_run
    paths = {name: folder / f"{name}.png" for name in base.names}
    uninterrupted = torch.load(folder / "run" / "model" / "model.pt", weights_only=False)
    inputs, settings = contrast_inputs(folder, paths, "killed")
    saved = engine.save_resume_state
    calls = []

    def crash_after_two_epochs(*args, **kwargs):
        saved(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the job dies after writing last.pt of epoch 2

    monkeypatch.setattr(engine, "save_resume_state", crash_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        contrast.run_contrast(inputs, settings)
    assert not (inputs.out_dir / "model.pt").exists() and not inputs.embeddings_path.exists()
    monkeypatch.setattr(engine, "save_resume_state", saved)
    contrast.run_contrast(inputs, settings)
    resumed = torch.load(inputs.out_dir / "model.pt", weights_only=False)
    assert [row["epoch"] for row in resumed["log"]] == [1, 2, 3]
    for key, value in uninterrupted["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key


def test_a_store_without_tokens_is_refused_naming_it(contrast_run, tmp_path):
    from unseg.stages.contrast import run_contrast

    base, learned, folder = contrast_run
    paths = {name: folder / f"{name}.png" for name in base.names}
    inputs, settings = contrast_inputs(folder, paths, "x")
    inputs = type(inputs)(learned.path, paths, inputs.saliency_dir, tmp_path / "m", tmp_path / "e.zarr",
                          settings, progress=False)
    with pytest.raises(ValueError, match="has no 'tokens' facet"):
        run_contrast(inputs, settings)


def test_masks_made_elsewhere_are_a_saliency_variant_at_full_resolution(contrast_run, tmp_path):
    from PIL import Image

    from unseg.config.schema import variant_settings
    from unseg.core.io import read_saliency
    from unseg.core.provenance import folder_listing_digest
    from unseg.stages.saliency import run_saliency

    from helpers import SCHEMA

    base, _, folder = contrast_run
    masks = tmp_path / "masks"
    masks.mkdir()
    for index, name in enumerate(base.names):
        mask = np.zeros(base.geometry(name).original_size, dtype=np.uint8)
        mask[5 + index : 40, 7:33] = 1  # a 0/1 mask with edges off the 16 px token grid
        Image.fromarray(mask, mode="L").save(masks / f"{name}.png")
    settings = variant_settings("saliency", {"method": "mask_folder", "path": str(masks), "facet": "tokens"}, SCHEMA)
    run_saliency(base.path, tmp_path / "out", settings, progress=False)
    for index, name in enumerate(base.names):
        foreground = read_saliency(tmp_path / "out", name) > 0.5
        expected = np.zeros_like(foreground)
        expected[5 + index : 40, 7:33] = True
        np.testing.assert_array_equal(foreground, expected)  # not resampled through the token grid
    before = folder_listing_digest(masks)
    Image.fromarray(np.zeros((3, 3), dtype=np.uint8), mode="L").save(masks / f"{base.names[0]}.png")
    assert folder_listing_digest(masks) != before  # an edited mask re-runs the variant
    with pytest.raises(ValueError, match=rf"{base.names[0]}.png is 3x3, its image 64x64"):
        run_saliency(base.path, tmp_path / "again", settings, progress=False)


def test_settings_made_for_ten_thousand_images_warn_on_a_few_dozen():
    from unseg.stages.contrast import warn_small_dataset

    # MaskContrast's defaults on 24 images: 3 steps per epoch, 120 steps, 0.999^120 = 0.89 of the key's start kept
    warnings = warn_small_dataset(24, 40, 8, 256, 0.999)
    assert len(warnings) == 2 and "89% of its random start" in warnings[0] and "queue_size 256" in warnings[1]
    assert warn_small_dataset(24, 40, 8, 16, 0.99) == []  # 0.99^120 = 0.30; 16 < 24 - 8
    assert warn_small_dataset(10582, 40, 128, 256, 0.999) == []  # the paper's VOC train_aug run


def test_object_kmeans_needs_an_image_per_cluster():
    grid = np.ones((2, 2, 3), dtype=np.float32)
    foreground, labels = np.ones((4, 4), dtype=bool), np.ones((4, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match="2 images with foreground for 3 object clusters"):
        object_kmeans_evaluation([grid, grid], [foreground, foreground], [labels, labels], num_classes=4)


def test_on_planted_boxes_the_embeddings_separate_the_classes_better_than_their_input(tmp_path):
    # 16 pictures of a red or a blue box on a background of a random colour per image; a random ViT's raw tokens
    # mix that colour into the boxes' prototypes, and MaskContrast's objective (jittered views of the same box must
    # agree) learns to look past it: MaskContrast's object k-means, raw 84.8 -> learned 100.0 mIoU
    from unseg.config.schema import load_methods
    from unseg.features.store import FeatureStore
    from unseg.stages.contrast import run_contrast

    load_methods()
    paths, truth = planted_images(tmp_path, count=16, tinted=True)
    planted_store(tmp_path, paths)
    inputs, settings = contrast_inputs(tmp_path, paths, "run", epochs=20, batch_size=4, queue_size=8, lr=0.1,
                                       key_momentum=0.9)
    run_contrast(inputs, settings)
    names = list(paths)

    def object_kmeans(store, facet):
        return object_kmeans_evaluation([store.facet(name, facet) for name in names], [truth[n][0] for n in names],
                                        [truth[n][1] for n in names], num_classes=3, seeds=[0, 1, 2])["miou_mean"]

    raw = object_kmeans(FeatureStore(tmp_path / "f.zarr"), "tokens")
    learned = object_kmeans(FeatureStore(inputs.embeddings_path), EMBEDDINGS_FACET)
    assert raw < 90 and learned > raw + 10, (raw, learned)


def test_fine_tuned_blocks_train_and_embed_through_the_images(contrast_run):
    from unseg.features.store import FeatureStore
    from unseg.stages.contrast import run_contrast

    base, frozen, folder = contrast_run
    paths = {name: folder / f"{name}.png" for name in base.names}
    inputs, settings = contrast_inputs(folder, paths, "tuned", epochs=1, finetune_blocks=1, backbone_lr=1e-3)
    run_contrast(inputs, settings)
    checkpoint = torch.load(inputs.out_dir / "model.pt", weights_only=False)
    trained = {key.split(".")[1] + "." + key.split(".")[2] for key in checkpoint["state_dict"] if "blocks" in key}
    assert trained == {"blocks.11"} and not any(key.startswith("backbone.patch_embed") for key in
                                               checkpoint["state_dict"])  # only the trained part is stored
    tuned = FeatureStore(inputs.embeddings_path)
    assert tuned.attrs["learned"]["finetune_blocks"] == 1
    name = base.names[0]
    assert tuned.facet(name, EMBEDDINGS_FACET).shape == frozen.facet(name, EMBEDDINGS_FACET).shape


def test_images_of_several_aspect_ratios_train_in_one_run(tmp_path):
    from PIL import Image

    from unseg.config.schema import load_methods
    from unseg.features.store import FeatureStore
    from unseg.stages.contrast import run_contrast

    load_methods()
    (tmp_path / "saliency").mkdir()
    paths = {}
    for index, width in enumerate((64, 96, 64, 96)):
        picture = np.full((64, width, 3), 100, dtype=np.uint8)
        picture[16:48, 16:48] = (200, 30, 30) if index % 2 else (30, 30, 200)
        saliency = np.zeros((64, width), dtype=np.uint8)
        saliency[16:48, 16:48] = 255
        Image.fromarray(picture).save(tmp_path / f"img{index}.png")
        Image.fromarray(saliency, mode="L").save(tmp_path / "saliency" / f"img{index}.png")
        paths[f"img{index}"] = tmp_path / f"img{index}.png"
    planted_store(tmp_path, paths)  # layout "resize": grids of 4x4 and 4x6 tokens
    inputs, settings = contrast_inputs(tmp_path, paths, "run", epochs=1, batch_size=4, queue_size=0)
    run_contrast(inputs, settings)
    learned = FeatureStore(inputs.embeddings_path)
    assert {learned.facet(name, EMBEDDINGS_FACET).shape[:2] for name in paths} == {(4, 4), (4, 6)}
