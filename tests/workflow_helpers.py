"""Running the Snakemake workflow from tests: in a temporary working directory, with a config written there."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]


def snakemake(workdir: Path, config: dict, *args: str, check: bool = True,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the workflow in ``workdir`` with ``config`` (written to ``workdir/config.yaml``) on 2 cores.

    ``args`` are further snakemake arguments (targets, ``-n``, ``--profile DIR``); ``env`` adds environment variables
    (a SLURM cluster's ``SLURM_CONF``). Raises AssertionError with the output's tail when ``check`` and it fails.
    """
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [*SNAKEMAKE, "--directory", str(workdir), "--configfile", str(config_path), "--cores", "2", *args],
        capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
        )
    return result


def planned_jobs(dry_run_output: str) -> dict[str, int]:
    """Rule name → job count from a dry run's job-stats table ({} when nothing is to be done)."""
    if "Job stats:" not in dry_run_output:
        return {}
    table = dry_run_output.split("Job stats:")[-1]
    rows = re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)
    return {m.group(1): int(m.group(2)) for m in rows if m.group(1) != "total"}
