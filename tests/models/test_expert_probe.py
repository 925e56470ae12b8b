import copy

import pytest
import torch

from adactrl.data import load_vqa_dataset
from adactrl.models.expert_probe import (
    Routing, default_routings, expert_agreement, expert_outputs, expert_probe, route, routed,
)  # fmt: skip
from adactrl.models.importance import answer_nll, depth_curve, prefix_and_target


@pytest.fixture(scope="module")
def rows():
    return load_vqa_dataset("synthetic", "validation", 6, seed=0)


def _nll(model, rows) -> float:
    every_block = tuple(range(model.knob_space.num_layers))
    return sum(answer_nll(model, *prefix_and_target(model, row), every_block)[0] for row in rows)


def test_route_keeps_rescales_or_draws_experts():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])  # one token, four experts; default top-2 mass 0.8
    generator = torch.Generator().manual_seed(0)
    weights, indices = route(probs, Routing("top", 1), 2, generator)
    assert weights.tolist() == [[0.5]] and indices.tolist() == [[0]]
    weights, indices = route(probs, Routing("rescaled", 1), 2, generator)
    assert weights.tolist() == [[pytest.approx(0.8)]] and indices.tolist() == [[0]]  # 0.5 * 0.8 / 0.5
    drawn = [route(probs, Routing("random", 2), 2, generator) for _ in range(20)]
    assert all(len(set(i[0].tolist())) == 2 for _, i in drawn)  # two distinct experts per token
    assert all(w.sum().item() == pytest.approx(0.8) for w, _ in drawn)  # scaled to the default mass
    assert len({tuple(sorted(i[0].tolist())) for _, i in drawn}) > 1  # not always the same pair


def test_default_routing_is_the_model_itself_and_is_restored(tiny_model, rows):
    plain = _nll(tiny_model, rows)
    with routed(tiny_model, Routing("top", tiny_model.knob_space.default_top_k)):
        assert _nll(tiny_model, rows) == pytest.approx(plain, rel=1e-6)
    with routed(tiny_model, Routing("scaled", 4, 2.0)):
        assert _nll(tiny_model, rows) != pytest.approx(plain, rel=1e-3)
    assert _nll(tiny_model, rows) == pytest.approx(plain, rel=1e-6)  # router and hooks put back
    assert all("forward" not in vars(block.mlp.gate) and not block.mlp._forward_hooks for block in tiny_model.blocks)


def test_output_scaled_to_zero_is_the_model_without_experts_after_block_0(tiny_model, rows):
    without = copy.deepcopy(tiny_model)
    for block in without.blocks[1:]:
        torch.nn.init.zeros_(block.mlp.experts.down_proj)
    with routed(tiny_model, Routing("scaled", 4, 0.0)):
        assert _nll(tiny_model, rows) == pytest.approx(_nll(without, rows), rel=1e-5)


def test_random_routing_runs_k_other_experts_and_repeats_by_seed(tiny_model, rows):
    chosen = []
    hook = tiny_model.blocks[1].mlp.gate.register_forward_hook(lambda _m, _i, out: chosen.append(out[2]))
    try:
        with routed(tiny_model, Routing("random", 2), seed=3):
            first = _nll(tiny_model, rows)
        with routed(tiny_model, Routing("top", 2)):
            _nll(tiny_model, rows)
        with routed(tiny_model, Routing("random", 2), seed=3):
            assert _nll(tiny_model, rows) == first
    finally:
        hook.remove()
    random, top = torch.cat(chosen[: len(rows)]), torch.cat(chosen[len(rows) : 2 * len(rows)])  # [T, 2]
    assert random.shape == top.shape and all(len(set(t.tolist())) == 2 for t in random)
    assert (random.sort(-1).values != top.sort(-1).values).any(-1).float().mean() > 0.5


def test_probe_lists_every_routing_and_agrees_with_the_depth_curve(tiny_model, rows):
    points = expert_probe(tiny_model, rows)
    assert [p.routing for p in points] == [
        "top-4", "top-2", "top-1", "top-2 rescaled", "top-1 rescaled", "random 4", "random 2",
        "top-4 output x0", "top-4 output x0.25", "top-4 output x0.5", "top-4 output x2",
    ]  # fmt: skip
    full = depth_curve(tiny_model, rows, tiny_model.importance)[7]  # every block, default top-k
    assert points[0].nll == pytest.approx(full.nll, rel=1e-6) and points[0].accuracy == full.accuracy
    assert sorted(points[0].family_accuracy) == sorted({row["family"] for row in rows})
    assert len({round(p.nll, 6) for p in points}) == len(points)  # every routing changes the computation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "sideways", "top_k": 2}, "unknown routing mode 'sideways'"),
        ({"mode": "top", "top_k": 0}, "top_k must be at least 1"),
        ({"mode": "top", "top_k": 2, "scale": 0.5}, "only mode 'scaled' takes one"),
        ({"mode": "scaled", "top_k": 2, "scale": -1.0}, "non-negative factor"),
    ],
)
def test_bad_routings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Routing(**kwargs)


def test_more_experts_than_the_model_has_or_no_questions_are_refused(tiny_model):
    with pytest.raises(ValueError, match="top_k 9 exceeds the 8 experts per block"):
        expert_probe(tiny_model, load_vqa_dataset("synthetic", "validation", 1, seed=0), [Routing("top", 9)])
    with pytest.raises(ValueError, match="at least one question"):
        expert_probe(tiny_model, [])
    assert len(default_routings(8)) == 11


def test_expert_outputs_weighted_by_the_router_are_the_blocks_own_output(tiny_model):
    moe = tiny_model.blocks[2].mlp
    hidden = torch.randn(5, tiny_model.hidden_size, generator=torch.Generator().manual_seed(0))
    outputs = expert_outputs(moe, hidden)  # [E, T, d]
    probs = torch.softmax(hidden @ moe.gate.weight.T, dim=-1)
    weights, indices = probs.topk(tiny_model.knob_space.default_top_k, dim=-1)
    by_hand = (weights[..., None] * outputs.transpose(0, 1)[torch.arange(5)[:, None], indices]).sum(1)
    with torch.no_grad():
        assert torch.allclose(by_hand, moe(hidden[None])[0], atol=1e-5)


def test_agreement_covers_the_knob_blocks_and_sees_copies_as_copies(tiny_model, rows):
    agreement = expert_agreement(tiny_model, rows.select(range(2)))
    assert [a.block for a in agreement] == list(range(1, tiny_model.knob_space.num_layers))
    for a in agreement:
        assert -1 <= a.pair_cosine < 0.99 and 0 < a.half_norm and 0 < a.update_share  # random experts differ
    copies = copy.deepcopy(tiny_model)
    for block in copies.blocks:
        experts = block.mlp.experts
        experts.gate_up_proj.copy_(experts.gate_up_proj[:1].expand_as(experts.gate_up_proj))
        experts.down_proj.copy_(experts.down_proj[:1].expand_as(experts.down_proj))
    for a in expert_agreement(copies, rows.select(range(2))):
        # Identical experts: every pair and every partial sum points the same way.
        assert a.pair_cosine == pytest.approx(1.0, abs=1e-4) and a.half_cosine == pytest.approx(1.0, abs=1e-4)
        assert a.top1_cosine == pytest.approx(1.0, abs=1e-4) and a.random_cosine == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="at least one question"):
        expert_agreement(tiny_model, [])
