"""Resumable training state, keyed on the experiment *and* its inputs.

A trainer writes ``last.pt`` after every epoch so that an interrupted job can go on where it stopped. ``last.pt``
is not an output Snakemake knows of, so it survives a re-run that Snakemake starts because something upstream
changed; a resume keyed on the settings alone would then continue (or, at the last epoch, simply re-save) the old
model. The resume key therefore holds the settings *and* a digest of the training data exactly as the trainer
loaded it: a changed feature store, pseudo-label map, image list or setting gives a different key, and training
starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unseg.core.io import atomic_output


def data_digest(items: Iterable[tuple[str, np.ndarray | torch.Tensor]]) -> str:
    """sha256 over (name, dtype, shape, bytes) of each array, in the given order.

    Args:
        items: (name, array) pairs, e.g. ("img1/tokens", (D, h, w) float32 tensor). The order is part of the key.
    """
    digest = hashlib.sha256()
    for name, array in items:
        digest_array(digest, name, array)
    return digest.hexdigest()


def digest_array(digest: Any, name: str, array: np.ndarray | torch.Tensor) -> None:
    """Add (name, dtype, shape, bytes) of one array to a running ``hashlib`` digest (what :func:`data_digest`
    does per item, for callers that stream their arrays)."""
    values = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    values = np.ascontiguousarray(values)
    digest.update(f"{name}\0{values.dtype.str}\0{values.shape}\0".encode())
    digest.update(values.tobytes())


def resume_key(settings: Mapping[str, Any], inputs_digest: str) -> str:
    """One string naming an experiment on its inputs: sha256 of the settings (JSON, sorted keys) and the digest."""
    text = json.dumps({"settings": settings, "inputs": inputs_digest}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def save_resume_state(path: str | Path, key: str, state: Mapping[str, Any]) -> None:
    """Write ``state`` (state dicts, epoch, log rows, RNG state, ...) with its key, atomically."""
    with atomic_output(path) as tmp:
        save_checkpoint({"resume_key": key, **state}, tmp)


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> None:
    """``torch.save`` through a file handle: the archive's inner folder is then always "archive", not the (random,
    temporary) file name, so the same state gives the same bytes."""
    with open(path, "wb") as handle:
        torch.save(dict(state), handle)


def load_resume_state(path: str | Path, key: str) -> dict[str, Any] | None:
    """The state saved at ``path`` when it was saved under ``key``; else None (and the reason is logged).

    A state saved for other settings or other inputs is never resumed: its training starts from scratch and the
    stale file is overwritten by the first new save.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated or foreign file is not a reason to fail, only not to resume
        print(f"resume: ignoring unreadable {path} ({error}); training from scratch", file=sys.stderr)
        return None
    if state.get("resume_key") != key:
        print(f"resume: {path} was saved for other settings or inputs; training from scratch", file=sys.stderr)
        return None
    done = f"epoch {state['epoch']}" if "epoch" in state else f"step {state.get('step')}"
    print(f"resume: continuing {path} after {done}", file=sys.stderr)
    return state


def read_model_checkpoint(path: str | Path, stage: str) -> tuple[dict[str, Any], Any]:
    """A model checkpoint a method of ``stage`` wrote (its ``config`` names the ``method``) and that method's
    ``build_model``, which rebuilds the untrained model from the config.

    Raises:
        KeyError: the config names no method, or no registered one.
        TypeError: the method registered no ``build_model``.
    """
    from unseg.config.registry import REGISTRIES

    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    config = checkpoint["config"]
    if "method" not in config:
        raise KeyError(f"{path}: the checkpoint's config names no 'method'")
    build_model = REGISTRIES[stage].get(config["method"]).attributes.get("build_model")
    if build_model is None:
        raise TypeError(f"{stage} method {config['method']!r} registered no build_model; cannot load {path}")
    return checkpoint, build_model
