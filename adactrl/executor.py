"""One adaptive inference (DESIGN §1): stage 1, vision at the chosen tier, prefill up to the
insertion point, stage 2 on the latency token, the rest of prefill, then greedy decode that
reuses the plan. Every stage is timed; the controller's own time is a stage of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from PIL import Image

from adactrl.knobs import Plan
from adactrl.models.adapter import MoEVLM
from adactrl.timing import StageTimer

STAGES = ("controller", "vision", "projector", "prefill_pre", "prefill_post", "decode")


@dataclass(frozen=True)
class Stage1Choice:
    tier: str
    insertion: int
    budget_token: torch.Tensor | None = None
    """[d_model] appended to the prefill sequence, or None for a plain static run."""


@dataclass(frozen=True)
class Stage2Choice:
    top_k: int
    num_blocks: int


class PlanPolicy(Protocol):
    """Chooses the knobs. The executor times both calls as controller time."""

    def stage1(self, language_feature: torch.Tensor) -> Stage1Choice: ...

    def stage2(self, latency_token: torch.Tensor, insertion: int) -> Stage2Choice: ...


@dataclass(frozen=True)
class StaticPolicy:
    """A fixed plan: what `adactrl profile` sweeps and what the Pareto oracle picks from."""

    plan: Plan

    def stage1(self, language_feature: torch.Tensor) -> Stage1Choice:
        return Stage1Choice(self.plan.tier, self.plan.insertion)

    def stage2(self, latency_token: torch.Tensor, insertion: int) -> Stage2Choice:
        return Stage2Choice(self.plan.top_k, self.plan.num_blocks)


@dataclass(frozen=True)
class InferenceResult:
    answer: str
    token_ids: tuple[int, ...]
    plan: Plan
    latency_ms: dict[str, float]
    """Milliseconds per stage (STAGES) plus 'total', measured end to end around all of them."""
    num_image_tokens: int
    num_prompt_tokens: int
    language_feature: torch.Tensor
    """[d_model] pooled prompt embeddings, as stage 1 saw them."""
    latency_token: torch.Tensor
    """[d_model] the last position's hidden state after the insertion block."""

    @property
    def total_ms(self) -> float:
        return self.latency_ms["total"]


@torch.inference_mode()
def execute(
    model: MoEVLM,
    image: Image.Image,
    prompt: str,
    policy: PlanPolicy,
    *,
    max_new_tokens: int = 4,
    device: torch.device | str = "cpu",
) -> InferenceResult:
    """Run one request at batch size 1 and measure it."""
    space = model.knob_space
    prompt_ids = model.tokenize(prompt).to(device)
    timer = StageTimer(device)
    overall = StageTimer(device)
    with overall.stage("total"):
        with timer.stage("prefill_pre"):
            # The prompt's embeddings are the LLM's own input; only pooling them is the controller's.
            words = model.embed_tokens(prompt_ids)  # [T, d]
        with timer.stage("controller"):
            language_feature = words.mean(dim=0)  # [d]
            first = policy.stage1(language_feature)
        with timer.stage("vision"):
            features = model.encode_vision(model.preprocess(image, first.tier).to(device))
        with timer.stage("projector"):
            image_tokens = model.project(features)  # [N, d]
        prefix = model.prefill_layout(image_tokens, words, first.budget_token)  # [1, L, d]
        if prefix.shape[1] + max_new_tokens > model.max_context:
            raise ValueError(
                f"{prefix.shape[1]} prefill tokens + {max_new_tokens} new tokens exceed the "
                f"model's context of {model.max_context}; shorten the prompt or use a lower tier"
            )
        cache = model.new_cache()
        head = tuple(range(first.insertion))
        with timer.stage("prefill_pre"):
            hidden = model.run_blocks(prefix, head, space.default_top_k, cache, 0)
            latency_token = hidden[0, -1]  # [d]
        with timer.stage("controller"):
            second = policy.stage2(latency_token, first.insertion)
        plan = space.plan(first.tier, first.insertion, second.top_k, second.num_blocks, model.importance)
        tail = plan.blocks[first.insertion :]
        with timer.stage("prefill_post"):
            hidden = model.run_blocks(hidden, tail, plan.top_k, cache, 0)
            token = int(model.lm_logits(hidden[:, -1:]).argmax(dim=-1))
        generated = [token]
        with timer.stage("decode"):
            position = prefix.shape[1]
            while token != model.eos_token_id and len(generated) < max_new_tokens:
                step = model.embed_tokens(torch.tensor([[token]], device=device))  # [1, 1, d]
                step = model.run_blocks(step, head, space.default_top_k, cache, position)
                step = model.run_blocks(step, tail, plan.top_k, cache, position)
                token = int(model.lm_logits(step).argmax(dim=-1))
                generated.append(token)
                position += 1
    latency = timer.finish()
    latency = {name: latency.get(name, 0.0) for name in STAGES}
    latency["total"] = overall.finish()["total"]
    # Copies made outside inference mode: the features are re-scored with gradients later, and
    # an inference tensor (even a clone taken inside the mode) cannot enter autograd.
    with torch.inference_mode(False):
        language_feature, latency_token = language_feature.clone(), latency_token.clone()
    return InferenceResult(
        answer=model.detokenize(generated),
        token_ids=tuple(generated),
        plan=plan,
        latency_ms=latency,
        num_image_tokens=int(image_tokens.shape[0]),
        num_prompt_tokens=int(prompt_ids.shape[0]),
        language_feature=language_feature,
        latency_token=latency_token,
    )

