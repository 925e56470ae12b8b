"""One adaptive inference on the tiny model: the knobs change the compute that runs, the split at
the insertion point changes nothing, and the latency breakdown adds up. The shared-stage path
(`execute_group`) gives each plan exactly what its own run gives, running shared work once."""

from __future__ import annotations

import statistics
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import torch

from adactrl.executor import STAGES, Stage1Choice, Stage2Choice, StaticPolicy, execute, execute_group
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
    # prefill: 9 image tokens (low tier) + the prompt, then the budget token in a pass of its own
    # from the prefix's cache (so the prefix's pass is the same for every budget)
    assert inputs[0].shape == (1, 9 + result.num_prompt_tokens, model.hidden_size)
    assert inputs[1].shape == (1, 1, model.hidden_size) and torch.equal(inputs[1][0, 0], token)
    # decode: 3 steps (4 tokens, the first from prefill), each feeding one token and no budget token
    assert [x.shape[1] for x in inputs[2:]] == [1, 1, 1]
    for x, fed in zip(inputs[2:], result.token_ids):
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


GROUP_PLANS = (
    ("low", 1, 4, 8),
    ("low", 3, 2, 6),
    ("low", 1, 4, 8),  # the first plan again: its whole run is shared
    ("medium", 3, 2, 6),
    ("medium", 5, 3, 7),
    ("low", 5, 4, 8),
)


def assert_group_equals_per_plan(model, image, prompt, policies, overhead_ms=0.25):
    """`execute_group` and one `execute` per policy give the same plans, tokens and features, and
    each group plan's total is its stages plus the overhead. Returns the group's results."""
    group = execute_group(model, image, prompt, policies, overhead_ms=overhead_ms, max_new_tokens=MAX_NEW_TOKENS)
    alone = [execute(model, image, prompt, p, max_new_tokens=MAX_NEW_TOKENS) for p in policies]
    assert len(group) == len(policies)
    for shared, own in zip(group, alone):
        assert shared.plan == own.plan
        assert shared.token_ids == own.token_ids and shared.answer == own.answer
        assert torch.equal(shared.latency_token, own.latency_token)
        assert torch.equal(shared.language_feature, own.language_feature)
        assert (shared.num_image_tokens, shared.num_prompt_tokens) == (own.num_image_tokens, own.num_prompt_tokens)
        assert set(shared.latency_ms) == {*STAGES, "total"}
        assert shared.total_ms == pytest.approx(sum(shared.latency_ms[s] for s in STAGES) + overhead_ms)
        assert shared.overhead_ms == pytest.approx(overhead_ms)
        assert not shared.latency_token.is_inference()
    return group


@pytest.mark.parametrize("with_budget_token", [False, True], ids=["plain", "budget_token"])
def test_group_gives_each_plan_what_its_own_run_gives(tiny_model, synthetic_rows, with_budget_token):
    model, row = tiny_model, synthetic_rows[3]
    tokens = [torch.full((model.hidden_size,), v) for v in (0.5, -0.5)]  # two budgets
    policies = [
        BudgetTokenPolicy(model.knob_space.plan(*knobs, model.importance), tokens[i % 2]) if with_budget_token
        else StaticPolicy(model.knob_space.plan(*knobs, model.importance))
        for i, knobs in enumerate(GROUP_PLANS)
    ]  # fmt: skip
    assert_group_equals_per_plan(model, row["image"], row["question"], policies)


def test_group_runs_shared_work_once_and_counts_it_in_every_plan(tiny_model, synthetic_rows):
    model, row = tiny_model, synthetic_rows[0]
    policies = [StaticPolicy(model.knob_space.plan(*knobs, model.importance)) for knobs in GROUP_PLANS]
    crops = []
    handle = model.vision.register_forward_pre_hook(
        lambda m, args, kwargs: crops.append(kwargs["pixel_values"].shape[0]), with_kwargs=True
    )
    try:
        with record_blocks(model) as calls:
            group = assert_group_equals_per_plan(model, row["image"], row["question"], policies)
    finally:
        handle.remove()
    # the per-plan runs (after the group) run the vision tower once per plan; the group once per tier
    assert crops[:2] == [1, 5] and len(crops) == 2 + len(policies)
    low, medium = 9 + group[0].num_prompt_tokens, 45 + group[0].num_prompt_tokens
    group_calls = calls[: len(calls) - sum(len(p.plan.blocks) * MAX_NEW_TOKENS for p in policies)]
    # low tier: head [0, 1), [1, 3), [3, 5) once; tails of plans 0, 1 and 5 (plan 2 repeats plan 0)
    low_prefill = [b for b, t, _ in group_calls if t == low]
    tails = [p.plan.blocks[p.plan.insertion :] for p in policies]
    assert low_prefill == [0, 1, 2, 3, 4, *tails[0], *tails[1], *tails[5]]
    assert len([c for c in group_calls if c[1] == medium]) == 5 + len(tails[3]) + len(tails[4])

    ms = [r.latency_ms for r in group]
    # shared stages: one measurement in every plan that used it
    assert ms[0]["vision"] == ms[1]["vision"] == ms[5]["vision"] != ms[3]["vision"]
    # the head before insertion 3 is the one before insertion 1 plus blocks 1 and 2
    assert ms[1]["prefill_pre"] > ms[0]["prefill_pre"]
    # a repeated plan shares its whole run; its controller time stays its own
    assert all(ms[2][s] == ms[0][s] for s in ("vision", "projector", "prefill_pre", "prefill_post", "decode"))
