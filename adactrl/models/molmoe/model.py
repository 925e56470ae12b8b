"""MolmoE-1B on transformers' native modules, behind the `MoEVLM` adapter.

- Vision: `CLIPVisionModel` (CLIP ViT-L/14-336 in the release), run only as deep as the deepest
  layer the connector reads; the outputs of `vit_layers` (-2 and -9) are concatenated.
- Connector and preprocessing: Molmo's own (`connector.py`, `preprocessing.py`).
- Language model: `OlmoeModel` (QK-norm, non-interleaved RoPE, softmax top-k routing without
  renormalisation) with an embedding table of `embedding_size + additional_vocab_size` rows, and
  an LM head over all `embedding_size` rows, so greedy decoding takes the argmax over all of them.

The prefill sequence is `[BOS, image segment, prompt in chat format, budget token]`: image
features are added onto the `<im_patch>` embeddings of the image segment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, DynamicCache, OlmoeConfig, OlmoeModel
from transformers.models.olmoe.modeling_olmoe import OlmoeRotaryEmbedding

from adactrl.knobs import KnobSpace
from adactrl.models.embedded import (
    IMPORTANCE_FILE,
    append_budget,
    cache_keyword,
    copy_dynamic_cache,
    run_olmoe_blocks,
)
from adactrl.models.importance import load_importance_scores
from adactrl.models.molmoe.config import MolmoEConfig, load_config
from adactrl.models.molmoe.connector import MolmoConnector
from adactrl.models.molmoe.preprocessing import MolmoImage, preprocess
from adactrl.models.molmoe.tokenizer import MolmoETokenizer
from adactrl.models.molmoe.weights import load_weights

DEFAULT_TIER_CROPS: Mapping[str, int] = {"low": 3, "medium": 6, "high": 12}
"""Tier -> `max_crops`, as in the seed prototype."""
SEED_IMPORTANCE: tuple[float, ...] = (
    0.56, 0.08, 0.004, 0.03, 0.001, 0.08, 0.04, 0.05, 0.07, 0.06, 0.003, 0.04, 0.06, 0.002, 0.06, 0.06,
)
"""Per-block importance of MolmoE-1B-0924 measured by the seed prototype (its flat block -> score
JSON, quoted in DESIGN.md section 7): the default for a checkpoint of MolmoE-1B's shape that has
no importance.json of its own. `adactrl importance --model_path DIR` measures new scores."""


@dataclass(frozen=True)
class VisionFeatures:
    features: torch.Tensor
    """[C, P, F] concatenated ViT features of every crop (CLS dropped)."""
    image: MolmoImage


class MolmoEVLM(nn.Module):
    def __init__(
        self,
        config: MolmoEConfig,
        tokenizer: MolmoETokenizer,
        importance: Sequence[float] | None = None,
        tier_crops: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        vision = config.vision
        if vision.heads * vision.head_dim != vision.width:
            raise ValueError(f"image_num_heads x image_head_dim must equal image_emb_dim ({vision.width})")
        self.config = config
        self.tokenizer = tokenizer
        self.vision = CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=vision.width,
                intermediate_size=vision.mlp_dim,
                num_hidden_layers=config.deepest_vit_layer,
                num_attention_heads=vision.heads,
                image_size=vision.crop_size,
                patch_size=vision.patch_size,
                hidden_act="quick_gelu",
                layer_norm_eps=vision.norm_eps,
            )
        )
        self.connector = MolmoConnector(config)
        self.lm = OlmoeModel(self._olmoe_config(config))
        self.lm_head = nn.Linear(config.d_model, config.embedding_size, bias=False)
        self._cache_keyword = cache_keyword(type(self.lm.layers[0]))
        self.tier_crops = dict(tier_crops or DEFAULT_TIER_CROPS)
        if any(n < 1 for n in self.tier_crops.values()):
            raise ValueError(f"every tier needs at least one crop, got {self.tier_crops}")
        self.knob_space = KnobSpace.from_model(config.n_layers, config.top_k, tiers=tuple(self.tier_crops))
        self.hidden_size = config.d_model
        self.eos_token_id = tokenizer.eos_id
        self.max_context = config.max_sequence_length
        self.importance: tuple[float, ...] = (
            tuple(float(s) for s in importance)
            if importance is not None
            else tuple(float(config.n_layers - i) for i in range(config.n_layers))
        )

    @staticmethod
    def _olmoe_config(config: MolmoEConfig) -> OlmoeConfig:
        return OlmoeConfig(
            vocab_size=config.num_embeddings,
            hidden_size=config.d_model,
            intermediate_size=config.expert_hidden,
            num_hidden_layers=config.n_layers,
            num_attention_heads=config.n_heads,
            num_key_value_heads=config.n_kv_heads,
            num_experts=config.num_experts,
            num_experts_per_tok=config.top_k,
            norm_topk_prob=False,
            rms_norm_eps=config.layer_norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
            max_position_embeddings=config.max_sequence_length,
            clip_qkv=config.clip_qkv,
            pad_token_id=None,
            bos_token_id=None,
            eos_token_id=None,
            tie_word_embeddings=False,
        )

    # -- loading ----------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        tier_crops: Mapping[str, int] | None = None,
    ) -> MolmoEVLM:
        """Build on the meta device, allocate once in `dtype`, then stream the shards in."""
        directory = Path(directory)
        config = load_config(directory)
        tokenizer = MolmoETokenizer.from_directory(directory)
        model = cls.empty(config, tokenizer, device=device, dtype=dtype, tier_crops=tier_crops)
        load_weights(model, directory, config)
        if (directory / IMPORTANCE_FILE).is_file():
            model.importance = load_importance_scores(directory / IMPORTANCE_FILE, config.n_layers)
        elif config.is_molmoe_1b:
            model.importance = SEED_IMPORTANCE
        return model.eval().requires_grad_(False)

    @classmethod
    def empty(
        cls,
        config: MolmoEConfig,
        tokenizer: MolmoETokenizer,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        tier_crops: Mapping[str, int] | None = None,
    ) -> MolmoEVLM:
        """A model with uninitialised weights of `dtype` on `device` (no second copy is ever made)."""
        with torch.device("meta"):
            model = cls(config, tokenizer, tier_crops=tier_crops)
        model = model.to(dtype=dtype).to_empty(device=device)
        # Buffers computed at construction are lost on the meta device: rebuild them.
        model.lm.rotary_emb = OlmoeRotaryEmbedding(model.lm.config).to(device)
        embeddings = model.vision.embeddings
        embeddings.position_ids = torch.arange(embeddings.num_positions, device=device)[None]
        return model.eval().requires_grad_(False)

    @torch.no_grad()
    def init_random_(self, seed: int = 0, std: float = 0.02) -> MolmoEVLM:
        """Random weights in place (benchmarks and tests): norms at 1, biases at 0, the rest N(0, std)."""
        generator = torch.Generator().manual_seed(seed)
        for name, param in self.named_parameters():
            if "norm" in name or "layrnorm" in name:
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
        return self

    def set_experts_implementation(self, name: str) -> None:
        """'eager' (a loop over the experts hit) or 'grouped_mm' / 'batched_mm' (transformers' kernels)."""
        self.lm.set_experts_implementation(name)

    # -- the MoEVLM adapter interface -------------------------------------------------------

    def tokenize(self, prompt: str) -> torch.Tensor:
        ids = self.tokenizer.encode_prompt(prompt)
        if len(ids) >= self.max_context:
            raise ValueError(f"the prompt has {len(ids)} tokens; MolmoE's context is {self.max_context}")
        return torch.tensor(ids, dtype=torch.long)

    def tokenize_answer(self, answer: str) -> torch.Tensor:
        # The answer follows "Assistant:" in the chat format, so its first word carries the space.
        return torch.tensor(self.tokenizer.encode(" " + answer.strip()), dtype=torch.long)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm.embed_tokens(ids.to(self.lm.embed_tokens.weight.device))

    def preprocess(self, image: Image.Image, tier: str) -> MolmoImage:
        if tier not in self.tier_crops:
            raise ValueError(f"unknown tier {tier!r}; choose one of {list(self.tier_crops)}")
        return self.preprocess_crops(image, self.tier_crops[tier])

    def preprocess_crops(self, image: Image.Image, max_crops: int) -> MolmoImage:
        return preprocess(image, self.config, self.tokenizer.image_ids, max_crops)

    def encode_vision(self, image: MolmoImage) -> VisionFeatures:
        vit = self.vision
        dtype = vit.embeddings.patch_embedding.weight.dtype
        hidden = vit.pre_layrnorm(vit.embeddings(image.pixels.to(dtype)))  # [C, 1+P, d_v]
        outputs = []
        for layer in vit.encoder.layers:
            hidden = layer(hidden, attention_mask=None)
            outputs.append(hidden)
        features = torch.cat([outputs[i % self.config.vision.layers] for i in self.config.vit_layers], dim=-1)
        # As released: a crop holding any pixel exactly at -1 (the value that pads a batch of
        # crops) counts as padding and its features are zeroed, even when it is a real crop
        # whose normalised pixel happens to land on -1.
        real = (image.pixels != -1).flatten(1).all(dim=1).to(features.dtype)  # [C]
        return VisionFeatures(features=features[:, 1:] * real[:, None, None], image=image)

    def project(self, features: VisionFeatures) -> torch.Tensor:
        image = features.image
        pooled = self.connector(features.features, image.patch_masks.to(features.features.dtype))  # [C, Q, d]
        segment = self.embed_tokens(image.tokens).clone()  # [N, d]
        positions = image.feature_positions.reshape(-1).to(segment.device)
        keep = positions >= 0
        segment.index_add_(0, positions[keep], pooled.reshape(-1, pooled.shape[-1])[keep].to(segment.dtype))
        return segment

    def prefill_layout(
        self, image_tokens: torch.Tensor, words: torch.Tensor, budget_token: torch.Tensor | None = None
    ) -> torch.Tensor:
        bos = self.embed_tokens(torch.tensor([self.tokenizer.bos_id]))
        return append_budget([bos, image_tokens, words], budget_token)

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.lm.config)

    def copy_cache(self, cache: DynamicCache) -> DynamicCache:
        return copy_dynamic_cache(cache)

    def run_blocks(
        self, hidden: torch.Tensor, blocks: Sequence[int], top_k: int, cache: Any, start: int
    ) -> torch.Tensor:
        return run_olmoe_blocks(
            self.lm.layers, self.lm.rotary_emb, hidden, blocks, top_k, cache, start, self._cache_keyword
        )

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.lm.norm(hidden))

    def embedding_norm(self) -> float:
        rows = self.lm.embed_tokens.weight[: self.config.vocab_size]
        return float(rows.detach().float().norm(dim=-1).mean())

