"""Stage timing for one request: CUDA events on a GPU, `time.perf_counter` on a CPU.

On a GPU every stage records a start and an end event on the current stream and nothing is
read until `finish()` synchronises once, so timing does not stall the pipeline mid-request.

On a CPU shared with other jobs, wall time also counts the time the scheduler gives them: on the
2-core machine of docs/controller-quality.md, at load average 6.7, the cheapest plan took a
median 106 ms of wall time (p95 133) for 27.8 ms (p95 30.5) of its own thread's CPU time, and
the full plan 192 ms (p95 348, max 1238) for 59.3 (p95 67.0). `ADACTRL_CPU_CLOCK=thread` times
the calling thread's CPU time instead (`time.thread_time`): what the run takes on an idle core.
It needs torch at 1 thread (intra-op threads' work would go uncounted) and is inherited by every
process started from that environment, so a run's workers, profile and evaluation agree.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

CPU_CLOCK_ENV = "ADACTRL_CPU_CLOCK"
CPU_CLOCKS: tuple[str, ...] = ("wall", "thread")


def cpu_clock() -> Callable[[], float]:
    """The CPU timer `ADACTRL_CPU_CLOCK` names: "wall" (default, `time.perf_counter`) or
    "thread" (`time.thread_time`, only with torch at 1 thread). Seconds, like both."""
    name = os.environ.get(CPU_CLOCK_ENV, "wall")
    if name not in CPU_CLOCKS:
        raise ValueError(f"{CPU_CLOCK_ENV}={name!r}; use one of {list(CPU_CLOCKS)}")
    if name == "wall":
        return time.perf_counter
    if torch.get_num_threads() != 1:
        raise ValueError(
            f"{CPU_CLOCK_ENV}=thread times the calling thread only, but torch runs {torch.get_num_threads()} "
            "threads: run with 1 (--num_threads 1) or unset it"
        )
    return time.thread_time


class StageTimer:
    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.use_cuda = self.device.type == "cuda"
        self._events: list[tuple[str, object, object]] = []
        self._durations: dict[str, float] = {}
        self._clock = None if self.use_cuda else cpu_clock()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the enclosed work under `name`; repeated names accumulate."""
        if self.use_cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events.append((name, start, end))
        else:
            assert self._clock is not None
            began = self._clock()
            yield
            self._add(name, (self._clock() - began) * 1000.0)

    def finish(self) -> dict[str, float]:
        """Milliseconds per stage. Synchronises the GPU once."""
        if self.use_cuda and self._events:
            torch.cuda.synchronize(self.device)
            for name, start, end in self._events:
                self._add(name, start.elapsed_time(end))  # type: ignore[attr-defined]
            self._events.clear()
        return dict(self._durations)

    def _add(self, name: str, ms: float) -> None:
        self._durations[name] = self._durations.get(name, 0.0) + ms
