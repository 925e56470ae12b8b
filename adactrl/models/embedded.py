"""The embedded default model: a small MoE VLM built from transformers' native classes.

A CLIP-style vision tower reads Molmo-style crops, 2x2 patch groups are concatenated and
projected to the language model's width, and transformers' `OlmoeForCausalLM` (16 blocks,
16 experts, top-8 by default) answers. It implements the `MoEVLM` adapter interface.
"""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, DynamicCache, OlmoeConfig, OlmoeForCausalLM

from adactrl.knobs import KnobSpace
from adactrl.models.importance import load_importance_scores
from adactrl.models.preprocessing import CropConfig, make_crops
from adactrl.models.tokenizer import WordTokenizer

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
IMPORTANCE_FILE = "importance.json"


def cache_keyword(layer_type: type[nn.Module]) -> str:
    """The name under which a transformers decoder layer takes its KV cache.

    transformers 5.x renamed the argument from `past_key_values` to `cache` (5.17 still has the
    old name, 5.24 the new one). A layer swallows unknown keywords into `**kwargs`, so passing
    the wrong name drops the cache without an error and decode tokens attend only to themselves.
    """
    parameters = inspect.signature(layer_type.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    raise RuntimeError(
        f"{layer_type.__name__}.forward takes neither `cache` nor `past_key_values`: this transformers "
        "release is not supported; install one that pyproject.toml allows"
    )


def run_olmoe_blocks(
    layers: nn.ModuleList,
    rotary_emb: nn.Module,
    hidden: torch.Tensor,
    blocks: Sequence[int],
    top_k: int,
    cache: Any,
    start: int,
    keyword: str,
    masks: dict[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Run OLMoE decoder `layers[i]` for i in `blocks`, in order, at router top-k `top_k`, on
    hidden [1, T, d] for positions start..start+T-1; the adapters built on OLMoE share it.

    No mask unless `masks` gives one for a block: sequences are unpadded (or right-padded in
    training), causal attention is implied for several tokens and a single decode token sees its
    whole cached past. Skipped blocks write nothing to the cache, so decode stays consistent.
    """
    if not blocks:
        return hidden
    positions = torch.arange(start, start + hidden.shape[1], device=hidden.device).unsqueeze(0)
    rotary = rotary_emb(hidden, positions)
    for index in blocks:
        block = layers[index]
        block.mlp.gate.top_k = top_k
        hidden = block(
            hidden,
            attention_mask=(masks or {}).get(index),
            position_ids=positions,
            use_cache=cache is not None,
            **{keyword: cache},
            position_embeddings=rotary,
        )
    return hidden


def copy_dynamic_cache(cache: DynamicCache) -> DynamicCache:
    """A copy of a transformers KV cache whose tensors share nothing with the original: each layer
    copied with its tensors cloned (`copy.deepcopy` also copies everything else the cache refers to,
    and took 4-8x longer here: 0.8-1.6 ms against 0.2 ms for 5 blocks of 120 positions)."""
    copied = copy.copy(cache)
    copied.layers = [_copy_layer(layer) for layer in cache.layers]
    return copied


def _copy_layer(layer: Any) -> Any:
    copied = copy.copy(layer)
    for name, value in vars(layer).items():
        if isinstance(value, torch.Tensor):
            setattr(copied, name, value.clone())
    return copied


def append_budget(parts: list[torch.Tensor], budget_token: torch.Tensor | None) -> torch.Tensor:
    """Concatenate prefill parts [n_i, d] with the budget token [d] last -> [1, L, d]."""
    if budget_token is not None:
        parts = [*parts, budget_token.reshape(1, -1).to(parts[-1].dtype)]
    return torch.cat(parts).unsqueeze(0)


@dataclass(frozen=True)
class EmbeddedConfig:
    """Sizes of the embedded model. The defaults are the shipped model's."""

    vocab_size: int
    """Word-level vocabulary size, special tokens included."""
    hidden_size: int = 128
    """d_model of the language model."""
    num_layers: int = 16
    """Decoder blocks (MolmoE-1B has 16)."""
    num_experts: int = 16
    """Experts per MoE block."""
    top_k: int = 8
    """Default experts per token (MolmoE-1B uses 8)."""
    expert_size: int = 64
    """Hidden width of each expert's MLP."""
    num_heads: int = 4
    vision_hidden: int = 128
    vision_layers: int = 3
    vision_heads: int = 4
    patch_size: int = 4
    """Vision patch size in pixels; 2x2 groups of patches become one image token."""
    max_context: int = 256
    """Longest sequence (image tokens + prompt + budget token + answer)."""
    max_answer_tokens: int = 4
    stem_self_only: bool = False
    """Block 0 attends only from each token to itself: a per-token stem, so every step that
    mixes tokens (question with image, object with object) happens in blocks the top-k and
    block-count knobs reach. Block 0 always runs at the default top-k (DESIGN §1)."""
    pad_token_id: int = 0
    bos_token_id: int = 2
    eos_token_id: int = 3
    crop: CropConfig = field(default_factory=CropConfig)

    def __post_init__(self) -> None:
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k {self.top_k} exceeds num_experts {self.num_experts}")
        patches = self.crop.crop_size // self.patch_size
        if self.crop.crop_size % self.patch_size or patches % 2:
            raise ValueError(
                f"crop_size {self.crop.crop_size} must be an even multiple of patch_size {self.patch_size} "
                "so that 2x2 patch groups tile each crop"
            )

    @property
    def tokens_per_side(self) -> int:
        """Image tokens along one side of a crop (a token is a 2x2 group of patches)."""
        return self.crop.crop_size // self.patch_size // 2

    @property
    def tokens_per_crop(self) -> int:
        return self.tokens_per_side**2

    def to_dict(self) -> dict:
        data = asdict(self)
        data["crop"]["tier_grids"] = [list(t) for t in self.crop.tier_grids]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> EmbeddedConfig:
        data = dict(data)
        crop = dict(data.pop("crop"))
        crop["tier_grids"] = tuple((str(t), int(g)) for t, g in crop["tier_grids"])
        return cls(crop=CropConfig(**crop), **data)


class EmbeddedVLM(nn.Module):
    """The shipped small MoE VLM. Frozen at inference; `pretrain` trains it once."""

    def __init__(
        self,
        config: EmbeddedConfig,
        tokenizer: WordTokenizer,
        importance: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.vision = CLIPVisionModel(
            CLIPVisionConfig(
                image_size=config.crop.crop_size,
                patch_size=config.patch_size,
                hidden_size=config.vision_hidden,
                intermediate_size=2 * config.vision_hidden,
                num_hidden_layers=config.vision_layers,
                num_attention_heads=config.vision_heads,
            )
        )
        self.projector = nn.Sequential(
            nn.Linear(4 * config.vision_hidden, config.hidden_size),
            nn.GELU(),
            nn.Linear(config.hidden_size, config.hidden_size),
        )
        # One learned embedding per crop slot (global, each medium crop, each high crop) so the
        # language model knows where a crop sits in the image.
        self.crop_slots = {1 + g * g: offset for g, offset in _slot_offsets(config.crop)}
        self.crop_embedding = nn.Embedding(
            1 + sum(g * g for _, g in config.crop.tier_grids), config.hidden_size
        )
        self.lm = OlmoeForCausalLM(
            OlmoeConfig(
                vocab_size=config.vocab_size,
                hidden_size=config.hidden_size,
                intermediate_size=config.expert_size,
                num_hidden_layers=config.num_layers,
                num_attention_heads=config.num_heads,
                num_key_value_heads=config.num_heads,
                num_experts=config.num_experts,
                num_experts_per_tok=config.top_k,
                max_position_embeddings=config.max_context,
                pad_token_id=config.pad_token_id,
                bos_token_id=config.bos_token_id,
                eos_token_id=config.eos_token_id,
                norm_topk_prob=False,
            )
        )
        self._cache_keyword = cache_keyword(type(self.lm.model.layers[0]))
        self.knob_space = KnobSpace.from_model(config.num_layers, config.top_k, tiers=config.crop.tiers)
        self.hidden_size = config.hidden_size
        self.eos_token_id = config.eos_token_id
        self.max_context = config.max_context
        self.importance: tuple[float, ...] = (
            tuple(float(s) for s in importance) if importance is not None else _depth_prior(config.num_layers)
        )

    # -- the MoEVLM adapter interface -------------------------------------------------------

    @property
    def blocks(self) -> nn.ModuleList:
        return self.lm.model.layers

    def tokenize(self, prompt: str) -> torch.Tensor:
        ids = self.tokenizer.encode(prompt)
        limit = self.max_context - self.config.max_answer_tokens - 1 - self.max_image_tokens
        if len(ids) > limit:
            raise ValueError(
                f"the prompt has {len(ids)} tokens; this model's context allows at most {limit} "
                "prompt tokens beside the image, budget and answer tokens"
            )
        return torch.tensor(ids, dtype=torch.long)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm.model.embed_tokens(ids)

    def preprocess(self, image: Image.Image, tier: str) -> torch.Tensor:
        return make_crops(image, tier, self.config.crop)

    def tokenize_answer(self, answer: str) -> torch.Tensor:
        return self.tokenize(answer)

    def prefill_layout(
        self, image_tokens: torch.Tensor, words: torch.Tensor, budget_token: torch.Tensor | None = None
    ) -> torch.Tensor:
        return append_budget([image_tokens, words], budget_token)

    def encode_vision(self, crops: torch.Tensor) -> torch.Tensor:
        # [C, 3, H, W] -> [C, P, d_v], the CLS position dropped
        return self.vision(pixel_values=crops).last_hidden_state[:, 1:]

    def project(self, features: torch.Tensor) -> torch.Tensor:
        tokens = self.project_batch(features.unsqueeze(0))  # [1, C*P/4, d]
        return tokens[0]

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.lm.config)

    def copy_cache(self, cache: DynamicCache) -> DynamicCache:
        return copy_dynamic_cache(cache)

    def run_blocks(
        self,
        hidden: torch.Tensor,
        blocks: Sequence[int],
        top_k: int,
        cache: Any,
        start: int,
    ) -> torch.Tensor:
        stem = self._stem_mask(hidden, start) if self.config.stem_self_only else None
        return run_olmoe_blocks(
            self.blocks, self.lm.model.rotary_emb, hidden, blocks, top_k, cache, start, self._cache_keyword,
            masks={0: stem} if stem is not None else None,
        )

    @staticmethod
    def _stem_mask(hidden: torch.Tensor, start: int) -> torch.Tensor:
        """Additive [1, 1, q, start + q] mask letting the token at `start + i` see only itself
        (keys cached before `start` included, so prefill and decode agree)."""
        length = hidden.shape[1]
        keys = torch.arange(start + length, device=hidden.device)
        queries = torch.arange(start, start + length, device=hidden.device)
        blocked = keys[None, :] != queries[:, None]
        mask = torch.zeros(length, start + length, dtype=hidden.dtype, device=hidden.device)
        return mask.masked_fill(blocked, torch.finfo(hidden.dtype).min)[None, None]

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm.lm_head(self.lm.model.norm(hidden))

    # -- batched pieces shared with pretraining ---------------------------------------------

    @property
    def max_image_tokens(self) -> int:
        return max(self.config.crop.max_crops(t) for t in self.config.crop.tiers) * self.config.tokens_per_crop

    def project_batch(self, features: torch.Tensor) -> torch.Tensor:
        """[B, C, P, d_v] -> [B, C * P/4, d]: concatenate 2x2 patch groups, project, add slots."""
        batch, crops, patches, width = features.shape
        side = int(patches**0.5)
        grid = features.reshape(batch, crops, side // 2, 2, side // 2, 2, width)
        groups = grid.permute(0, 1, 2, 4, 3, 5, 6).reshape(batch, crops, -1, 4 * width)
        tokens = self.projector(groups)  # [B, C, P/4, d]
        offset = self.crop_slots.get(crops)
        if offset is None:
            raise ValueError(f"{crops} crops match no tier; expected one of {sorted(self.crop_slots)}")
        slots = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(offset, offset + crops - 1)])
        tokens = tokens + self.crop_embedding(slots.to(tokens.device))[None, :, None, :]
        return tokens.reshape(batch, -1, tokens.shape[-1])

    def embedding_norm(self) -> float:
        """Mean L2 norm of the word embeddings: the scale at which extra tokens are injected."""
        return float(self.lm.model.embed_tokens.weight.detach().norm(dim=-1).mean())

    # -- persistence ------------------------------------------------------------------------

    def save(self, directory: str | Path, dtype: torch.dtype = torch.float16) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to(dtype).contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE))
        (directory / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2))
        self.tokenizer.tokenizer.save(str(directory / TOKENIZER_FILE))

    @classmethod
    def load(cls, directory: str | Path | None = None) -> EmbeddedVLM:
        """Load from a directory (the shipped weights by default), offline, in eval mode."""
        directory = Path(directory) if directory is not None else shipped_model_dir()
        missing = [f for f in (WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE) if not (directory / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{directory} is not an embedded model directory (missing {missing}); "
                "run `adactrl pretrain-embedded --output_dir DIR` to make one"
            )
        config = EmbeddedConfig.from_dict(json.loads((directory / CONFIG_FILE).read_text()))
        tokenizer = WordTokenizer.from_file(str(directory / TOKENIZER_FILE))
        importance = None
        if (directory / IMPORTANCE_FILE).is_file():
            importance = load_importance_scores(directory / IMPORTANCE_FILE, config.num_layers)
        model = cls(config, tokenizer, importance)
        state = {k: v.float() for k, v in load_file(str(directory / WEIGHTS_FILE)).items()}
        model.load_state_dict(state)
        model.eval().requires_grad_(False)
        return model


def shipped_model_dir() -> Path:
    return Path(str(resources.files("adactrl.models") / "assets"))


def _slot_offsets(crop: CropConfig) -> list[tuple[int, int]]:
    offsets, next_slot = [], 1
    for _, grid in crop.tier_grids:
        offsets.append((grid, next_slot))
        next_slot += grid * grid
    return offsets


def _depth_prior(num_layers: int) -> tuple[float, ...]:
    """Before scores are measured: earlier blocks count as more important."""
    return tuple(float(num_layers - i) for i in range(num_layers))
