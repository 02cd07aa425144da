"""How many CPU threads a job computes with: the number Snakemake gave it (`threads:`), never all of the node's.

On a shared node (or a SLURM job with `--cpus-per-task`) torch, the BLAS under numpy/scipy and faiss's OpenMP would
otherwise each start one thread per core they see and oversubscribe the CPUs the job was given.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch
from threadpoolctl import threadpool_limits

Item = TypeVar("Item")
Result = TypeVar("Result")

_limits = None  # the process-wide threadpoolctl limit, kept alive for the job's lifetime


def use_threads(count: int) -> int:
    """Limit this process to ``count`` compute threads and log the value used to stderr (the job's log).

    Sets torch's intra-op threads, caps every BLAS and OpenMP pool loaded so far (threadpoolctl), and faiss's OpenMP
    threads. Returns the torch thread count now in force.
    """
    global _limits
    count = int(count)
    if count < 1:
        raise ValueError(f"threads must be >= 1, got {count}")
    torch.set_num_threads(count)
    import faiss  # its OpenMP pool may not be loaded yet, so threadpoolctl alone would miss it

    faiss.omp_set_num_threads(count)
    _limits = threadpool_limits(limits=count)
    print(f"threads: {torch.get_num_threads()} (torch intra-op, BLAS, OpenMP, faiss)", file=sys.stderr)
    return torch.get_num_threads()


def map_images(function: Callable[[Item], Result], items: Iterable[Item]) -> list[Result]:
    """``[function(item) for item in items]``, in order, spread over the job's threads (``torch.get_num_threads()``,
    what :func:`use_threads` set), with the BLAS pools limited to one thread meanwhile.

    For many small per-image problems (a masks method's k-means, components and upsampling, RLE encoding), which
    release the GIL but are too small for a multi-threaded BLAS: threads of a BLAS call would otherwise wait on each
    other. docs/benchmarks.md, "The fused path": 1.7x on 2 cores.
    """
    items = list(items)
    workers = min(torch.get_num_threads(), len(items))
    if workers <= 1:
        return [function(item) for item in items]
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(workers, "per-image") as pool:
        return list(pool.map(function, items))
