"""Garbage in is refused with a message, before any work: NaN or inf importance scores, a
controller checkpoint holding NaN weights (what `infer` and `evaluate` load), `evaluate --budgets 0`."""

import json

import pytest
import torch
from PIL import Image

from adactrl.cli import main
from adactrl.controller import Controller, ControllerConfig, load_controller, save_controller
from adactrl.models.importance import load_importance_scores


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_importance_scores_must_be_finite(tmp_path, bad):
    path = tmp_path / "importance.json"
    path.write_text(json.dumps({"scores": [1.0, bad, 2.0]}))  # json writes NaN and Infinity, and reads them
    with pytest.raises(ValueError, match=r"must be finite numbers; blocks \{1: "):
        load_importance_scores(path, 3)


def test_a_negative_importance_score_is_a_block_whose_removal_helped_and_ranks_last(tmp_path):
    path = tmp_path / "importance.json"
    path.write_text(json.dumps({"scores": [1.0, -0.2, 2.0]}))  # leave-one-out measures such scores
    assert load_importance_scores(path, 3) == (1.0, -0.2, 2.0)


def test_a_controller_checkpoint_with_nan_weights_is_refused(tmp_path, tiny_model, tiny_model_dir, capsys):
    controller = Controller(ControllerConfig(d_model=tiny_model.hidden_size), tiny_model.knob_space)
    name = next(iter(controller.state_dict()))
    with torch.no_grad():
        controller.state_dict()[name].fill_(float("nan"))
    path = tmp_path / "best_model.pt"
    save_controller(path, controller)
    with pytest.raises(ValueError, match=f"holds NaN or inf weights \\({name}"):
        load_controller(path)
    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    assert main(["infer", "--model_path", tiny_model_dir, "--controller", str(path), "--image",
                 str(tmp_path / "red.png"), "--prompt", "what color is it", "--budget", "50"]) == 2  # fmt: skip
    assert "NaN or inf weights" in capsys.readouterr().err


def test_evaluate_refuses_budget_zero_before_writing_anything(tmp_path, capsys):
    output = tmp_path / "evaluation"
    assert main(["evaluate", "--controller", str(tmp_path / "none.pt"), "--budgets", "0", "10",
                 "--output_dir", str(output)]) == 2  # fmt: skip
    assert "--budgets must be finite and > 0 ms" in capsys.readouterr().err
    assert not output.exists()
