import pytest
import torch

from adactrl.controller import Controller, ControllerConfig, actions_to_knobs
from adactrl.controller.adaptive import adaptive_infer, adaptive_infer_group

BUDGET_MS = 50.0


@pytest.fixture(scope="module")
def controller(tiny_model) -> Controller:
    return Controller(ControllerConfig(d_model=tiny_model.hidden_size, seed=0), tiny_model.knob_space).eval()


def run(model, controller, row, **kwargs):
    return adaptive_infer(model, controller, row["image"], row["question"], BUDGET_MS, **kwargs)


def test_chosen_knobs_lie_in_the_knob_space(tiny_model, controller, synthetic_rows):
    space = tiny_model.knob_space
    out = run(tiny_model, controller, synthetic_rows[0])
    plan = out.result.plan
    assert plan.tier in space.tiers
    assert plan.insertion in space.insertion_positions
    assert plan.top_k in space.top_k_values
    assert plan.num_blocks in space.num_blocks_values
    assert actions_to_knobs(space, out.actions) == (plan.tier, plan.insertion, plan.top_k, plan.num_blocks)
    assert plan == space.plan(plan.tier, plan.insertion, plan.top_k, plan.num_blocks, tiny_model.importance)
    assert out.budget_ms == BUDGET_MS
    assert out.result.latency_ms["controller"] > 0.0


def rescore(controller, out) -> float:
    """Re-score the recorded request with gradients, as the learner does."""
    logp, _ = controller.log_prob(
        torch.tensor([out.actions]),
        out.result.language_feature.float()[None],
        torch.tensor([out.budget_ms]),
        out.result.latency_token.float()[None],
    )
    logp.sum().backward()
    assert controller.stage2.top_k_head.weight.grad is not None
    controller.zero_grad(set_to_none=True)
    return logp.item()


@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "sampled"])
def test_log_prob_equals_the_re_scored_actions(tiny_model, controller, synthetic_rows, greedy):
    generator = None if greedy else torch.Generator().manual_seed(3)
    out = run(tiny_model, controller, synthetic_rows[1], greedy=greedy, generator=generator)
    assert out.log_prob < 0.0
    assert rescore(controller, out) == pytest.approx(out.log_prob, abs=1e-5)


def test_greedy_is_deterministic(tiny_model, controller, synthetic_rows):
    first = run(tiny_model, controller, synthetic_rows[2])
    second = run(tiny_model, controller, synthetic_rows[2])
    assert first.actions == second.actions
    assert first.log_prob == second.log_prob
    assert first.result.token_ids == second.result.token_ids


def test_sampling_is_reproducible_with_a_seeded_generator(tiny_model, controller, synthetic_rows):
    row = synthetic_rows[3]

    def sample(seed: int):
        out = run(tiny_model, controller, row, greedy=False, generator=torch.Generator().manual_seed(seed))
        return out.actions, out.log_prob

    assert sample(11) == sample(11)
    # an untrained controller is close to uniform: eight seeds do not all pick one plan
    assert len({sample(seed)[0] for seed in range(8)}) > 1


def prefill_of(model, controller, row, **kwargs):
    inputs = []
    handle = model.blocks[0].register_forward_pre_hook(
        lambda m, args, kwargs: inputs.append(args[0].detach().clone()), with_kwargs=True
    )
    try:
        out = run(model, controller, row, **kwargs)
    finally:
        handle.remove()
    return out.result, inputs  # the prefix [1, L, d], then the budget token's pass [1, 1, d] if any


def test_no_budget_token_by_default(tiny_model, controller, synthetic_rows):
    # The static plans run on [image, prompt]; by default the controller's runs do too.
    assert not controller.config.budget_token
    result, inputs = prefill_of(tiny_model, controller, synthetic_rows[0])
    assert inputs[0].shape[1] == result.num_image_tokens + result.num_prompt_tokens
    assert len(inputs) == len(result.token_ids)  # prefill, then one pass per decode step


def test_budget_token_enters_at_word_embedding_scale(tiny_model, controller, synthetic_rows):
    result, inputs = prefill_of(tiny_model, controller, synthetic_rows[0], budget_token=True)
    assert inputs[0].shape[1] == result.num_image_tokens + result.num_prompt_tokens
    assert inputs[1].shape[1] == 1  # the budget token's own pass, after the prefix
    budget_token = inputs[1][0, -1]
    assert float(budget_token.norm()) == pytest.approx(tiny_model.embedding_norm(), rel=1e-5)
    # the encoder's direction is kept, only its length changes
    raw = controller.budget_token(torch.tensor([BUDGET_MS]))[0]
    assert torch.nn.functional.cosine_similarity(budget_token, raw, dim=0) == pytest.approx(1.0, abs=1e-5)


def test_met_budget_compares_the_measured_total(tiny_model, controller, synthetic_rows):
    row = synthetic_rows[0]
    assert adaptive_infer(tiny_model, controller, row["image"], row["question"], 1e6).met_budget
    assert not adaptive_infer(tiny_model, controller, row["image"], row["question"], 1e-3).met_budget


@pytest.mark.parametrize("budget", [0.0, -5.0, float("nan"), float("inf")])
def test_invalid_budget_is_refused(tiny_model, controller, synthetic_rows, budget):
    row = synthetic_rows[0]
    with pytest.raises(ValueError, match="finite and > 0"):
        adaptive_infer(tiny_model, controller, row["image"], row["question"], budget)


@pytest.mark.parametrize("budget_token", [False, True], ids=["plain", "budget_token"])
def test_group_samples_and_runs_what_each_plan_alone_would(tiny_model, controller, synthetic_rows, budget_token):
    """Shared-stage rollouts: the same seeds give the same plans, answers, token ids, features and
    log-probabilities as one `adaptive_infer` per plan, across two budgets of one request."""
    row = synthetic_rows[4]
    plans = [(budget, seed) for budget in (20.0, 80.0) for seed in range(4)]
    group = adaptive_infer_group(
        tiny_model, controller, row["image"], row["question"],
        [(budget, torch.Generator().manual_seed(seed)) for budget, seed in plans],
        overhead_ms=0.1, budget_token=budget_token, max_new_tokens=3,
    )  # fmt: skip
    alone = [adaptive_infer(tiny_model, controller, row["image"], row["question"], budget, greedy=False,
                            generator=torch.Generator().manual_seed(seed), budget_token=budget_token, max_new_tokens=3)
             for budget, seed in plans]  # fmt: skip
    for shared, own, (budget, _) in zip(group, alone, plans):
        assert shared.budget_ms == own.budget_ms == budget
        assert shared.actions == own.actions
        assert shared.log_prob == own.log_prob
        assert shared.result.token_ids == own.result.token_ids and shared.result.answer == own.result.answer
        assert torch.equal(shared.result.latency_token, own.result.latency_token)
        assert rescore(controller, shared) == pytest.approx(shared.log_prob, abs=1e-5)
    assert len({out.actions for out in group}) > 1, "eight seeds of an untrained controller pick several plans"
