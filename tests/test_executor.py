"""One adaptive inference on the tiny model: the knobs change the compute that runs, the split at
the insertion point changes nothing, and the latency breakdown adds up."""

from __future__ import annotations

import statistics
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import torch

from adactrl.executor import STAGES, Stage1Choice, Stage2Choice, StaticPolicy, execute
from adactrl.knobs import Plan

MAX_NEW_TOKENS = 4


@dataclass(frozen=True)
class BudgetTokenPolicy:
    """A static plan that also appends a budget token, as the controller does."""

    plan: Plan
    token: torch.Tensor

    def stage1(self, language_feature: torch.Tensor) -> Stage1Choice:
        return Stage1Choice(self.plan.tier, self.plan.insertion, self.token)

    def stage2(self, latency_token: torch.Tensor, insertion: int) -> Stage2Choice:
        return Stage2Choice(self.plan.top_k, self.plan.num_blocks)


@contextmanager
def record_blocks(model):
    """Yield a list that fills with (block, positions, experts per token) for every block run.

    Two hooks per block: the block's own input gives the positions it ran on, its router's output
    (OlmoeTopKRouter -> logits, scores, indices [T, k]) the experts each position was sent to.
    """
    calls: list[tuple[int, int, int]] = []
    pending: list[tuple[int, int]] = []
    handles = []

    def on_block(index):
        def hook(module, args, kwargs):
            pending.append((index, args[0].shape[1]))  # hidden [1, T, d]

        return hook

    def on_router(index):
        def hook(module, args, output):
            _, _, indices = output  # [T, k]
            block, positions = pending.pop()
            assert block == index and indices.shape[0] == positions
            distinct = indices.sort(dim=-1).values.diff(dim=-1)
            assert bool((distinct != 0).all()), "a token was routed to one expert twice"
            calls.append((index, positions, indices.shape[1]))

        return hook

    for index, block in enumerate(model.blocks):
        handles.append(block.register_forward_pre_hook(on_block(index), with_kwargs=True))
        handles.append(block.mlp.gate.register_forward_hook(on_router(index)))
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def record_lm_head(model):
    """Yield a list of every logits tensor the LM head produces ([1, T, vocab] each)."""
    outputs: list[torch.Tensor] = []
    handle = model.lm.lm_head.register_forward_hook(lambda m, a, out: outputs.append(out.detach().clone()))
    try:
        yield outputs
    finally:
        handle.remove()


def expected_top_k(model, plan: Plan, block: int) -> int:
    return model.knob_space.default_top_k if block < plan.insertion else plan.top_k


@pytest.mark.parametrize(
    "knobs",
    [
        ("medium", 1, 2, 6),  # block 0 at top-4, the rest at top-2
        ("high", 3, 3, 7),
        ("low", 5, 2, 6),  # five blocks at top-4 before stage 2
        ("low", 2, 4, 8),  # the full depth at the default top-k
    ],
)
def test_plan_sets_the_blocks_and_top_k_in_prefill_and_every_decode_step(tiny_model, synthetic_rows, knobs):
    model, row = tiny_model, synthetic_rows[0]
    plan = model.knob_space.plan(*knobs, model.importance)
    with record_blocks(model) as calls:
        result = execute(model, row["image"], row["question"], StaticPolicy(plan), max_new_tokens=MAX_NEW_TOKENS)
    assert result.plan == plan
    assert len(result.token_ids) == MAX_NEW_TOKENS  # the tiny model never emits EOS

    prefill_length = result.num_image_tokens + result.num_prompt_tokens
    prefill = [c for c in calls if c[1] == prefill_length]
    decode = [c for c in calls if c[1] == 1]
    assert len(prefill) + len(decode) == len(calls)
    expected = [(b, expected_top_k(model, plan, b)) for b in plan.blocks]
    assert [(b, k) for b, _, k in prefill] == expected
    # one pass per fed-back token, each through the same blocks at the same top-k as prefill
    steps = len(result.token_ids) - 1
    assert len(decode) == steps * len(plan.blocks)
    for step in range(steps):
        chunk = decode[step * len(plan.blocks) : (step + 1) * len(plan.blocks)]
        assert [(b, k) for b, _, k in chunk] == expected
    # block 0 always runs, always at the model's default top-k
    assert all(k == model.knob_space.default_top_k for b, _, k in calls if b == 0)


def test_the_blocks_a_plan_skips_follow_importance(tiny_model):
    # importance (8, 1, 5, 2, 7, 3, 6, 4), insertion 1, 6 blocks: keep 0, then 4 (7), 6 (6), 2 (5),
    # 7 (4), 5 (3); blocks 1 and 3 score lowest and are skipped
    assert tiny_model.knob_space.plan("low", 1, 2, 6, tiny_model.importance).blocks == (0, 2, 4, 5, 6, 7)


def test_fewer_experts_change_the_output(tiny_model, synthetic_rows):
    model, row = tiny_model, synthetic_rows[0]
    logits = {}
    for top_k in (2, 4):
        plan = model.knob_space.plan("low", 1, top_k, 8, model.importance)
        with record_lm_head(model) as outputs:
            execute(model, row["image"], row["question"], StaticPolicy(plan), max_new_tokens=1)
        logits[top_k] = outputs[0]
    assert not torch.allclose(logits[2], logits[4], atol=1e-3)


@pytest.mark.parametrize(("tier", "crops", "tokens"), [("low", 1, 9), ("medium", 5, 45), ("high", 10, 90)])
def test_tier_sets_the_crops_and_image_tokens(tiny_model, synthetic_rows, tier, crops, tokens):
    # 24 px crops of 4 px patches: 6x6 patches, 2x2 groups -> 9 image tokens per crop
    model, row = tiny_model, synthetic_rows[0]
    batches = []
    handle = model.vision.register_forward_pre_hook(
        lambda m, args, kwargs: batches.append(kwargs["pixel_values"].shape), with_kwargs=True
    )
    try:
        plan = model.knob_space.plan(tier, 1, 4, 8, model.importance)
        with record_blocks(model) as calls:
            result = execute(model, row["image"], row["question"], StaticPolicy(plan), max_new_tokens=1)
    finally:
        handle.remove()
    assert batches == [(crops, 3, 24, 24)]
    assert result.num_image_tokens == tokens
    assert calls[0][1] == tokens + result.num_prompt_tokens


def single_pass_logits(model, image, prompt: str, plan: Plan, generated, budget_token=None):
    """The reference: prefix + fed-back tokens in ONE causal pass, no cache, no split.

    Returns (logits at the prefix's last position and every fed-back token [G, vocab],
    the last prefix position's hidden state after the insertion block [d]).
    """
    image_tokens = model.project(model.encode_vision(model.preprocess(image, plan.tier)))  # [N, d]
    parts = [image_tokens, model.embed_tokens(model.tokenize(prompt))]
    if budget_token is not None:
        parts.append(budget_token[None])
    prefix_length = sum(p.shape[0] for p in parts)
    fed = model.embed_tokens(torch.tensor(generated[:-1], dtype=torch.long))  # [G-1, d]
    hidden = torch.cat([*parts, fed])[None]  # [1, L+G-1, d]
    length = hidden.shape[1]
    positions = torch.arange(length)[None]
    rotary = model.lm.model.rotary_emb(hidden, positions)
    # An explicit mask, so the reference does not lean on SDPA's implied causality as execute does.
    causal = torch.full((length, length), float("-inf")).triu(1)[None, None]  # [1, 1, T, T]
    latency_token = None
    for index in plan.blocks:
        block = model.blocks[index]
        block.mlp.gate.top_k = expected_top_k(model, plan, index)
        hidden = block(hidden, attention_mask=causal, position_ids=positions, position_embeddings=rotary)
        if index == plan.insertion - 1:
            latency_token = hidden[0, prefix_length - 1]
    return model.lm_logits(hidden)[0, prefix_length - 1 :], latency_token


@pytest.mark.parametrize("with_budget_token", [False, True], ids=["plain", "budget_token"])
@pytest.mark.parametrize("insertion", [1, 3, 5])
def test_two_stage_path_equals_a_single_pass(tiny_model, synthetic_rows, insertion, with_budget_token):
    """Issue 3: splitting at the insertion point and decoding from the KV cache change nothing."""
    model, row = tiny_model, synthetic_rows[2]
    plan = model.knob_space.plan("medium", insertion, 2, 6, model.importance)
    generator = torch.Generator().manual_seed(insertion)
    token = torch.randn(model.hidden_size, generator=generator) if with_budget_token else None
    policy = BudgetTokenPolicy(plan, token) if with_budget_token else StaticPolicy(plan)
    with record_lm_head(model) as outputs:
        result = execute(model, row["image"], row["question"], policy, max_new_tokens=MAX_NEW_TOKENS)
    executed = torch.cat(outputs, dim=1)[0]  # [G, vocab]: prefill's last position, then each step
    assert executed.shape[0] == len(result.token_ids) == MAX_NEW_TOKENS

    with torch.no_grad():
        reference, latency_token = single_pass_logits(
            model, row["image"], row["question"], plan, result.token_ids, token
        )
    assert tuple(reference.argmax(dim=-1).tolist()) == result.token_ids
    torch.testing.assert_close(executed, reference, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(result.latency_token, latency_token, atol=1e-5, rtol=1e-5)


def test_budget_token_enters_prefill_only(tiny_model, synthetic_rows):
    model, row = tiny_model, synthetic_rows[1]
    plan = model.knob_space.plan("low", 2, 3, 7, model.importance)
    token = torch.full((model.hidden_size,), 0.5)
    inputs = []
    handle = model.blocks[0].register_forward_pre_hook(
        lambda m, args, kwargs: inputs.append(args[0].detach().clone()), with_kwargs=True
    )
    try:
        result = execute(model, row["image"], row["question"], BudgetTokenPolicy(plan, token), max_new_tokens=4)
    finally:
        handle.remove()
    # prefill: 9 image tokens (low tier) + the prompt + 1 budget token, the budget token last
    assert inputs[0].shape == (1, 9 + result.num_prompt_tokens + 1, model.hidden_size)
    assert torch.equal(inputs[0][0, -1], token)
    # decode: 3 steps (4 tokens, the first from prefill), each feeding one token and no budget token
    assert [x.shape[1] for x in inputs[1:]] == [1, 1, 1]
    for x, fed in zip(inputs[1:], result.token_ids):
        assert torch.equal(x[0, 0], model.embed_tokens(torch.tensor(fed)))


def test_language_feature_is_the_mean_prompt_embedding(tiny_model, synthetic_rows):
    model, row = tiny_model, synthetic_rows[0]
    result = execute(model, row["image"], row["question"], StaticPolicy(model.knob_space.full_plan(model.importance)))
    expected = model.embed_tokens(model.tokenize(row["question"])).mean(dim=0)
    torch.testing.assert_close(result.language_feature, expected)
    # plain tensors, not inference tensors: the learner re-scores them with gradients
    assert not result.language_feature.is_inference() and not result.latency_token.is_inference()


def test_context_overflow_is_refused(tiny_model, synthetic_rows):
    model, row = tiny_model, synthetic_rows[0]
    plan = model.knob_space.full_plan(model.importance)
    with pytest.raises(ValueError, match="exceed the model's context of 256"):
        execute(model, row["image"], row["question"], StaticPolicy(plan), max_new_tokens=200)


def test_latency_has_every_stage_and_adds_up(shipped_model, synthetic_rows):
    model, row = shipped_model, synthetic_rows[3]
    plan = model.knob_space.plan("medium", 3, 6, 14, model.importance)
    execute(model, row["image"], row["question"], StaticPolicy(plan))  # warm-up
    ratios = []
    for _ in range(5):
        latency = execute(model, row["image"], row["question"], StaticPolicy(plan)).latency_ms
        assert set(latency) == {*STAGES, "total"}
        assert all(latency[s] > 0 for s in STAGES)
        parts = sum(latency[s] for s in STAGES)
        # Every stage runs inside the 'total' window, so the parts can never exceed it.
        assert parts <= latency["total"] * 1.0001
        ratios.append(parts / latency["total"])
    # Outside the stages only bookkeeping runs (a concat, the plan, the cache); the median over
    # runs keeps one scheduler hiccup on the shared machine from deciding the result.
    assert statistics.median(ratios) >= 0.90
