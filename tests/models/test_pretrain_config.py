import subprocess
import sys

import pytest

from adactrl.models.pretrain_config import PretrainConfig


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"steps": 0}, "steps and batch_size must be at least 1"),
        ({"lr": 0.0}, "lr and vision_lr must be positive"),
        ({"vision_steps": -1}, "vision_steps and dense_weight must not be negative"),
        ({"vision_digit_share": 1.5}, r"vision_digit_share is a probability in \[0, 1\]"),
        ({"full_plan_fraction": -0.1}, "are probabilities in"),
        ({"warm_fraction": 1.5}, r"top_k_draw_fraction and budget_slot_prob are probabilities in \[0, 1\]"),
        ({"slot_ramp_fraction": -0.5}, "are probabilities in"),
        ({"reasoning_low_fraction": 0.6, "reasoning_fraction": 0.5}, "= 1.2 exceeds 1; .* lower one of them"),
        ({"reasoning_weight": 0.0}, "reasoning_weight must be positive"),
        ({"top_k_draw_fraction": 1.2}, r"top_k_draw_fraction and budget_slot_prob are probabilities in \[0, 1\]"),
        ({"expert_size": 0}, "expert_size must be at least 1, got 0"),
        ({"num_experts": 4}, "num_experts must be at least the default top-k 8, got 4"),
        ({"router_balance_weight": -0.01}, r"router_balance_weight must be at least 0 \(0 = off\), got -0.01"),
    ],
)
def test_bad_settings_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        PretrainConfig(output_dir="unused", **overrides)


def test_the_command_line_builds_without_importing_torch():
    code = "import sys; from adactrl.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"  # `adactrl --help` stays instant
