"""Same config and seed, same numbers: two runs of the tiny workflow give the same files (issue 17, determinism).

On the CPU every artifact is byte-identical, the provenance timestamps aside. (Both runs use one working directory:
the index holds absolute image paths, and the provenance their digests.) CUDA: see the README's Reliability section.
"""

from __future__ import annotations

import json
import shutil

import yaml

from workflow_helpers import TINY, snakemake


def without_created(node):
    """A JSON value without its "created" timestamps."""
    if isinstance(node, dict):
        return {key: without_created(item) for key, item in node.items() if key != "created"}
    if isinstance(node, list):
        return [without_created(item) for item in node]
    return node


def normalised(path) -> bytes | object:
    """The file's content for comparison: JSON without its creation timestamps, anything else as bytes."""
    if path.suffix != ".json":
        return path.read_bytes()
    return without_created(json.loads(path.read_text()))


def test_two_runs_of_the_same_config_write_the_same_files(tmp_path):
    config = yaml.safe_load(TINY.read_text())
    snakemake(tmp_path, config)
    shutil.move(tmp_path / "results", tmp_path / "first")
    snakemake(tmp_path, config)  # everything again, from the same generated dataset
    first = sorted(p.relative_to(tmp_path / "first") for p in (tmp_path / "first").rglob("*") if p.is_file())
    again = sorted(p.relative_to(tmp_path / "results") for p in (tmp_path / "results").rglob("*") if p.is_file())
    assert first == again and len(first) > 50
    differing = [str(relative) for relative in first
                 if normalised(tmp_path / "first" / relative) != normalised(tmp_path / "results" / relative)]
    assert differing == []
