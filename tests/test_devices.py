"""--device is checked when the flags are parsed, before any model loads."""

from __future__ import annotations

import argparse

import pytest
import torch

from adactrl.cli import main
from adactrl.devices import device_arg


def test_cpu_is_accepted():
    assert device_arg("cpu") == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_says_what_to_use_instead(capsys):
    with pytest.raises(argparse.ArgumentTypeError, match="no CUDA GPU is usable here .*; use --device cpu"):
        device_arg("cuda")
    with pytest.raises(SystemExit) as exit_info:
        main(["infer", "--device", "cuda", "--list_vocabulary"])
    assert exit_info.value.code == 2 and "use --device cpu" in capsys.readouterr().err


def test_a_name_that_is_no_device_is_refused():
    with pytest.raises(argparse.ArgumentTypeError, match="'gpu0' is not a device name"):
        device_arg("gpu0")
    with pytest.raises(argparse.ArgumentTypeError, match="runs on cpu or cuda"):
        device_arg("meta")
