"""What a segmentation trainer minimises: the criteria of :func:`unseg.stages.train.fit` and the gradient of one
optimiser step accumulated over sub-batches (:func:`accumulate_gradients`, which the training engine's out-of-memory
halving calls with smaller sub-batches).

* :class:`CrossEntropy`: logits upsampled to the label map against (H, W) int64 labels, 255 ignored;
* :class:`BootstrapCriterion`: TransFGU's bootstrapping losses against (C, h, w) class scores on the token grid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from unseg.core.io import IGNORE_LABEL
from unseg.training.bootstrap import alpha_at, bootstrapping_loss, labelled_cells


def batch_logits(model: torch.nn.Module, tokens: Sequence[torch.Tensor], label_sizes: Sequence[tuple[int, int]],
                 device: torch.device, autocast_dtype: torch.dtype | None) -> list[torch.Tensor]:
    """The model's logits of each item, bilinearly upsampled to its label size: (C, H, W) float32 each.

    Items of equal grid size are stacked into one forward pass; a dataset whose images differ in aspect ratio
    runs one pass per size.
    """
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for position, item in enumerate(tokens):
        by_shape.setdefault(tuple(item.shape), []).append(position)
    outputs: list[torch.Tensor | None] = [None] * len(tokens)
    for positions in by_shape.values():
        stacked = torch.stack([tokens[p] for p in positions]).to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(stacked)
        logits = F.interpolate(logits.float(), size=label_sizes[positions[0]], mode="bilinear", align_corners=False)
        for offset, position in enumerate(positions):
            outputs[position] = logits[offset]
    return outputs



class Criterion:
    """What :func:`fit` minimises, for one optimiser step at a time; this base class holds the hooks a criterion
    without state leaves as they are.

    Attributes:
        log_fields: the further terms the criterion reports per batch (``log.csv`` columns after
            :data:`LOG_FIELDS`, each the epoch's mean over labelled positions).
    """

    log_fields: tuple[str, ...] = ()

    def set_epoch(self, epoch: int) -> None:
        """Epoch ``epoch`` (0-based) starts."""

    def start_step(self) -> None:
        """An optimiser step starts (called once per batch, not again when the batch is redone in sub-batches)."""

    def labelled(self, target: torch.Tensor) -> int:
        """The number of positions of one item's target that count in the loss."""
        raise NotImplementedError

    def __call__(self, model: torch.nn.Module, inputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor],
                 valid: int, device: torch.device, autocast_dtype: torch.dtype | None,
                 ) -> tuple[torch.Tensor, int, dict[str, float]]:
        """The loss of a sub-batch of items, summed over their labelled positions and divided by the whole batch's
        ``valid`` (so that a batch's sub-batch losses add up to its mean loss): (0-dim loss with its graph, the
        number of labelled positions the model predicts right, {log field: the term, reduced like the loss})."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run restores (random generators)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


class CrossEntropy(Criterion):
    """The default criterion: cross-entropy of the logits, bilinearly upsampled to the label map's size, against the
    (H, W) int64 label map, 255 ignored."""

    def labelled(self, target: torch.Tensor) -> int:
        return int((target != IGNORE_LABEL).sum())

    def __call__(self, model, inputs, targets, valid, device, autocast_dtype):
        logits = batch_logits(model, inputs, [tuple(t.shape) for t in targets], device, autocast_dtype)
        loss = sum(F.cross_entropy(item[None], target[None], ignore_index=IGNORE_LABEL, reduction="sum")
                   for item, target in zip(logits, targets)) / max(valid, 1)
        correct = sum(int(((item.argmax(0) == target) & (target != IGNORE_LABEL)).sum())
                      for item, target in zip(logits, targets))
        return loss, correct, {}


class BootstrapCriterion(Criterion):
    """TransFGU's loss (section 3.3, Eq. 16 with Eq. 13-15; :func:`unseg.training.bootstrap.bootstrapping_loss`) of a
    :class:`~unseg.training.heads.MaskTransformerHead` against (C, h, w) class scores on the token grid (NaN cells
    ignored).

    Each optimiser step draws the permutation of its negative labels (Eq. 13) from a generator seeded with
    ``seed``, saved in ``last.pt``, so that a resumed run draws what an uninterrupted one does. α follows
    :func:`unseg.training.bootstrap.alpha_at` over the round's epochs (0 without a teacher).
    """

    log_fields = ("peer_loss", "diversity_loss", "uncertainty_loss")

    def __init__(self, num_classes: int, *, alpha: float, alpha_start: float, omega_diversity: float,
                 omega_uncertainty: float, teacher: bool, seed: int):
        self.num_classes, self.teacher = int(num_classes), bool(teacher)
        self.alpha, self.alpha_start = alpha, alpha_start
        self.omega_diversity, self.omega_uncertainty = omega_diversity, omega_uncertainty
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch, self.permutation = 0, torch.arange(self.num_classes)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def start_step(self) -> None:
        self.permutation = torch.randperm(self.num_classes, generator=self.generator)

    def labelled(self, target: torch.Tensor) -> int:
        return int(labelled_cells(target[None]).sum())

    def __call__(self, model, inputs, targets, valid, device, autocast_dtype):
        alpha = alpha_at(self.epoch, self.alpha, self.alpha_start, self.teacher)
        by_shape: dict[tuple[int, ...], list[int]] = {}  # items of equal grid size share a forward pass
        for position, item in enumerate(inputs):
            by_shape.setdefault(tuple(item.shape), []).append(position)
        sums: dict[str, torch.Tensor] = {}
        correct = 0
        for positions in by_shape.values():
            stacked = torch.stack([inputs[p] for p in positions]).to(device, non_blocking=True)
            scores = torch.stack([targets[p] for p in positions])
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits, classes = model.logits_and_class_embeddings(stacked)
            terms = bootstrapping_loss(logits.float(), classes.float(), scores, self.permutation, alpha,
                                       self.omega_diversity, self.omega_uncertainty, reduction="sum")
            for key, value in terms.items():
                sums[key] = sums[key] + value if key in sums else value
            right = logits.argmax(1) == scores.nan_to_num(0.0).argmax(1)
            correct += int((right & labelled_cells(scores)).sum())
        scale = max(valid, 1)
        return sums["loss"] / scale, correct, {key: float(sums[key].detach()) / scale for key in self.log_fields}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])


def accumulate_gradients(model: torch.nn.Module, inputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor],
                         valid: int, micro_batch: int, device: torch.device, autocast_dtype: torch.dtype | None,
                         criterion: Criterion | None = None) -> tuple[float, int, dict[str, float]]:
    """Back-propagate the batch's loss (``criterion``, default :class:`CrossEntropy`: summed over its ``valid``
    labelled positions, divided by ``valid``) in sub-batches of ``micro_batch`` items; gradients add up in the
    parameters' ``.grad``.

    Returns:
        (the batch's mean loss, its number of correctly predicted labelled positions, {the criterion's log field:
        the batch's mean term}).
    """
    criterion = criterion or CrossEntropy()
    loss_total, correct, terms = 0.0, 0, dict.fromkeys(criterion.log_fields, 0.0)
    for start in range(0, len(inputs), micro_batch):
        loss, chunk_correct, chunk_terms = criterion(model, inputs[start : start + micro_batch],
                                                     targets[start : start + micro_batch], valid, device,
                                                     autocast_dtype)
        loss.backward()
        loss_total += float(loss.detach())
        correct += chunk_correct
        for key, value in chunk_terms.items():
            terms[key] += value
    return loss_total, correct, terms

