"""The one way to load a frozen model: `load_model(path)` tells the kind from `config.json`.

- no path: the shipped embedded model;
- `config.json` with `"model_type": "molmo"`: MolmoE (a MolmoE-1B-0924 directory as downloaded);
- `config.json` with the embedded model's fields and `model.safetensors`: an embedded model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch stays unimported until a model loads: `adactrl --help` is instant
    import torch

    from adactrl.models.adapter import MoEVLM

EMBEDDED_FIELDS = ("vocab_size", "num_layers", "num_experts", "crop")
"""Fields of an embedded model's config.json (adactrl's own format)."""
KNOWN_MODEL_TYPES = {"molmo": "MolmoE (allenai/MolmoE-1B-0924)"}


def load_model(
    path: str | Path | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    tier_crops: Mapping[str, int] | None = None,
) -> MoEVLM:
    """Load the frozen model at `path` (the shipped embedded model if None) onto `device`.

    dtype: the weights' dtype; float32 by default on a CPU, bfloat16 on a GPU for MolmoE.
    tier_crops: MolmoE only, tier -> max_crops (default low 3, medium 6, high 12).
    """
    import torch

    device = torch.device(device)
    kind = model_kind(path)
    if dtype is None:
        dtype = torch.bfloat16 if kind == "molmo" and device.type == "cuda" else torch.float32
    check_dtype(dtype, device, path)
    if kind == "molmo":
        from adactrl.models.molmoe import MolmoEVLM

        return MolmoEVLM.load(path, device=device, dtype=dtype, tier_crops=tier_crops)
    if tier_crops is not None:
        raise ValueError("tier_crops applies to MolmoE checkpoints; the embedded model's tiers are fixed")
    from adactrl.models.embedded import EmbeddedVLM

    return EmbeddedVLM.load(path).to(device=device, dtype=dtype)


def model_kind(path: str | Path | None) -> str:
    """'embedded' or 'molmo', from the directory's config.json; a clear error otherwise."""
    if path is None:
        return "embedded"
    directory = Path(path)
    config = directory / "config.json"
    looked_for = (
        f"looked for {config} with \"model_type\": \"molmo\" (a MolmoE-1B-0924 download: config.json, "
        "model*.safetensors, tokenizer.json, preprocessor_config.json) or with the embedded model's fields "
        f"{list(EMBEDDED_FIELDS)} beside model.safetensors (from `adactrl pretrain-embedded`)"
    )
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory not found: {directory}; {looked_for}")
    if not config.is_file():
        raise FileNotFoundError(f"{directory} has no config.json, so its model kind is unknown; {looked_for}")
    try:
        data = json.loads(config.read_text())
    except ValueError as err:
        raise ValueError(f"{config} is not valid JSON ({err}); {looked_for}") from err
    model_type = data.get("model_type") if isinstance(data, dict) else None
    if model_type in KNOWN_MODEL_TYPES:
        return model_type
    if model_type is not None:
        known = ", ".join(f"{k!r} ({v})" for k, v in KNOWN_MODEL_TYPES.items())
        raise ValueError(f"{config}: model_type {model_type!r} is not supported; adactrl loads {known}")
    if isinstance(data, dict) and all(field in data for field in EMBEDDED_FIELDS):
        return "embedded"
    raise ValueError(f"{config} matches no model adactrl knows; {looked_for}")


def check_dtype(dtype: torch.dtype, device: torch.device, path: str | Path | None = None) -> None:
    """Refuse a dtype the device cannot compute in, before any weight is read."""
    import torch

    where = f" for {path}" if path is not None else ""
    if not dtype.is_floating_point:
        raise ValueError(f"dtype {dtype}{where} is not a floating-point type; use torch.float32 (CPU) or torch.bfloat16 (GPU)")
    try:
        x = torch.ones(1, 2, 4, 8, dtype=dtype, device=device)
        torch.nn.functional.scaled_dot_product_attention(x, x, x)
        torch.nn.functional.linear(x, torch.ones(8, 8, dtype=dtype, device=device))
    except (RuntimeError, TypeError, NotImplementedError) as err:
        raise ValueError(
            f"{device} cannot run dtype {dtype}{where} ({err}); use torch.float32 on a CPU or torch.bfloat16 "
            "on a GPU that supports it"
        ) from err
