import numpy as np
import pytest
import torch

from adactrl.data.synthetic import FAMILIES, VOCABULARY
from adactrl.models.embedded import EmbeddedConfig, EmbeddedVLM
from adactrl.models.pretrain import (
    REASONING_FAMILIES,
    RouterRecorder,
    build_model,
    curriculum,
    draw_knobs,
    pretrain,
)
from adactrl.models.pretrain_config import DEFAULT_TOP_K, PretrainConfig


def _tiny(tmp_path, name: str, **overrides) -> PretrainConfig:
    settings = dict(steps=2, batch_size=2, vision_steps=3, eval_every=1, eval_questions=4, warmup_steps=1)
    settings.update(overrides)
    return PretrainConfig(output_dir=str(tmp_path / name), **settings)


def test_pretrain_runs_both_phases_and_saves_a_loadable_model(tmp_path):
    lines: list[str] = []
    pretrain(_tiny(tmp_path, "model", eval_questions=len(FAMILIES), **CURRICULUM), log=lines.append)  # one per family
    assert sum(line.startswith("vision step") for line in lines) == 3  # eval_every=1: every step
    assert "low/pairs_f1" in lines[0] and "medium/pairs_f1" in lines[1] and "high/pairs_f1" in lines[2]  # tiers in turn
    val_lines = [line for line in lines if "val_first_token_acc" in line]
    assert len(val_lines) == 2  # steps 0 and 1
    assert all(f"{family} " in val_lines[0] for family in FAMILIES)  # per-family accuracy
    assert any("stage reasoning-low: families count/exists/position/same_color" in line for line in lines)
    model = EmbeddedVLM.load(tmp_path / "model")
    assert model.config.num_layers == 16 and not model.training


def test_pretrain_is_deterministic_by_seed(tmp_path):
    pretrain(_tiny(tmp_path, "a", steps=1), log=lambda _: None)
    pretrain(_tiny(tmp_path, "b", steps=1), log=lambda _: None)
    first, second = EmbeddedVLM.load(tmp_path / "a"), EmbeddedVLM.load(tmp_path / "b")
    for (name, p), q in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(p, q), name


def test_frozen_routers_keep_their_initial_weights_and_the_rest_trains(tmp_path):
    # As `pretrain` builds it, so the same initial weights; compared in memory (the saved file rounds them).
    initial = build_model(0, VOCABULARY, stem_self_only=True)
    for train_routers, name in ((False, "frozen"), (True, "trained")):
        model = pretrain(_tiny(tmp_path, name, steps=1, vision_steps=0, train_routers=train_routers), log=lambda _: None)
        routers_moved = [
            not torch.equal(block.mlp.gate.weight, start.mlp.gate.weight)
            for block, start in zip(model.blocks, initial.blocks)
        ]
        experts_moved = [
            not torch.equal(block.mlp.experts.gate_up_proj, start.mlp.experts.gate_up_proj)
            for block, start in zip(model.blocks, initial.blocks)
        ]
        assert any(routers_moved) == train_routers, name
        assert all(experts_moved), name


def _recorded(logits: torch.Tensor, top_k: int) -> RouterRecorder:
    recorder = RouterRecorder(build_model(0, ("unused",)))
    recorder.calls = [(logits, top_k)]
    return recorder


def test_the_balance_loss_is_one_when_balanced_and_the_expert_count_when_one_expert_takes_all():
    num_experts, tokens = 16, 64
    valid = torch.ones(tokens, dtype=torch.bool)
    balanced = torch.zeros(tokens, num_experts)
    balanced[torch.arange(tokens), torch.arange(tokens) % num_experts] = 50.0  # each expert tops 4 tokens
    assert _recorded(balanced, 1).balance_loss(valid).item() == pytest.approx(1.0, abs=1e-4)
    collapsed = torch.zeros(tokens, num_experts)
    collapsed[:, 3] = 50.0
    assert _recorded(collapsed, 1).balance_loss(valid).item() == pytest.approx(num_experts, abs=1e-3)
    assert _recorded(torch.zeros(tokens, num_experts), 8).balance_loss(valid).item() == pytest.approx(1.0)  # flat


def test_the_balance_loss_skips_padding_and_is_recorded_from_a_forward_pass():
    valid = torch.tensor([True, True, False, False])
    logits = torch.zeros(4, 16)
    logits[0, 0] = logits[1, 1] = 50.0  # two real tokens on two experts
    logits[2:, 0] = 50.0  # padding would pile onto expert 0
    assert _recorded(logits, 1).balance_loss(valid).item() == pytest.approx(8.0, abs=1e-3)  # 16 * 2 * (1/2 * 1/2)
    model = build_model(0, ("unused",))
    with RouterRecorder(model) as recorder:
        model.run_blocks(torch.randn(1, 5, model.hidden_size), [0, 2, 3], 6, None, 0)
    assert [(logits.shape, top_k) for logits, top_k in recorder.calls] == [((5, 16), 6)] * 3
    assert recorder.balance_loss(torch.ones(5, dtype=torch.bool)).item() >= 1.0
    assert not any(block.mlp.gate._forward_hooks for block in model.blocks)  # hooks removed on exit


CURRICULUM = dict(reasoning_low_fraction=0.15, reasoning_fraction=0.1, warm_fraction=0.1, reasoning_weight=2.0)


def test_the_default_schedule_is_the_curriculum_of_the_shipped_model():
    config = PretrainConfig(output_dir="unused", steps=100)
    names = [curriculum(step, config).name for step in range(100)]
    assert names == ["reasoning-low"] * 15 + ["reasoning"] * 10 + ["warm"] * 10 + ["random-knobs"] * 65
    assert config.rising_knob_weights and config.stem_self_only
    shipped = EmbeddedVLM.load().config
    assert (config.expert_size, config.num_experts, config.top_k_draw_fraction) == (
        shipped.expert_size, shipped.num_experts, 0.05
    )
    assert not config.train_routers
    assert DEFAULT_TOP_K == EmbeddedConfig.top_k == shipped.top_k  # the torch-free copy keeps up
    assert [curriculum(step, config).slot_prob for step in (34, 35, 99)] == [0.0, config.budget_slot_prob / 13, 0.5]


def test_a_plain_schedule_is_a_warm_share_then_random_knobs():
    config = PretrainConfig(output_dir="unused", steps=100, reasoning_low_fraction=0, reasoning_fraction=0,
                            warm_fraction=0.25, reasoning_weight=1.0, slot_ramp_fraction=0.0)  # fmt: skip
    names = [curriculum(step, config).name for step in range(100)]
    assert names == ["warm"] * 25 + ["random-knobs"] * 75
    assert {tuple(curriculum(step, config).family_probs) for step in (0, 50)} == {(1 / len(FAMILIES),) * len(FAMILIES)}
    assert [curriculum(step, config).slot_prob for step in (24, 25)] == [0.0, config.budget_slot_prob]


def test_the_curriculum_teaches_the_reasoning_families_first_then_draws_knobs():
    config = PretrainConfig(output_dir="unused", steps=100, slot_ramp_fraction=0.2, **CURRICULUM)  # ends 15, 25, 35
    names = [curriculum(step, config).name for step in range(100)]
    assert names == ["reasoning-low"] * 15 + ["reasoning"] * 10 + ["warm"] * 10 + ["random-knobs"] * 65
    for step in (0, 20):
        assert curriculum(step, config).families == REASONING_FAMILIES
    warm = curriculum(30, config)
    assert warm.families == FAMILIES and warm.slot_prob == 0.0
    weights = dict(zip(warm.families, warm.family_probs))
    assert weights["count"] == 2 * weights["color"] and abs(sum(weights.values()) - 1) < 1e-9
    # The budget slot fades in over the first fifth (13 steps) of the random-knob stage.
    slots = [curriculum(step, config).slot_prob for step in range(35, 100)]
    assert slots[0] == config.budget_slot_prob / 13 and slots[12:] == [config.budget_slot_prob] * 53
    assert all(a <= b for a, b in zip(slots, slots[1:]))


def test_each_stage_draws_the_knobs_it_promises():
    model, config = build_model(0, ("unused",)), PretrainConfig(output_dir="unused", steps=100, **CURRICULUM)
    space, rng = model.knob_space, np.random.default_rng(0)
    every_block = tuple(range(space.num_layers))
    low = curriculum(0, config).draw_knobs(model, rng, config)
    assert (low.tier, low.top_k, low.blocks) == (space.tiers[0], space.default_top_k, every_block)
    warm = [curriculum(30, config).draw_knobs(model, rng, config) for _ in range(200)]
    assert {k.blocks for k in warm} == {every_block} and {k.tier for k in warm} == set(space.tiers)
    for rising, low, high in ((False, 0.75, 1.33), (True, 4.0, 6.5)):
        drawn = [draw_knobs(model, rng, full_plan_fraction=0.0, rising=rising) for _ in range(3000)]
        top_k = [k.top_k for k in drawn]
        blocks = [len(k.blocks) for k in drawn]
        # Uniform, or weights 1..5 from the cheapest value up: the most expensive about 5x as often.
        assert low < top_k.count(space.top_k_values[-1]) / top_k.count(space.top_k_values[0]) < high
        assert low < blocks.count(space.num_blocks_values[-1]) / blocks.count(space.num_blocks_values[0]) < high
        assert all(k.blocks[: k.insertion] == tuple(range(k.insertion)) for k in drawn)  # head blocks always run


def test_most_random_plans_keep_the_default_top_k():
    model, rng = build_model(0, ("unused",), expert_size=4, num_experts=12), np.random.default_rng(0)
    space = model.knob_space
    assert model.blocks[1].mlp.experts.down_proj.shape[::2] == (12, 4)  # the experts and width asked for
    drawn = [draw_knobs(model, rng, 0.0, rising=True, top_k_draw_fraction=0.25) for _ in range(4000)]
    lowered = sum(k.top_k < space.default_top_k for k in drawn) / len(drawn)
    # A quarter of the plans draw top-k, with weights 1..5; four of the five values (weights
    # 1 + 2 + 3 + 4 = 10 of 15) are below the default: 0.25 * 10 / 15 = 0.167.
    assert 0.14 < lowered < 0.19
    assert {len(k.blocks) for k in drawn} == set(space.num_blocks_values)  # the blocks are still drawn every time
    assert {k.top_k for k in drawn} == set(space.top_k_values)
