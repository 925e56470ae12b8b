import dataclasses

import pytest
import torch

from adactrl.controller import Controller, ControllerConfig, load_controller, save_controller
from adactrl.knobs import KnobSpace

D = 16


@pytest.fixture
def knob_space() -> KnobSpace:
    return KnobSpace.from_model(num_layers=16, default_top_k=8)


@pytest.fixture
def saved(tmp_path, knob_space):
    controller = Controller(ControllerConfig(d_model=D, seed=3), knob_space)
    with torch.no_grad():
        controller.stage2.top_k_head.bias.add_(1.0)  # differs from a fresh init
    path = tmp_path / "controller.pt"
    save_controller(path, controller, {"epoch": 2, "history": [0.5, 0.7], "rng": torch.arange(3)})
    return path, controller


def test_round_trip(saved, knob_space):
    path, controller = saved
    torch.load(path, weights_only=True)  # plain values and tensors only
    loaded, extra = load_controller(path, expected_knob_space=knob_space, expected_d_model=D)
    assert loaded.config == controller.config
    assert loaded.knob_space == knob_space
    for (name, a), b in zip(controller.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert extra["epoch"] == 2 and extra["history"] == [0.5, 0.7]
    assert torch.equal(extra["rng"], torch.arange(3))
    assert not path.with_name(path.name + ".tmp").exists()


def test_other_knob_space_names_the_difference(saved, knob_space):
    path, _ = saved
    other = dataclasses.replace(knob_space, top_k_values=(6, 7, 8))
    expected = r"top_k_values: checkpoint \[4, 5, 6, 7, 8\] vs expected \[6, 7, 8\]"
    with pytest.raises(ValueError, match=expected):
        load_controller(path, expected_knob_space=other)


def test_other_d_model(saved):
    path, _ = saved
    with pytest.raises(ValueError, match="d_model=16.*d_model=2048"):
        load_controller(path, expected_d_model=2048)


def test_missing_and_corrupt_files_name_the_path(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_controller(missing)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.pt"):
        load_controller(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="foreign.pt.*format"):
        load_controller(foreign)


def test_extra_must_be_plain(tmp_path, knob_space):
    controller = Controller(ControllerConfig(d_model=D), knob_space)
    with pytest.raises(TypeError, match=r"extra\['space'\] is a KnobSpace"):
        save_controller(tmp_path / "c.pt", controller, {"space": knob_space})
