import pytest
import torch

from adactrl import timing
from adactrl.timing import StageTimer


def test_stage_timer_accumulates_repeated_stages(monkeypatch):
    clock = iter([0.000, 0.001, 0.010, 0.013, 0.020, 0.022])
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    timer = StageTimer("cpu")
    with timer.stage("controller"):  # 0.000 -> 0.001: 1 ms
        pass
    with timer.stage("vision"):  # 0.010 -> 0.013: 3 ms
        pass
    with timer.stage("controller"):  # 0.020 -> 0.022: 2 ms, 1 + 2 = 3 ms in all
        pass
    durations = timer.finish()
    assert durations == pytest.approx({"controller": 3.0, "vision": 3.0})


def test_stage_timer_measures_real_time():
    timer = StageTimer()
    with timer.stage("work"):
        torch.randn(64, 64) @ torch.randn(64, 64)
    assert timer.finish()["work"] > 0.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_stage_timer_cuda_events():
    timer = StageTimer("cuda")
    x = torch.randn(1024, 1024, device="cuda")
    for _ in range(2):
        with timer.stage("matmul"):
            x @ x
    durations = timer.finish()
    assert set(durations) == {"matmul"} and durations["matmul"] > 0.0
    assert timer.finish() == durations  # events are read once, then kept


def test_thread_clock_counts_only_this_threads_cpu(monkeypatch):
    monkeypatch.setenv(timing.CPU_CLOCK_ENV, "thread")
    monkeypatch.setattr(timing.torch, "get_num_threads", lambda: 1)
    timer = StageTimer("cpu")
    with timer.stage("sleep"):
        import time

        time.sleep(0.05)  # 50 ms of wall time, next to no CPU time
    assert timer.finish()["sleep"] < 10.0


def test_thread_clock_needs_one_torch_thread_and_a_known_name(monkeypatch):
    monkeypatch.setenv(timing.CPU_CLOCK_ENV, "thread")
    monkeypatch.setattr(timing.torch, "get_num_threads", lambda: 2)
    with pytest.raises(ValueError, match="torch runs 2 threads"):
        StageTimer("cpu")
    monkeypatch.setenv(timing.CPU_CLOCK_ENV, "cpu")
    with pytest.raises(ValueError, match="wall"):
        StageTimer("cpu")
