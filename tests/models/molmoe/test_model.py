"""The native MolmoE behind the adapter: every knob changes the compute that runs, the split at
the insertion point and the KV cache change nothing, and `run_case` applies the knobs."""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from adactrl.executor import Stage1Choice, Stage2Choice, StaticPolicy, execute
from tests.test_executor import assert_group_equals_per_plan
from adactrl.models.molmoe import run_case

PROMPT = "what color is the circle?"


@contextmanager
def routed(model):
    """Yield a list of (block, tokens, experts per token, routing weight sum per token) per block run."""
    calls, handles = [], []
    for index, layer in enumerate(model.lm.layers):

        def hook(module, args, output, index=index):
            _, scores, indices = output  # scores, indices [T, k]
            calls.append((index, indices.shape[0], indices.shape[1], scores.sum(dim=-1)))

        handles.append(layer.mlp.gate.register_forward_hook(hook))
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def prefix_for(model, image, tier="low", budget=None):
    words = model.embed_tokens(model.tokenize(PROMPT))
    image_tokens = model.project(model.encode_vision(model.preprocess(image, tier)))
    return model.prefill_layout(image_tokens, words, budget), image_tokens.shape[0], words.shape[0]


@torch.no_grad()
def test_top_k_and_blocks_are_what_runs_and_weights_are_not_renormalised(molmoe, wide_image):
    prefix, _, _ = prefix_for(molmoe, wide_image)
    with routed(molmoe) as calls:
        molmoe.run_blocks(prefix, [0, 2, 3], 2, None, 0)
    assert [(b, t, k) for b, t, k, _ in calls] == [(b, prefix.shape[1], 2) for b in (0, 2, 3)]
    # softmax over 8 experts, 2 kept and not renormalised: each token's weights sum below 1
    assert all(bool((s < 1).all()) for *_, s in calls)


@torch.no_grad()
def test_prefill_layout_is_bos_image_prompt_budget(molmoe, wide_image):
    budget = torch.randn(molmoe.hidden_size)
    prefix, num_image, num_words = prefix_for(molmoe, wide_image, budget=budget)
    assert prefix.shape == (1, 1 + num_image + num_words + 1, molmoe.hidden_size)
    assert torch.equal(prefix[0, 0], molmoe.embed_tokens(torch.tensor(molmoe.tokenizer.bos_id)))
    assert torch.equal(prefix[0, -1], budget)
    start = molmoe.embed_tokens(torch.tensor(molmoe.tokenizer.image_ids.start))
    assert torch.equal(prefix[0, 1], start), "<im_start> carries no image feature"


def reference_logits(model, prefix, generated, plan):
    """prefix + fed-back tokens in one causal pass with an explicit mask, no cache, no split."""
    fed = model.embed_tokens(torch.tensor(generated[:-1], dtype=torch.long))
    hidden = torch.cat([prefix[0], fed])[None]
    length = hidden.shape[1]
    positions = torch.arange(length)[None]
    rotary = model.lm.rotary_emb(hidden, positions)
    causal = torch.full((length, length), float("-inf")).triu(1)[None, None]
    latency_token = None
    for index in plan.blocks:
        layer = model.lm.layers[index]
        layer.mlp.gate.top_k = plan.top_k if index >= plan.insertion else model.knob_space.default_top_k
        hidden = layer(hidden, attention_mask=causal, position_ids=positions, position_embeddings=rotary)
        if index == plan.insertion - 1:
            latency_token = hidden[0, prefix.shape[1] - 1]
    return model.lm_logits(hidden)[0, prefix.shape[1] - 1 :], latency_token


class Budgeted(StaticPolicy):
    def stage1(self, language_feature):
        return Stage1Choice(self.plan.tier, self.plan.insertion, torch.ones(language_feature.shape[0]))

    def stage2(self, latency_token, insertion):
        return Stage2Choice(self.plan.top_k, self.plan.num_blocks)


@pytest.mark.parametrize("insertion,top_k,num_blocks", [(1, 2, 3), (2, 3, 4), (3, 4, 3)])
def test_two_stage_kv_cached_run_equals_one_pass_recomputation(molmoe, wide_image, insertion, top_k, num_blocks):
    plan = molmoe.knob_space.plan("medium", insertion, top_k, num_blocks, molmoe.importance)
    with routed(molmoe) as calls:
        result = execute(molmoe, wide_image, PROMPT, Budgeted(plan), max_new_tokens=4)
    ran = sorted({b for b, *_ in calls})
    assert ran == sorted(plan.blocks) and len(ran) == num_blocks
    assert all(k == (top_k if b >= insertion else molmoe.knob_space.default_top_k) for b, _, k, _ in calls)
    with torch.no_grad():
        words = molmoe.embed_tokens(molmoe.tokenize(PROMPT))
        image_tokens = molmoe.project(molmoe.encode_vision(molmoe.preprocess(wide_image, "medium")))
        prefix = molmoe.prefill_layout(image_tokens, words, torch.ones(molmoe.hidden_size))
        logits, latency_token = reference_logits(molmoe, prefix, list(result.token_ids), plan)
    stop = len(result.token_ids)
    assert logits[:stop].argmax(dim=-1).tolist() == list(result.token_ids)
    assert torch.allclose(result.latency_token, latency_token, atol=1e-5)
    assert result.num_image_tokens == image_tokens.shape[0]


@pytest.mark.parametrize("policy", [StaticPolicy, Budgeted], ids=["plain", "budget_token"])
def test_shared_stage_group_equals_one_run_per_plan(molmoe, wide_image, policy):
    """execute_group through MolmoE's adapter: the same tokens and latency tokens as execute."""
    knobs = [("low", 1, 2, 3), ("low", 2, 2, 3), ("medium", 1, 3, 4), ("low", 1, 2, 3), ("medium", 3, 4, 3)]
    policies = [policy(molmoe.knob_space.plan(*k, molmoe.importance)) for k in knobs]
    group = assert_group_equals_per_plan(molmoe, wide_image, PROMPT, policies)
    assert group[0].latency_ms["vision"] == group[1].latency_ms["vision"] != group[2].latency_ms["vision"]


@pytest.mark.parametrize(
    "knobs",
    [
        {"top_k": None, "skip_blocks": [], "max_crops": None},
        {"top_k": 1, "skip_blocks": [], "max_crops": None},
        {"top_k": None, "skip_blocks": [1, 3], "max_crops": None},
        {"top_k": None, "skip_blocks": [], "max_crops": 3},
        {"top_k": 2, "skip_blocks": [2], "max_crops": 6},
    ],
    ids=["default", "top_k", "skip", "max_crops", "all"],
)
def test_run_case_applies_each_knob(molmoe_dir, image_file, knobs):
    out = run_case(molmoe_dir, image_file, PROMPT, knobs, max_new_tokens=5)
    default = run_case(molmoe_dir, image_file, PROMPT, {"top_k": None, "skip_blocks": [], "max_crops": None}, 5)
    assert out["last_logits"].dtype == np.float32 and out["last_logits"].shape == (320,)
    assert len(out["greedy_tokens"]) == 5
    changed = not np.array_equal(out["last_logits"], default["last_logits"])
    assert changed == (knobs != {"top_k": None, "skip_blocks": [], "max_crops": None})


def test_run_case_text_only_and_skipping_every_later_block(molmoe_dir):
    out = run_case(molmoe_dir, None, PROMPT, {"top_k": None, "skip_blocks": [1, 2, 3], "max_crops": None}, 3)
    assert len(out["greedy_tokens"]) == 3 and np.isfinite(out["last_logits"]).all()


@torch.no_grad()
def test_a_crop_with_a_pixel_at_exactly_minus_one_is_zeroed_as_released(molmoe, wide_image):
    image = molmoe.preprocess(wide_image, "low")
    pixels = image.pixels.clone()
    pixels[1, 0, 5, 5] = -1.0  # the batch-padding value, landed on by a real pixel
    features = molmoe.encode_vision(dataclasses.replace(image, pixels=pixels)).features  # [C, P, F]
    assert bool((features[1] == 0).all()) and bool((features[0] != 0).any()) and bool((features[2] != 0).any())
