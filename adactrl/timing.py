"""Stage timing for one request: CUDA events on a GPU, `time.perf_counter` on a CPU.

On a GPU every stage records a start and an end event on the current stream and nothing is
read until `finish()` synchronises once, so timing does not stall the pipeline mid-request.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class StageTimer:
    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.use_cuda = self.device.type == "cuda"
        self._events: list[tuple[str, object, object]] = []
        self._durations: dict[str, float] = {}

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
            began = time.perf_counter()
            yield
            self._add(name, (time.perf_counter() - began) * 1000.0)

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
