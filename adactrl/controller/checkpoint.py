"""Save and load a controller with the config and KnobSpace it was built for.

The file holds only plain values and tensors, so it loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path
from typing import Any

import torch

from adactrl.atomic import atomic_path
from adactrl.controller.policy import Controller, ControllerConfig
from adactrl.knobs import KnobSpace

FORMAT = "adactrl.controller/1"
_PLAIN = (type(None), bool, int, float, str, torch.Tensor)


class UnreadableCheckpoint(ValueError):
    """The file is no usable checkpoint: torch cannot read it (truncated, corrupt), it has another
    format, or its weights are not finite."""


def save_controller(
    path: str | os.PathLike, controller: Controller, extra: dict[str, Any] | None = None
) -> None:
    """Write weights, config, KnobSpace and `extra` (plain values and tensors only) to `path`.

    Through `adactrl.atomic.atomic_path` (temp file, fsync, rename): a crash mid-write never leaves
    a torn checkpoint, and a full disk raises `RunFileError` naming the file and the space left.
    """
    extra = {} if extra is None else extra
    _check_plain(extra, "extra")
    path = Path(path)
    payload = {
        "format": FORMAT,
        "config": dataclasses.asdict(controller.config),
        "knob_space": controller.knob_space.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in controller.state_dict().items()},
        "extra": extra,
    }
    # Serialized in memory first: torch.save into a file reports a full disk as a RuntimeError
    # ("file write failed"); a plain write raises the OSError that atomic_path explains.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def load_controller(
    path: str | os.PathLike,
    *,
    expected_knob_space: KnobSpace | None = None,
    expected_d_model: int | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[Controller, dict[str, Any]]:
    """Rebuild the controller saved at `path` -> (controller, extra).

    Raises FileNotFoundError for a missing file, UnreadableCheckpoint (a ValueError) for a file
    that is not a readable checkpoint or holds NaN or inf weights, and ValueError for one made for
    another KnobSpace or d_model than expected.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no controller checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise UnreadableCheckpoint(f"{path} is not a readable controller checkpoint: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise UnreadableCheckpoint(f"{path} is not a controller checkpoint of format {FORMAT!r} (found {found!r})")
    try:
        config = ControllerConfig(**payload["config"])
        knob_space = KnobSpace.from_dict(payload["knob_space"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} holds an invalid controller config or KnobSpace: {err}") from err

    if expected_d_model is not None and config.d_model != expected_d_model:
        raise ValueError(
            f"{path} was made for d_model={config.d_model}, but the model has d_model={expected_d_model}"
        )
    if expected_knob_space is not None and knob_space != expected_knob_space:
        raise ValueError(
            f"{path} was made for another KnobSpace: {knob_space_diff(knob_space, expected_knob_space)}"
        )

    controller = Controller(config, knob_space)
    try:
        controller.load_state_dict(payload["state_dict"])
    except (KeyError, RuntimeError) as err:
        raise ValueError(f"{path} holds weights that do not fit its own config: {err}") from err
    bad = [name for name, value in controller.state_dict().items()
           if value.is_floating_point() and not bool(torch.isfinite(value).all())]  # fmt: skip
    if bad:
        raise UnreadableCheckpoint(f"{path} holds NaN or inf weights ({', '.join(bad)}); use an earlier checkpoint")
    return controller.to(map_location), payload.get("extra", {})


def knob_space_diff(saved: KnobSpace, expected: KnobSpace) -> str:
    """'field: checkpoint X vs expected Y' for every field that differs, joined by '; '."""
    a, b = saved.to_dict(), expected.to_dict()
    return "; ".join(f"{key}: checkpoint {a[key]} vs expected {b[key]}" for key in a if a[key] != b[key])


def _check_plain(value: Any, where: str) -> None:
    # Refuse at save time what weights_only=True would refuse at load time.
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(
                    f"{where} has a key {key!r} of type {type(key).__name__}; use str or int keys"
                )
            _check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN):
        raise TypeError(
            f"{where} is a {type(value).__name__}; checkpoints hold only None, bool, int, float, str, "
            "tensors, and lists/tuples/dicts of them"
        )
