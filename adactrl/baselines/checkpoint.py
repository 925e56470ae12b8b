"""Saving and loading the baselines' small checkpoints: a format tag, a config, the KnobSpace
they were made for, the weights and their metrics, readable with `weights_only=True`."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adactrl.controller import knob_space_diff
from adactrl.knobs import KnobSpace


def save_payload(path: str | os.PathLike, fmt: str, model: nn.Module, extra: dict[str, Any]) -> None:
    """model must carry `config` (a dataclass) and `knob_space`; extra adds plain fields."""
    payload = {
        "format": fmt,
        "config": asdict(model.config),
        "knob_space": model.knob_space.to_dict(),
        **extra,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)


def load_payload(
    path: str | os.PathLike, fmt: str, what: str, expected_knob_space: KnobSpace | None
) -> tuple[dict[str, Any], KnobSpace]:
    """-> (payload, its KnobSpace). Clear errors for a missing file, another format or KnobSpace."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a readable {what} checkpoint: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise ValueError(f"{path} is not a {what} checkpoint of format {fmt!r}")
    knob_space = KnobSpace.from_dict(payload["knob_space"])
    if expected_knob_space is not None and knob_space != expected_knob_space:
        raise ValueError(
            f"{path} was made for another KnobSpace: {knob_space_diff(knob_space, expected_knob_space)}"
        )
    return payload, knob_space
