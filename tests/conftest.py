"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

import pytest
import yaml
from workflow_helpers import TINY, snakemake


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One local run of the tiny config (8 synthetic images): (workdir, config, completed process).

    Session-scoped so the workflow tests and the SLURM test, which compares its results with these, share it.
    Tests only read the workdir or dry-run in it.
    """
    workdir = tmp_path_factory.mktemp("tiny")
    config = yaml.safe_load(TINY.read_text())
    result = snakemake(workdir, config)
    return workdir, config, result
