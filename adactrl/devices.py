"""Device names from the command line, checked before any model loads."""

from __future__ import annotations

import argparse


def device_arg(name: str) -> str:
    """argparse `type=` for --device: "cpu", "cuda" or "cuda:N", refused with a message that says
    what to change when this machine cannot run it."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise argparse.ArgumentTypeError(f"{name!r} is not a device name ({err}); use cpu or cuda[:N]") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = "with" if torch.version.cuda else "without"
            raise argparse.ArgumentTypeError(
                f"{name}: no CUDA GPU is usable here (torch {torch.__version__}, built {built} CUDA); use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"{name}: adactrl runs on cpu or cuda[:N]")
    return name
