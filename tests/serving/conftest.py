"""A controller checkpoint as `adactrl train` writes best_model.pt (untrained weights: these tests
check the serving, not the training), and request bodies around examples/color.png."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from adactrl.controller import Controller, ControllerConfig, save_controller
from adactrl.training.records import BudgetRange

REPO = Path(__file__).resolve().parents[2]
PNG = (REPO / "examples" / "color.png").read_bytes()
PROMPT = "what color is the big triangle ?"


def png_base64() -> str:
    return base64.b64encode(PNG).decode()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, shipped_model) -> str:
    """best_model.pt for the shipped model, its budget range calibrated with one thread."""
    path = tmp_path_factory.mktemp("serve") / "best_model.pt"
    controller = Controller(ControllerConfig(d_model=shipped_model.hidden_size, seed=0), shipped_model.knob_space)
    save_controller(path, controller, {"budget_range": BudgetRange(30.0, 120.0, 25.0, 100.0, 1, "cpu").to_dict()})
    return str(path)
