"""One torch thread while a tiny baseline network trains."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the enclosed work on one intra-op thread, then restore the previous count.

    The baselines are MLPs of a few thousand parameters: a thread pool only adds synchronisation,
    and on a shared CPU its workers stall whenever another process holds a core (seconds per step).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
