"""Per-image results kept across re-runs of a stage: the workflow deletes a job's output before running it again, so
a stage that works image by image keeps each image's rows in a folder beside its output, keyed by everything the
rows depend on (the image's input arrays, the settings, the code version), and recomputes only the images whose key
it does not find. Refreshed after each complete run to hold exactly that run's images.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unseg.core.io import read_json, write_json


def reuse_folder(artifact: str | os.PathLike) -> Path:
    """The folder of kept per-image results beside a stage's output folder (or ``.zarr`` store) ``artifact``:
    ``{variant}.reuse`` for ``{variant}/`` or ``{variant}.zarr`` (not with_suffix: a variant's name may hold a
    dot)."""
    artifact = Path(artifact)
    return artifact.parent / f"{artifact.name.removesuffix('.zarr')}.reuse"


def link_or_copy(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """``target`` as a hard link to ``source`` (no bytes copied), or a copy where the filesystem refuses links."""
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(source, target)


def result_key(inputs: str, settings: Mapping[str, Any], code: str, image_path: str | os.PathLike | None = None
               ) -> str:
    """sha256 of an image's ``inputs`` (a digest of what the result is computed from, e.g.
    :meth:`unseg.features.store.FeatureStore.stored_digest`), the JSON of ``settings`` (the method and its settings),
    the code version ``code`` and, when the method may read the image file ``image_path``, its size and mtime."""
    stat = os.stat(image_path) if image_path else None
    image = [stat.st_size, stat.st_mtime_ns] if stat else None
    text = json.dumps({"inputs": inputs, "settings": settings, "code": code, "image": image}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class ResultCache:
    """One JSON file of rows per key in ``folder``."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def rows(self, key: str) -> list[dict[str, Any]] | None:
        """The cached rows of ``key``, or None."""
        path = self.folder / f"{key}.json"
        return read_json(path) if path.is_file() else None

    def refresh(self, rows_by_key: Mapping[str, list[dict[str, Any]]]) -> None:
        """Make the cache hold ``rows_by_key`` and nothing else (each file written atomically)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for key, rows in rows_by_key.items():
            if not (self.folder / f"{key}.json").is_file():
                write_json(self.folder / f"{key}.json", rows, indent=None)
        wanted = {f"{key}.json" for key in rows_by_key}
        for entry in os.scandir(self.folder):
            if entry.name not in wanted:
                shutil.rmtree(entry.path) if entry.is_dir() else os.unlink(entry.path)
