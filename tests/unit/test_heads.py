"""The decoder heads: output shapes, the checkpoint round trip, and training that recovers planted classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unseg.config.registry import REGISTRIES
from unseg.evaluation.metrics import confusion_matrix, hungarian_match
from unseg.stages.train import fit
from unseg.training.heads import AsppHead, LinearHead, MaskTransformerHead, build_head

from helpers import killed_after_saves

HEAD_OPTIONS = {"linear": {}, "mask_transformer": {"width": 32, "layers": 1, "heads": 4, "dropout": 0.0},
                "aspp": {"atrous_rates": [1, 2]}}


@pytest.mark.parametrize("kind", sorted(HEAD_OPTIONS))
def test_each_head_maps_a_token_grid_to_class_logits(kind):
    torch.manual_seed(0)
    head = build_head(kind, embed_dim=24, num_classes=5, options=HEAD_OPTIONS[kind])
    for batch, height, width in [(3, 6, 9), (1, 4, 4)]:
        head.train()
        assert head(torch.randn(batch, 24, height, width)).shape == (batch, 5, height, width)
        head.eval()
        assert head(torch.randn(batch, 24, height, width)).shape == (batch, 5, height, width)


def test_a_unit_token_linear_head_reads_each_token_scaled_to_unit_length():
    """tokens="unit": the logits are the 1x1 convolution of t / |t| by hand, blind to each token's length and to the
    standardisation statistics; the default head reads the standardised tokens."""
    torch.manual_seed(0)
    unit, standard = LinearHead(3, 2, tokens="unit"), LinearHead(3, 2)
    standard.load_state_dict(unit.state_dict())
    tokens = torch.tensor([[3.0, 0.0, 4.0], [0.0, -2.0, 0.0]]).T.reshape(1, 3, 1, 2)  # lengths 5 and 2
    weight, bias = unit.decode.weight[:, :, 0, 0], unit.decode.bias
    first, second = weight @ torch.tensor([0.6, 0.0, 0.8]) + bias, weight @ torch.tensor([0.0, -1.0, 0.0]) + bias
    expected = torch.stack([first, second], dim=1).reshape(1, 2, 1, 2)
    torch.testing.assert_close(unit(tokens), expected)
    torch.testing.assert_close(unit(tokens * torch.tensor([7.0, 0.5]).reshape(1, 1, 1, 2)), expected)
    unit.set_statistics(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 2.0, 2.0]))
    torch.testing.assert_close(unit(tokens), expected)
    standard.set_statistics(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 2.0, 2.0]))
    mean = torch.tensor([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    torch.testing.assert_close(standard(tokens), standard.decode((tokens - mean) / 2))
    with pytest.raises(ValueError, match="tokens 'l1'"):
        LinearHead(3, 2, tokens="l1")
    # a checkpoint's config rebuilds the head it was trained with; one that predates the option, the default
    build = REGISTRIES["train"].get("linear_head").attributes["build_model"]
    assert build({"embed_dim": 3, "num_classes": 2, "tokens": "unit"}).tokens == "unit"
    assert build({"embed_dim": 3, "num_classes": 2}).tokens == "standardised"


def test_heads_are_the_classes_the_trainers_build():
    assert isinstance(build_head("linear", 4, 2), LinearHead)
    assert isinstance(build_head("mask_transformer", 8, 2, {"width": 8, "heads": 2}), MaskTransformerHead)
    assert isinstance(build_head("aspp", 8, 2), AsppHead)
    with pytest.raises(KeyError, match="no head 'unet'"):
        build_head("unet", 4, 2)
    config = {"embed_dim": 8, "num_classes": 3, "width": 8, "layers": 1, "heads": 2, "dropout": 0.0}
    model = REGISTRIES["train"].get("mask_transformer").attributes["build_model"](config)
    assert isinstance(model, MaskTransformerHead) and model(torch.randn(1, 8, 2, 3)).shape == (1, 3, 2, 3)


def test_the_mask_transformers_masks_are_patch_class_cosines():
    # With the LayerNorm over classes removed (identity), each logit is the cosine of a patch's and a class's
    # projected embeddings: bounded by 1 in absolute value.
    torch.manual_seed(0)
    head = MaskTransformerHead(8, 3, width=8, layers=1, heads=2, dropout=0.0).eval()
    head.decode.mask_norm = torch.nn.Identity()
    logits = head(torch.randn(2, 8, 3, 4) * 50)
    assert logits.abs().max() <= 1 + 1e-5


class PlantedTokens(torch.utils.data.Dataset):
    """Tokens drawn around one mean per planted class (well separated), with labels that permute the classes and
    flip a fraction of the label pixels at random (noisy pseudo-labels)."""

    def __init__(self, count=12, classes=3, dim=16, grid=(6, 8), scale=2, flip=0.25, seed=0):
        rng = np.random.default_rng(seed)
        means = rng.normal(0, 1, (classes, dim)) * 3
        permutation = np.roll(np.arange(classes), 1)  # pseudo-class ≠ planted class index
        self.names, self.items, self.planted = [f"img{i}" for i in range(count)], [], []
        for _ in range(count):
            planted = np.zeros(grid, dtype=np.int64)
            top, left = rng.integers(0, 3), rng.integers(0, 4)
            planted[top : top + 3, left : left + 4] = rng.integers(1, classes)
            tokens = means[planted].transpose(2, 0, 1) + rng.normal(0, 1, (dim, *grid))
            labels = np.kron(permutation[planted], np.ones((scale, scale), dtype=np.int64))
            flipped = rng.random(labels.shape) < flip
            labels[flipped] = rng.integers(0, classes, flipped.sum())
            self.items.append((torch.tensor(tokens, dtype=torch.float32), torch.from_numpy(labels)))
            self.planted.append(np.kron(planted, np.ones((scale, scale), dtype=np.int64)))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def matched_accuracy(predictions, targets, classes):
    confusion = sum(confusion_matrix(p, t, classes, classes) for p, t in zip(predictions, targets))
    mapping = hungarian_match(confusion)
    return sum(confusion[row, col] for row, col in enumerate(mapping)) / confusion.sum()


@pytest.mark.parametrize("kind", sorted(HEAD_OPTIONS))
def test_a_trainer_recovers_planted_classes_from_noisy_labels(kind, tmp_path):
    data = PlantedTokens()
    torch.manual_seed(0)
    model = build_head(kind, 16, 3, HEAD_OPTIONS[kind])
    fit(model, data, tmp_path, config={"method": kind, "num_classes": 3}, epochs=30, lr=0.01, weight_decay=0.0,
        batch_size=4, seed=0, progress=False)
    model.eval()
    with torch.no_grad():
        predictions = [torch.nn.functional.interpolate(model(tokens[None]), size=labels.shape, mode="bilinear")[0]
                       .argmax(0).numpy() for tokens, labels in data.items]
    noisy = matched_accuracy([labels.numpy() for _, labels in data.items], data.planted, 3)
    recovered = matched_accuracy(predictions, data.planted, 3)
    assert noisy < 0.85  # the labels it learnt from are a quarter wrong ...
    assert recovered > 0.97  # ... the trained head recovers the planted classes
    assert (tmp_path / "model.pt").exists() and (tmp_path / "last.pt").exists()
    log = (tmp_path / "log.csv").read_text().splitlines()
    assert log[0] == "epoch,loss,pseudo_label_accuracy,monitor_miou" and len(log) == 31


def test_a_resumed_mask_transformer_with_dropout_ends_as_the_uninterrupted_one(tmp_path):
    import unseg.training.engine as engine_module

    data = PlantedTokens(count=6)
    options = {"width": 16, "layers": 1, "heads": 2, "dropout": 0.3}  # dropout: the RNG state must be resumed too

    def run(out):
        torch.manual_seed(0)
        model = build_head("mask_transformer", 16, 3, options)
        fit(model, data, out, config={"method": "m", "num_classes": 3}, epochs=4, lr=0.01, weight_decay=0.0,
            batch_size=4, seed=0, progress=False)
        return torch.load(out / "model.pt", weights_only=False)

    whole = run(tmp_path / "whole")
    with killed_after_saves(engine_module, 2):
        run(tmp_path / "resumed")
    resumed = run(tmp_path / "resumed")
    assert [row["loss"] for row in resumed["log"]] == [row["loss"] for row in whole["log"]]
    for key, value in whole["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value)
