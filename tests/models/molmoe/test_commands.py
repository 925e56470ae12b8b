"""The commands a user runs, with --model_path pointing at a MolmoE checkpoint directory."""

from __future__ import annotations

import json

from adactrl.cli import main
from adactrl.executor import STAGES


def test_infer_answers_with_molmoe(molmoe_dir, image_file, capsys):
    argv = ["infer", "--model_path", str(molmoe_dir), "--image", str(image_file), "--prompt", "what color is it?",
            "--budget", "1000", "--json", "--warmup", "0", "--max_new_tokens", "2"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["latency_ms"]) == {*STAGES, "total"}
    assert report["image_tokens"] in (100, 134, 176)  # the low / medium / high segments of this image
    assert report["knobs"]["blocks"][0] == 0


def test_profile_sweeps_every_static_plan(molmoe_dir, tmp_path, capsys):
    out = tmp_path / "profile"
    argv = ["profile", "--model_path", str(molmoe_dir), "--num_samples", "2", "--output_dir", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary) == 3 * 3 * 2  # tiers x top-k 2..4 x blocks 3..4
    assert (out / "profile.parquet").is_file()


def test_train_runs_on_molmoe(ray_local, molmoe_dir, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--model_path", str(molmoe_dir), "--output_dir", str(out), "--num_epochs", "1",
            "--num_train_samples", "2", "--num_val_samples", "1", "--batch_size", "2", "--group_size", "2",
            "--num_workers", "1", "--budget_range_ms", "5", "2000", "--num_val_budgets", "1", "--oracle_samples", "0",
            "--mlflow_tracking_uri", f"sqlite:///{tmp_path / 'm.db'}"]  # fmt: skip
    assert main(argv) == 0
    assert (out / "summary.json").is_file() and (out / "best_model.pt").is_file()
