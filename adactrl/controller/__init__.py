"""The latency-budget controller: budget encoder, stage 1, stage 2, and its checkpoints."""

from adactrl.controller.checkpoint import knob_space_diff, load_controller, save_controller
from adactrl.controller.modules import BudgetEncoder, Stage1, Stage2, count_parameters
from adactrl.controller.policy import (
    ACTION_COLUMNS,
    Controller,
    ControllerConfig,
    StageAction,
    actions_to_knobs,
    knobs_to_actions,
)

__all__ = [
    "ACTION_COLUMNS",
    "BudgetEncoder",
    "Controller",
    "ControllerConfig",
    "Stage1",
    "Stage2",
    "StageAction",
    "actions_to_knobs",
    "count_parameters",
    "knob_space_diff",
    "knobs_to_actions",
    "load_controller",
    "save_controller",
]
