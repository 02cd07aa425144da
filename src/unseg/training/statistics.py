"""Token statistics of a training set, streamed: the per-channel mean and standard deviation every head standardises
its inputs with, and the digest of the items that keys a resumable training (:mod:`unseg.core.checkpoints`).

One pass over the dataset, one item in memory at a time (float64 sums); the train, contrast and instances stages
all scan their stored tokens this way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from unseg.core.checkpoints import digest_array
from unseg.training.data import TokenLabelDataset


@dataclass(frozen=True)
class DatasetScan:
    """One streaming pass over a :class:`TokenLabelDataset`: per-channel token statistics and the data digest."""

    mean: torch.Tensor  # (D,) float32
    std: torch.Tensor  # (D,) float32
    embed_dim: int
    digest: str  # sha256 over (name, tokens, labels) of every item, in order


def scan(dataset: TokenLabelDataset, progress: bool = True) -> DatasetScan:
    """Mean and standard deviation of every token of the dataset (float64 sums) and the digest of its items, one
    item in memory at a time."""

    def items():
        for index in range(len(dataset)):
            tokens, labels = dataset[index]
            yield dataset.names[index], tokens, {"labels": labels}

    return scan_tokens(items(), len(dataset), progress)


def scan_tokens(items: Iterable[tuple[str, torch.Tensor, Mapping[str, Any]]], total: int | None = None,
                progress: bool = True) -> DatasetScan:
    """:class:`DatasetScan` of (name, (D, h, w) tokens, {what else keys the data: array}) items, streamed: the
    per-channel mean and standard deviation of every token (float64 sums), and the sha256 over each item's tokens
    and arrays, in order."""
    sums = squares = None
    count = 0
    digest = hashlib.sha256()
    for name, tokens, extras in tqdm(items, total=total, desc="scan tokens", unit="img", disable=not progress):
        flat = tokens.flatten(1).double()  # (D, h·w)
        sums = flat.sum(1) if sums is None else sums + flat.sum(1)
        squares = (flat**2).sum(1) if squares is None else squares + (flat**2).sum(1)
        count += flat.shape[1]
        digest_array(digest, f"{name}/tokens", tokens)
        for key, value in extras.items():
            digest_array(digest, f"{name}/{key}", value)
    if sums is None:
        raise ValueError("no image to train on")
    mean = sums / count
    std = (squares / count - mean**2).clamp(min=0).sqrt() * (count / max(count - 1, 1)) ** 0.5
    return DatasetScan(mean.float(), std.float(), int(mean.shape[0]), digest.hexdigest())

