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
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from unseg.core.io import read_json, write_json


def result_key(arrays: Iterable[np.ndarray], settings: Mapping[str, Any], code: str) -> str:
    """sha256 of an image's input ``arrays`` (their dtype, shape and bytes), the JSON of ``settings`` (everything else
    the result depends on: the method's settings, the image's geometry, ...) and the code version ``code``."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    digest.update(json.dumps({"settings": settings, "code": code}, sort_keys=True, default=str).encode())
    return digest.hexdigest()


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
