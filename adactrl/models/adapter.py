"""The small interface every frozen MoE VLM implements (the embedded model and MolmoE-1B).

Adapters only run the frozen model: no training, no logging, no timing. The executor composes
these calls into one adaptive inference and measures each stage around them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from PIL import Image

from adactrl.knobs import KnobSpace


class ImageInput(Protocol):
    """What `preprocess` returns: a tensor, or a record of tensors that moves as one."""

    def to(self, device: torch.device | str) -> ImageInput: ...


@runtime_checkable
class MoEVLM(Protocol):
    knob_space: KnobSpace
    """The knob values this model allows."""
    hidden_size: int
    """Width of the language model's hidden state (d_model)."""
    importance: tuple[float, ...]
    """One score per block; higher means the block matters more (block 0 is always kept)."""
    eos_token_id: int
    max_context: int
    """The longest prefill + decode sequence the model accepts."""

    def tokenize(self, prompt: str) -> torch.Tensor:
        """Prompt text -> token ids [T] (long). Raises ValueError on an empty prompt."""
        ...

    def detokenize(self, ids: Sequence[int]) -> str:
        """Generated ids -> answer text, stopping at end-of-sequence."""
        ...

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Frozen word embeddings: [T] -> [T, d_model]."""
        ...

    def tokenize_answer(self, answer: str) -> torch.Tensor:
        """A reference answer -> the ids the model would generate for it [A] (no end-of-sequence)."""
        ...

    def preprocess(self, image: Image.Image, tier: str) -> ImageInput:
        """An RGB image -> this tier's vision input: pixel crops [C, 3, H, W] (global crop first),
        possibly with the adapter's own bookkeeping (MolmoE: patch masks and token layout)."""
        ...

    def encode_vision(self, crops: Any) -> Any:
        """Vision tower on `preprocess`'s output -> patch features [C, P, d_vision] (or the
        adapter's record holding them). Only `project` reads the result."""
        ...

    def project(self, features: Any) -> torch.Tensor:
        """Pool and project patch features to the image's LLM tokens: [N, d_model]."""
        ...

    def prefill_layout(
        self, image_tokens: torch.Tensor, words: torch.Tensor, budget_token: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The prefill sequence [1, L, d_model] from the image tokens [N, d], the prompt's
        embeddings [T, d] and an optional budget token [d], which comes last (after the prompt).
        The adapter owns the order: the embedded model puts the image first; MolmoE puts BOS, then
        the image segment, then the prompt in its chat format."""
        ...

    def new_cache(self) -> Any:
        """An empty KV cache for one request."""
        ...

    def copy_cache(self, cache: Any) -> Any:
        """An independent copy of `cache`: the shared-stage path (`executor.execute_group`) runs a
        prefix once and gives each plan its own copy to continue from with `run_blocks`."""
        ...

    def run_blocks(
        self,
        hidden: torch.Tensor,
        blocks: Sequence[int],
        top_k: int,
        cache: Any,
        start: int,
    ) -> torch.Tensor:
        """Run the given blocks, in order, with MoE top-k set to `top_k`.

        hidden: [1, T, d_model] for positions start..start+T-1. Returns [1, T, d_model]. The
        positions attend to what `cache` holds for each block before `start`, so a prefix run once
        is continued by later calls (the budget token, decode, or other blocks at start 0).
        """
        ...

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head: [1, T, d_model] -> [1, T, vocab]."""
        ...

    def embedding_norm(self) -> float:
        """Mean L2 norm of the word embeddings: the scale at which the budget token enters."""
        ...
