"""A controlled fixture for learning tests: GRPO on a simulated model whose plans' accuracy and
latency are known, so a test trains a real `Controller` with the real reward and loss in seconds.

Two question families: "detail" questions are answered only at the `high` tier, "simple" ones at
every tier. A plan's latency grows with tier, blocks and top-k (20 ms cheapest, 54 ms full) and
varies by +-10% from run to run. Near 40 ms the per-family oracle then spends the `high` tier on
detail questions (an answer against a miss now and then) and keeps simple ones `low` (the same
answer without the risk); a constant policy cannot do both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from adactrl.controller import Controller, ControllerConfig, actions_to_knobs
from adactrl.knobs import KnobSpace
from adactrl.reward import RewardConfig, compute_reward
from adactrl.training.config import LearnerConfig, LossConfig
from adactrl.training.loss import BatchTensors, compute_loss
from adactrl.training.records import RolloutRecord

D = 16
SPACE = KnobSpace.from_model(num_layers=16, default_top_k=8)
BUDGET_RANGE = (22.0, 60.0)
FAMILIES = ("detail", "simple")


@dataclass(frozen=True)
class SimulatedModel:
    language: dict[str, np.ndarray]
    """[D] float32 language feature per family."""
    latency_token: np.ndarray
    """[D] float32: the same for every request, as at insertion 1 after a self-only block 0."""

    @classmethod
    def make(cls, seed: int = 0) -> SimulatedModel:
        g = np.random.default_rng(seed)
        language = {f: g.standard_normal(D).astype(np.float32) for f in FAMILIES}
        return cls(language, g.standard_normal(D).astype(np.float32))

    @staticmethod
    def latency_ms(actions: tuple[int, int, int, int], noise: float = 1.0) -> float:
        """The plan's latency times `noise` (a run's draw from [0.9, 1.1]; 1 is the median)."""
        tier, _, top_k, blocks = actions
        return (20.0 + 10.0 * tier + 2.0 * blocks + 1.5 * top_k) * noise

    @staticmethod
    def accuracy(family: str, actions: tuple[int, int, int, int]) -> float:
        tier, _, _, _ = actions
        return 1.0 if family == "simple" or SPACE.tiers[tier] == "high" else 0.0


def greedy_plan(controller: Controller, sim: SimulatedModel, family: str, budget_ms: float) -> tuple[int, int, int, int]:
    lang = torch.from_numpy(sim.language[family])[None]  # [1, D]
    budget = torch.tensor([budget_ms])
    first = controller.act_stage1(lang, budget, greedy=True)
    token = torch.from_numpy(sim.latency_token)[None]  # [1, D]
    second = controller.act_stage2(token, first.indices[:, 1], lang, budget, greedy=True)
    return tuple(int(a) for a in torch.cat([first.indices[0], second.indices[0]]))  # type: ignore[return-value]


def train(
    steps: int = 150, *, seed: int = 0, groups: int = 8, group_size: int = 4,
    learner: LearnerConfig = LearnerConfig(), reward: RewardConfig = RewardConfig(),
) -> tuple[Controller, SimulatedModel]:
    """GRPO with the default reward, loss and learning rate on the simulated model."""
    sim = SimulatedModel.make(seed)
    controller = Controller(ControllerConfig(d_model=D, seed=seed), SPACE)
    controller.set_budget_range(*BUDGET_RANGE)
    optimizer = torch.optim.Adam(controller.trainable_parameters(learner.lr, learner.stage1_lr_ratio))
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    loss_config: LossConfig = learner.loss
    for step in range(steps):
        records = []
        for g in range(groups):
            family = FAMILIES[int(rng.integers(len(FAMILIES)))]
            budget = float(np.exp(rng.uniform(*np.log(BUDGET_RANGE))))
            lang = torch.from_numpy(sim.language[family])[None].expand(group_size, D)  # [G, D]
            budgets = torch.full((group_size,), budget)
            token = torch.from_numpy(sim.latency_token)[None].expand(group_size, D)  # [G, D]
            first = controller.act_stage1(lang, budgets, greedy=False, generator=generator)
            second = controller.act_stage2(token, first.indices[:, 1], lang, budgets, greedy=False, generator=generator)
            logp = first.log_prob.sum(-1) + second.log_prob.sum(-1)  # [G]
            for i, row in enumerate(torch.cat([first.indices, second.indices], dim=-1).tolist()):
                actions = tuple(row)
                accuracy, latency = sim.accuracy(family, actions), sim.latency_ms(actions, rng.uniform(0.9, 1.1))
                records.append(RolloutRecord(
                    sample_id=step * groups + g, budget_ms=budget, actions=actions, old_logp=float(logp[i]),
                    language_feature=sim.language[family], latency_token=sim.latency_token, accuracy=accuracy,
                    latency_ms={"total": latency, "controller": 0.1},
                    reward=compute_reward(accuracy, latency, budget, 0.0, reward), policy_version=step, worker_index=0,
                ))  # fmt: skip
        tensors = BatchTensors.from_records(records, adv_eps=loss_config.adv_eps, advantage_scale=loss_config.advantage_scale)
        out = compute_loss(controller=controller, batch_tensors=tensors, config=loss_config)
        optimizer.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(controller.parameters(), learner.max_grad_norm)
        optimizer.step()
    return controller.eval(), sim


def knobs(actions: tuple[int, int, int, int]) -> tuple[str, int, int, int]:
    return actions_to_knobs(SPACE, actions)
