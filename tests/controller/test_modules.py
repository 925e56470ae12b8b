import math

import pytest
import torch

from adactrl.controller import (
    BudgetEncoder,
    Controller,
    ControllerConfig,
    actions_to_knobs,
    count_parameters,
    knobs_to_actions,
)
from adactrl.controller.modules import budget_position
from adactrl.knobs import KnobSpace

D = 32
B = 6


@pytest.fixture
def knob_space() -> KnobSpace:
    return KnobSpace.from_model(num_layers=16, default_top_k=8)  # sizes (3, 5, 5, 5, 5)


@pytest.fixture
def controller(knob_space: KnobSpace) -> Controller:
    return Controller(ControllerConfig(d_model=D, seed=1), knob_space)


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lang = torch.randn(B, D, generator=g)  # [B, D]
    budget = torch.linspace(20.0, 500.0, B)  # [B]
    token = 5 * torch.randn(B, D, generator=g)  # [B, D]
    return lang, budget, token


@pytest.mark.parametrize(
    ("d_model", "stage1", "stage2"),
    # 2048 (MolmoE-1B): stage1 width 32, stage2 width 8; 128 (embedded model): widths 16 and 8.
    # Stage 2 reads the language feature too, so its d_model * width projection appears twice.
    [(2048, 82_632, 42_418), (128, 7_784, 4_018)],
)
def test_parameter_counts_scale_with_d_model(knob_space, d_model, stage1, stage2):
    c = Controller(ControllerConfig(d_model=d_model), knob_space)
    assert count_parameters(c.stage1) == stage1
    assert count_parameters(c.stage2) == stage2
    if d_model == 2048:
        assert 50_000 <= stage1 <= 100_000
        assert 20_000 <= stage2 <= 50_000


def test_budget_features_are_fixed_sinusoids_of_log_budget():
    enc = BudgetEncoder(d_model=D, hidden=16)
    f = enc.features(torch.tensor([1.0, 10.0, 100.0, 10_000.0]))  # [4, 256]
    assert f.shape == (4, 256)
    # Each (sin, cos) pair lies on the unit circle: the squared norm is 128.
    assert torch.allclose((f**2).sum(-1), torch.full((4,), 128.0), atol=1e-4)
    # At 1 ms, log10 = 0: every sine is 0, every cosine 1.
    assert torch.allclose(f[0], torch.cat([torch.zeros(128), torch.ones(128)]), atol=1e-6)
    # Log scale: 1 -> 10 ms is as far as 10 -> 100 ms.
    assert math.isclose(torch.dist(f[0], f[1]).item(), torch.dist(f[1], f[2]).item(), rel_tol=1e-4)
    assert enc(torch.tensor([50.0, 80.0])).shape == (2, D)


@pytest.mark.parametrize("bad", [0.0, -5.0, float("nan"), float("inf")])
def test_bad_budgets_raise(controller, bad):
    with pytest.raises(ValueError, match="finite and > 0"):
        controller.budget_encoder.features(torch.tensor([100.0, bad]))
    lang, budget, _ = _inputs()
    budget[2] = bad
    with pytest.raises(ValueError, match="finite and > 0"):
        controller.act_stage1(lang, budget, greedy=True)


def test_budget_position_spans_the_calibrated_range():
    # low 25, high 100 ms: log-span log(4). 25 -> -1; 50 -> 2*log(2)/log(4) - 1 = 0; 100 -> +1;
    # 200 (outside) -> 2*log(8)/log(4) - 1 = 2.
    pos = budget_position(torch.tensor([25.0, 50.0, 100.0, 200.0]), torch.tensor(25.0), torch.tensor(100.0))
    assert pos.shape == (4, 1)
    assert torch.allclose(pos[:, 0], torch.tensor([-1.0, 0.0, 1.0, 2.0]), atol=1e-6)
    enc = BudgetEncoder(d_model=D, hidden=16)
    enc.set_range(25.0, 100.0)
    assert torch.allclose(enc.position(torch.tensor([50.0])), torch.zeros(1, 1), atol=1e-6)
    with pytest.raises(ValueError, match="0 < low < high"):
        enc.set_range(100.0, 25.0)


def test_range_travels_with_the_weights(knob_space):
    a = Controller(ControllerConfig(d_model=D, seed=1), knob_space)
    a.set_budget_range(20.0, 60.0)
    b = Controller(ControllerConfig(d_model=D, seed=1), knob_space)
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.budget_encoder.range_ms, torch.tensor([20.0, 60.0]))


def test_stage2_reads_the_budget_when_the_latency_token_is_the_same(controller):
    # One latency token for every request (insertion 1 after a self-only block 0): the budget
    # and the prompt still move stage 2's distributions.
    lang, budget, token = _inputs()
    same = token[:1].expand(B, D)  # [B, D]
    insertion = torch.zeros(B, dtype=torch.long)
    with torch.no_grad():
        controller.stage2.position_proj.weight.fill_(1.0)
        top_k, _ = controller.stage2_dist(same, insertion, lang[:1].expand(B, D), budget)
        by_prompt, _ = controller.stage2_dist(same, insertion, lang, torch.full((B,), 100.0))
    assert not torch.allclose(top_k.logits[0], top_k.logits[-1])
    assert not torch.allclose(by_prompt.logits[0], by_prompt.logits[1])


def test_shapes_and_greedy_is_argmax(controller):
    lang, budget, token = _inputs()
    tier, ins = controller.stage1_dist(lang, budget)
    assert tier.logits.shape == (B, 3) and ins.logits.shape == (B, 5)
    s1 = controller.act_stage1(lang, budget, greedy=True)
    assert s1.indices.shape == s1.log_prob.shape == s1.entropy.shape == (B, 2)
    assert torch.equal(s1.indices[:, 0], tier.logits.argmax(-1))
    assert torch.equal(s1.indices[:, 1], ins.logits.argmax(-1))
    top_k, blocks = controller.stage2_dist(token, s1.indices[:, 1], lang, budget)
    s2 = controller.act_stage2(token, s1.indices[:, 1], lang, budget, greedy=True)
    assert torch.equal(s2.indices, torch.stack([top_k.logits.argmax(-1), blocks.logits.argmax(-1)], -1))


def test_sampling_is_reproducible_with_a_generator(controller):
    lang, budget, token = _inputs()
    lang = lang.repeat(20, 1)  # [120, D]: enough draws that two streams would differ
    budget = budget.repeat(20)
    gens = [torch.Generator().manual_seed(s) for s in (7, 7, 8)]
    draws = [controller.act_stage1(lang, budget, greedy=False, generator=g).indices for g in gens]
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], draws[2])


@pytest.mark.parametrize("greedy", [True, False])
def test_acting_gives_exactly_what_the_categorical_distributions_give(controller, greedy):
    """act_stage1/2 skip building torch Categorical objects; every number must stay the same."""
    lang, budget, token = _inputs()
    lang, budget, token = lang.repeat(20, 1), budget.repeat(20), token.repeat(20, 1)  # [120, ...]
    first = controller.act_stage1(lang, budget, greedy=greedy, generator=torch.Generator().manual_seed(3))
    second = controller.act_stage2(token, first.indices[:, 1], lang, budget, greedy=greedy,
                                   generator=torch.Generator().manual_seed(4))  # fmt: skip
    generators = [torch.Generator().manual_seed(3), torch.Generator().manual_seed(4)]
    dists = [controller.stage1_dist(lang, budget), controller.stage2_dist(token, first.indices[:, 1], lang, budget)]
    for action, pair, generator in zip((first, second), dists, generators):
        indices = [d.probs.argmax(-1) if greedy else torch.multinomial(d.probs, 1, generator=generator).squeeze(-1)
                   for d in pair]  # fmt: skip
        assert torch.equal(action.indices, torch.stack(indices, -1))
        assert torch.equal(action.log_prob, torch.stack([d.log_prob(i) for d, i in zip(pair, indices)], -1))
        assert torch.equal(action.entropy, torch.stack([d.entropy() for d in pair], -1))


def test_log_prob_rescores_sampled_actions(controller):
    lang, budget, token = _inputs()
    g = torch.Generator().manual_seed(3)
    s1 = controller.act_stage1(lang, budget, greedy=False, generator=g)
    s2 = controller.act_stage2(token, s1.indices[:, 1], lang, budget, greedy=False, generator=g)
    actions = torch.cat([s1.indices, s2.indices], dim=-1)  # [B, 4]
    logp, entropy = controller.log_prob(actions, lang, budget, token)
    assert torch.allclose(logp, s1.log_prob.sum(-1) + s2.log_prob.sum(-1), atol=1e-6)
    assert torch.allclose(entropy, s1.entropy.sum(-1) + s2.entropy.sum(-1), atol=1e-6)
    with pytest.raises(ValueError, match="top_k indices"):
        controller.log_prob(actions + torch.tensor([0, 0, 5, 0]), lang, budget, token)


def test_budget_encoder_frozen_unless_asked_and_lr_ratio(controller):
    assert not any(p.requires_grad for p in controller.budget_encoder.parameters())
    groups = controller.trainable_parameters(lr=1e-3, stage1_lr_ratio=0.1)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"stage1", "stage2"}
    assert by_name["stage1"]["lr"] == pytest.approx(1e-4)
    assert by_name["stage2"]["lr"] == pytest.approx(1e-3)
    assert not any(p.requires_grad for p in controller.budget_encoder.parameters())

    groups = controller.trainable_parameters(lr=1e-3, train_budget_encoder=True)
    names = [g["name"] for g in groups]
    assert names == ["stage1", "stage2", "budget_encoder"]
    assert all(p.requires_grad for p in controller.budget_encoder.parameters())
    torch.optim.Adam(groups)  # the groups are valid optimizer input


def test_gradients_reach_both_stages_and_adam_moves_them(controller):
    lang, budget, token = _inputs()
    actions = torch.tensor([[0, 1, 2, 3]] * B)  # [B, 4]
    optimizer = torch.optim.Adam(controller.trainable_parameters(lr=1e-2))
    before = {n: p.detach().clone() for n, p in controller.named_parameters()}
    logp, _ = controller.log_prob(actions, lang, budget, token)
    (-logp.mean()).backward()
    for name, p in controller.named_parameters():
        if name.startswith(("stage1.", "stage2.")):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    optimizer.step()
    after = dict(controller.named_parameters())
    assert not torch.equal(before["stage1.tier_head.weight"], after["stage1.tier_head.weight"])
    assert not torch.equal(before["stage2.top_k_head.weight"], after["stage2.top_k_head.weight"])
    assert torch.equal(before["budget_encoder.mlp.0.weight"], after["budget_encoder.mlp.0.weight"])


def test_same_seed_same_weights(knob_space):
    a = Controller(ControllerConfig(d_model=D, seed=4), knob_space)
    b = Controller(ControllerConfig(d_model=D, seed=4), knob_space)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_actions_knobs_round_trip(knob_space):
    # MolmoE space: tiers low/medium/high, insertion 1..5, top_k 4..8, blocks 12..16.
    assert actions_to_knobs(knob_space, torch.tensor([2, 0, 4, 1])) == ("high", 1, 8, 13)
    assert knobs_to_actions(knob_space, "high", 1, 8, 13) == (2, 0, 4, 1)
    with pytest.raises(ValueError, match="top_k=3"):
        knobs_to_actions(knob_space, "low", 1, 3, 12)
    with pytest.raises(ValueError, match="num_blocks index 5"):
        actions_to_knobs(knob_space, [0, 0, 0, 5])


def test_config_validation():
    with pytest.raises(ValueError, match="budget_feature_dim"):
        ControllerConfig(d_model=8, budget_feature_dim=255)
    with pytest.raises(ValueError, match="d_model"):
        ControllerConfig(d_model=0)
