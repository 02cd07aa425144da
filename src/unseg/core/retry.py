"""Out of GPU memory: run a batch in halves instead of failing the job.

A batch that fits on one card may not fit on a smaller one, or next to another job; halving until it fits (and
saying so in the log) keeps a long run going. A single item that does not fit is a real error and is raised.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

Item = TypeVar("Item")
Result = TypeVar("Result")


def in_halves_on_oom(run: Callable[[Sequence[Item]], list[Result]], items: Sequence[Item], what: str = "batch"
                     ) -> list[Result]:
    """``run(items)``, one result per item; when it runs out of GPU memory, ``run`` on each half (recursively).

    Args:
        run: maps a sequence of items to a list with one result per item, in order.
        what: named in the log line, e.g. "features batch".
    """
    try:
        return run(items)
    except torch.cuda.OutOfMemoryError:
        if len(items) <= 1:
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = len(items) // 2
        print(f"out of GPU memory on a {what} of {len(items)}: running it as {half} + {len(items) - half}",
              file=sys.stderr)
        return in_halves_on_oom(run, items[:half], what) + in_halves_on_oom(run, items[half:], what)
