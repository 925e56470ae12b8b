"""MolmoE-1B (allenai/MolmoE-1B-0924) implemented natively on transformers' OLMoE and CLIP modules.

`run_case` is the entry point for numerical checks against other implementations: one request
in fp32 on the CPU with the knobs applied to every block, returning the last prefill logits and
KV-cached greedy tokens.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from adactrl.models.molmoe.model import DEFAULT_TIER_CROPS, SEED_IMPORTANCE, MolmoEVLM
from adactrl.models.molmoe.preprocessing import load_image

__all__ = ["DEFAULT_TIER_CROPS", "SEED_IMPORTANCE", "MolmoEVLM", "run_case"]


@lru_cache(maxsize=2)
def _cached_model(ckpt_dir: str) -> MolmoEVLM:
    return MolmoEVLM.load(ckpt_dir, device="cpu", dtype=torch.float32)


@torch.inference_mode()
def run_case(
    ckpt_dir: str | Path, image_path: str | Path | None, prompt: str, knobs: dict, max_new_tokens: int
) -> dict:
    """One request with `knobs` = {"top_k": int | None (every block, block 0 included; None: the
    config's), "skip_blocks": [int] (run as identity), "max_crops": int | None (None: the config's)}.

    Returns {"last_logits": float32 array [embedding_size] at the last prefill position,
    "greedy_tokens": exactly `max_new_tokens` ids of KV-cached greedy decoding, no EOS stop}.
    """
    model = _cached_model(str(Path(ckpt_dir).resolve()))
    config = model.config
    top_k = knobs.get("top_k") or config.top_k
    skip = set(knobs.get("skip_blocks") or ())
    blocks = [i for i in range(config.n_layers) if i not in skip]
    words = model.embed_tokens(model.tokenize(prompt))  # [T, d]
    if image_path is None:
        image_tokens = words[:0]
    else:
        image = model.preprocess_crops(load_image(str(image_path)), knobs.get("max_crops") or config.crops.max_crops)
        image_tokens = model.project(model.encode_vision(image))  # [N, d]
    prefix = model.prefill_layout(image_tokens, words)  # [1, L, d]
    cache = model.new_cache()
    logits = model.lm_logits(model.run_blocks(prefix, blocks, top_k, cache, 0)[:, -1:])  # [1, 1, E]
    last_logits = logits[0, 0].float().numpy().astype(np.float32)
    tokens, position = [], prefix.shape[1]
    while len(tokens) < max_new_tokens:
        token = int(logits[0, -1].argmax())
        tokens.append(token)
        if len(tokens) == max_new_tokens:
            break
        step = model.embed_tokens(torch.tensor([[token]]))  # [1, 1, d]
        logits = model.lm_logits(model.run_blocks(step, blocks, top_k, cache, position))
        position += 1
    return {"last_logits": last_logits, "greedy_tokens": tokens}
