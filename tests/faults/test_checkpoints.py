"""Checkpoints under faults, in process (`run_training(local=True)`, the same driver and loop as
`adactrl train`): a disk that fills while a checkpoint is written, and a newest checkpoint
truncated after the run. Neither loses what was saved before, and a resume finishes the run."""

import errno
import logging
import pathlib

import pytest

from adactrl.atomic import RunFileError
from adactrl.controller import load_controller
from adactrl.orchestration.driver import run_training
from tests.faults.checks import assert_mlflow_consistent, assert_nothing_lost, history_keys
from tests.training.helpers import cost_latency, small_config


def test_a_full_disk_names_the_file_keeps_the_last_checkpoint_and_the_run_resumes(tmp_path, tiny_model_dir,
                                                                                 monkeypatch):  # fmt: skip
    run_dir = tmp_path / "run"
    real_write = pathlib.Path.write_bytes

    def disk_fills_at_epoch_2(path, data):
        if "checkpoint_epoch_2" in path.name:
            real_write(path, bytes(data)[: len(data) // 2])  # half of it fits, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", disk_fills_at_epoch_2)
    config = small_config(run_dir, tiny_model_dir, num_epochs=2)
    with pytest.raises(RunFileError) as full:
        run_training(config, local=True, latency_fn=cost_latency)
    message = str(full.value)
    assert str(run_dir / "checkpoint_epoch_2.pt") in message and "no space left" in message and "MiB free" in message
    assert sorted(p.name for p in run_dir.iterdir() if p.suffix in (".pt", ".tmp")) == [
        "best_model.pt", "checkpoint_epoch_1.pt"]  # no torn file, no temp file left behind
    _, extra = load_controller(run_dir / "checkpoint_epoch_1.pt")
    assert extra["trainer"]["step"] == 2
    run_id = extra["trainer"]["mlflow_run_id"]
    assert_mlflow_consistent(config.mlflow_tracking_uri, run_id, steps=4, epochs=2, status="FAILED")

    monkeypatch.setattr(pathlib.Path, "write_bytes", real_write)  # space freed
    outcome = run_training(small_config(run_dir, tiny_model_dir, num_epochs=2, resume=True), local=True,
                           latency_fn=cost_latency)  # fmt: skip
    assert outcome.run_id == run_id
    assert_nothing_lost(outcome, steps=4, epochs=2)


def test_resume_skips_a_truncated_newest_checkpoint_saying_why(tmp_path, tiny_model_dir, caplog):
    run_dir = tmp_path / "run"
    run_training(small_config(run_dir, tiny_model_dir, num_epochs=2), local=True, latency_fn=cost_latency)
    newest = run_dir / "checkpoint_epoch_2.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated outside adactrl (a copy, a crash of the disk)

    caplog.set_level(logging.INFO, logger="adactrl.train")
    outcome = run_training(small_config(run_dir, tiny_model_dir, num_epochs=2, resume=True), local=True,
                           latency_fn=cost_latency)  # fmt: skip
    assert "skipping checkpoint_epoch_2.pt, which does not load" in caplog.text
    assert "resuming after epoch 1 (step 2)" in caplog.text
    assert_nothing_lost(outcome, steps=4, epochs=2)  # epoch 2 taken again, its checkpoint rewritten
    assert history_keys(run_dir / "training_history.csv", "step") == [1, 2, 3, 4]


def test_resume_with_no_checkpoint_that_loads_says_why_for_each(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint_epoch_1.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="no checkpoint in .* loads .*checkpoint_epoch_1.pt is not a readable"):
        run_training(small_config(run_dir, tiny_model_dir, num_epochs=2, resume=True), local=True,
                     latency_fn=cost_latency)  # fmt: skip
