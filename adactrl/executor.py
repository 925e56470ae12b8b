"""One adaptive inference (DESIGN §1): stage 1, vision at the chosen tier, prefill up to the
insertion point, stage 2 on the latency token, the rest of prefill, then greedy decode that
reuses the plan. Every stage is timed; the controller's own time is a stage of its own.

`execute` runs one plan end to end. `execute_group` runs several plans of one request (a GRPO
group, across budgets) and runs the work they share once (docs/shared-rollouts.md): the vision
tower and projector per tier, the blocks before each insertion point over the image-and-prompt
prefix per tier, the budget token's position per (tier, insertion, budget). Both paths call the
same model operations on the same tensors, so a plan gives the same tokens either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

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
    """Milliseconds per stage (STAGES) plus 'total': measured end to end around all of them by
    `execute`; by `execute_group` the sum of the stages plus the request overhead it was given."""
    num_image_tokens: int
    num_prompt_tokens: int
    language_feature: torch.Tensor
    """[d_model] pooled prompt embeddings, as stage 1 saw them."""
    latency_token: torch.Tensor
    """[d_model] the last position's hidden state after the insertion block."""

    @property
    def total_ms(self) -> float:
        return self.latency_ms["total"]

    @property
    def overhead_ms(self) -> float:
        """'total' less the stages: the bookkeeping between them (layout, cache, plan)."""
        return self.latency_ms["total"] - sum(self.latency_ms[s] for s in STAGES)


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
        prefix = model.prefill_layout(image_tokens, words)  # [1, L, d]
        check_context(model, prefix, first.budget_token, max_new_tokens)
        cache = model.new_cache()
        with timer.stage("prefill_pre"):
            hidden = model.run_blocks(prefix, range(first.insertion), space.default_top_k, cache, 0)
            if first.budget_token is not None:
                hidden = run_budget_token(model, hidden, first, cache)
            latency_token = hidden[0, -1]  # [d]
        plan = _stage2(model, policy, first, hidden, timer)
        generated = _run_tail(model, plan, hidden, cache, timer, max_new_tokens, device)
    latency = timer.finish()
    latency = {name: latency.get(name, 0.0) for name in STAGES}
    latency["total"] = overall.finish()["total"]
    return _result(model, plan, generated, latency, image_tokens, prompt_ids, language_feature, latency_token)


def check_context(model: MoEVLM, prefix: torch.Tensor, budget_token: torch.Tensor | None, max_new_tokens: int) -> None:
    length = prefix.shape[1] + (budget_token is not None)
    if length + max_new_tokens > model.max_context:
        raise ValueError(
            f"{length} prefill tokens + {max_new_tokens} new tokens exceed the "
            f"model's context of {model.max_context}; shorten the prompt or use a lower tier"
        )


def run_budget_token(model: MoEVLM, hidden: torch.Tensor, first: Stage1Choice, cache: Any) -> torch.Tensor:
    """The budget token's position (last in prefill, after the prompt) through the blocks before
    the insertion point, from the prefix's cache: hidden [1, L, d] -> [1, L + 1, d]. Its own pass,
    so that the prefix's pass is the same for every budget and can be shared."""
    assert first.budget_token is not None
    token = first.budget_token.reshape(1, 1, -1).to(hidden.dtype)  # [1, 1, d]
    step = model.run_blocks(token, range(first.insertion), model.knob_space.default_top_k, cache, hidden.shape[1])
    return torch.cat([hidden, step], dim=1)


def _stage2(model: MoEVLM, policy: PlanPolicy, first: Stage1Choice, hidden: torch.Tensor, timer: StageTimer) -> Plan:
    """Stage 2 on the latency token (the last position of `hidden`), timed as controller time."""
    with timer.stage("controller"):
        second = policy.stage2(hidden[0, -1], first.insertion)
    return model.knob_space.plan(first.tier, first.insertion, second.top_k, second.num_blocks, model.importance)


def _run_tail(
    model: MoEVLM, plan: Plan, hidden: torch.Tensor, cache: Any, timer: StageTimer, max_new_tokens: int,
    device: torch.device | str,
) -> list[int]:
    """The blocks after the insertion point over the whole prefill [1, L, d] (its head already in
    `cache`), then greedy decode that reuses the plan; timed into `timer`."""
    default_top_k = model.knob_space.default_top_k
    head, tail = plan.blocks[: plan.insertion], plan.blocks[plan.insertion :]
    with timer.stage("prefill_post"):
        hidden = model.run_blocks(hidden, tail, plan.top_k, cache, 0)
        token = int(model.lm_logits(hidden[:, -1:]).argmax(dim=-1))
    generated = [token]
    with timer.stage("decode"):
        position = hidden.shape[1]
        while token != model.eos_token_id and len(generated) < max_new_tokens:
            step = model.embed_tokens(torch.tensor([[token]], device=device))  # [1, 1, d]
            step = model.run_blocks(step, head, default_top_k, cache, position)
            step = model.run_blocks(step, tail, plan.top_k, cache, position)
            token = int(model.lm_logits(step).argmax(dim=-1))
            generated.append(token)
            position += 1
    return generated


def _result(
    model: MoEVLM,
    plan: Plan,
    generated: list[int],
    latency: dict[str, float],
    image_tokens: torch.Tensor,
    prompt_ids: torch.Tensor,
    language_feature: torch.Tensor,
    latency_token: torch.Tensor,
) -> InferenceResult:
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


@dataclass
class _Prefill:
    """A prefill's state before stage 2, shared by the plans that reach it."""

    hidden: torch.Tensor
    """[1, L, d] after the blocks before the insertion point (L + 1 with a budget token)."""
    cache: Any
    stages: tuple[str, ...]
    """Names of the shared timings whose sum is this prefill's `prefill_pre`."""


@dataclass
class _Run:
    """One plan's run after stage 2: what every identical plan on the same prefill reuses."""

    prefill: _Prefill
    generated: list[int]
    timer: StageTimer
    """prefill_post and decode of this run, counted in full in each plan that shares it."""


@torch.inference_mode()
def execute_group(
    model: MoEVLM,
    image: Image.Image,
    prompt: str,
    policies: Sequence[PlanPolicy],
    *,
    overhead_ms: float,
    max_new_tokens: int = 4,
    device: torch.device | str = "cpu",
) -> list[InferenceResult]:
    """One plan per policy on one request, the work they share run once, at batch size 1.

    Shared: the prompt's embeddings and pooling; per tier the vision tower and projector; per
    tier the blocks before each insertion point over the image-and-prompt prefix; per (tier,
    insertion, budget token) the budget token's position; and the whole rest of a run for plans
    that are identical (same knobs on the same prefill give the same tokens). Each shared stage
    is timed once and counted in full in every plan that uses it; stage 1 and stage 2 are timed
    per plan. A plan's 'total' is the sum of its stages plus `overhead_ms`, the bookkeeping that
    `execute` measures between its stages (`InferenceResult.overhead_ms`). KV-cache copies happen
    outside every timed region.
    """
    prompt_ids = model.tokenize(prompt).to(device)
    shared = StageTimer(device)
    with shared.stage("embed"):
        words = model.embed_tokens(prompt_ids)  # [T, d]
    with shared.stage("pool"):
        language_feature = words.mean(dim=0)  # [d]
    timers = [StageTimer(device) for _ in policies]
    firsts = []
    for policy, timer in zip(policies, timers):
        with timer.stage("controller"):
            firsts.append(policy.stage1(language_feature))
    plans: list[tuple[Plan, _Run]] = [None] * len(policies)  # type: ignore[list-item]
    image_tokens: dict[str, torch.Tensor] = {}
    for tier in dict.fromkeys(f.tier for f in firsts):
        members = [i for i, f in enumerate(firsts) if f.tier == tier]
        with shared.stage(f"vision/{tier}"):
            features = model.encode_vision(model.preprocess(image, tier).to(device))
        with shared.stage(f"projector/{tier}"):
            image_tokens[tier] = model.project(features)  # [N, d]
        prefix = model.prefill_layout(image_tokens[tier], words)  # [1, L, d]
        for i in members:
            check_context(model, prefix, firsts[i].budget_token, max_new_tokens)
        prefills = _shared_heads(model, prefix, {firsts[i].insertion for i in members}, shared, tier)
        runs: dict[tuple[Plan, int], _Run] = {}
        for i in members:
            key = _prefill_key(firsts[i])
            if key not in prefills:
                head = prefills[firsts[i].insertion]
                name = f"budget/{tier}/{len(prefills)}"
                cache = model.copy_cache(head.cache)
                with shared.stage(name):
                    hidden = run_budget_token(model, head.hidden, firsts[i], cache)
                prefills[key] = _Prefill(hidden, cache, (*head.stages, name))
            prefill = prefills[key]
            plan = _stage2(model, policies[i], firsts[i], prefill.hidden, timers[i])
            if (plan, id(prefill)) not in runs:
                timer = StageTimer(device)
                generated = _run_tail(model, plan, prefill.hidden, model.copy_cache(prefill.cache), timer,
                                      max_new_tokens, device)  # fmt: skip
                runs[plan, id(prefill)] = _Run(prefill, generated, timer)
            plans[i] = (plan, runs[plan, id(prefill)])
    shared_ms = shared.finish()
    run_ms = {id(run): run.timer.finish() for _, run in plans}
    results = []
    for (plan, run), timer in zip(plans, timers):
        latency = _compose(plan, run, timer.finish(), run_ms[id(run)], shared_ms, overhead_ms)
        results.append(_result(model, plan, run.generated, latency, image_tokens[plan.tier], prompt_ids,
                               language_feature, run.prefill.hidden[0, -1]))  # fmt: skip
    return results


def _compose(
    plan: Plan, run: _Run, own: dict[str, float], tail: dict[str, float], shared: dict[str, float], overhead_ms: float
) -> dict[str, float]:
    """A plan's stage times from the measurements it used (each counted in full) and its total."""
    latency = {
        "controller": shared["pool"] + own["controller"],
        "vision": shared[f"vision/{plan.tier}"],
        "projector": shared[f"projector/{plan.tier}"],
        "prefill_pre": shared["embed"] + sum(shared[name] for name in run.prefill.stages),
        "prefill_post": tail["prefill_post"],
        "decode": tail["decode"],
    }
    latency["total"] = sum(latency.values()) + overhead_ms
    return latency


def _prefill_key(first: Stage1Choice) -> int | tuple[int, bytes]:
    """Which shared prefill a plan continues from: its insertion point, with its budget token."""
    if first.budget_token is None:
        return first.insertion
    return first.insertion, first.budget_token.cpu().numpy().tobytes()


def _shared_heads(
    model: MoEVLM, prefix: torch.Tensor, insertions: set[int], timer: StageTimer, tier: str
) -> dict[int, _Prefill]:
    """The blocks before each insertion point over `prefix`, run once in segments: blocks
    [0, i1), then [i1, i2), ..., the cache copied at each insertion point (outside the timing),
    so insertion i's prefill time is the sum of the segments before it."""
    cache = model.new_cache()
    hidden, start, stages = prefix, 0, ()
    heads = {}
    ordered = sorted(insertions)
    for insertion in ordered:
        name = f"head/{tier}/{start}-{insertion}"
        with timer.stage(name):
            hidden = model.run_blocks(hidden, range(start, insertion), model.knob_space.default_top_k, cache, 0)
        stages = (*stages, name)
        last = insertion == ordered[-1]
        heads[insertion] = _Prefill(hidden, cache if last else model.copy_cache(cache), stages)
        start = insertion
    return heads
