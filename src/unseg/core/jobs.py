"""One workflow job around one stage runner: its log file, its threads, the config's plugins, its provenance.

The workflow's scripts (``workflow/scripts/*.py``) are a few lines each::

    with stage_job(snakemake) as job:
        run_masks(job.input.features, job.output[0], job.params.settings, image_paths=image_paths(job.input.index))

Nothing here imports Snakemake: ``job`` is any object with ``log``, ``threads``, ``config``, ``params``, ``input``,
``output``, ``rule`` and ``wildcards`` as Snakemake's ``snakemake`` object has them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from unseg.config.schema import load_methods
from unseg.core.provenance import log_to, write_provenance


@contextlib.contextmanager
def stage_job(job: Any, stage: str | None = None) -> Iterator[Any]:
    """Run the body with stderr in the job's log and its thread limit, after importing the config's plugins; on
    success write the provenance sidecar of ``output[0]`` when the rule passes its config chain (``params.chain``).

    Args:
        stage: the stage named in the sidecar (default: the rule's name).
    """
    start = time.perf_counter()
    with log_to(job.log[0] if job.log else None, threads=job.threads):
        load_methods(job.config.get("plugins", []))
        yield job
        if "chain" in job.params.keys():
            run = {"wall_time_s": round(time.perf_counter() - start, 3), "threads": job.threads}
            write_provenance(job.output[0], stage or job.rule, job.wildcards.variant, job.params.chain, dict(job.input),
                             run=run)
