"""The controller as the executor's plan policy: one request, one budget, choices recorded.

`adaptive_infer` runs one plan end to end; `adaptive_infer_group` samples several plans for one
request (a GRPO group, across budgets) and runs them through `execute_group`, which runs their
shared stages once. Each plan has its own generator, so a plan's choices do not depend on
which path runs it or on the plans beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from adactrl.controller.policy import Controller, StageAction, actions_to_knobs
from adactrl.executor import InferenceResult, Stage1Choice, Stage2Choice, execute, execute_group
from adactrl.models.adapter import MoEVLM


class ControllerPolicy:
    """Stage 1 and stage 2 of a `Controller` for one request at `budget_ms`.

    With `ControllerConfig.budget_token` the budget token is appended to the prefill, rescaled to
    the frozen model's mean word-embedding norm: the model was never trained on the budget
    encoder's output scale, and a token at word scale keeps the prefill in distribution whatever
    the encoder's weights are. `budget_token` overrides the config (evaluation measures the
    token's effect on the same controller).
    """

    def __init__(
        self,
        controller: Controller,
        budget_ms: float,
        *,
        greedy: bool,
        generator: torch.Generator | None = None,
        token_norm: float | None = None,
        budget_token: bool | None = None,
    ) -> None:
        self.controller = controller
        self.append_token = controller.config.budget_token if budget_token is None else budget_token
        self.budget_ms = float(budget_ms)
        self.budget = torch.tensor([self.budget_ms])
        self.greedy = greedy
        self.generator = generator
        self.token_norm = token_norm
        self.language_feature: torch.Tensor | None = None
        self.first: StageAction | None = None
        self.second: StageAction | None = None

    @torch.no_grad()
    def stage1(self, language_feature: torch.Tensor) -> Stage1Choice:
        self.language_feature = language_feature.float().unsqueeze(0)  # [1, d]
        self.first = self.controller.act_stage1(
            self.language_feature, self.budget, greedy=self.greedy, generator=self.generator
        )
        space = self.controller.knob_space
        tier = space.tiers[int(self.first.indices[0, 0])]
        insertion = space.insertion_positions[int(self.first.indices[0, 1])]
        if not self.append_token:
            return Stage1Choice(tier, insertion)
        token = self.controller.budget_token(self.budget)[0]  # [d]
        if self.token_norm is not None:
            token = token / token.norm().clamp_min(1e-6) * self.token_norm
        return Stage1Choice(tier, insertion, token)

    @torch.no_grad()
    def stage2(self, latency_token: torch.Tensor, insertion: int) -> Stage2Choice:
        assert self.first is not None and self.language_feature is not None, "stage 1 runs before stage 2"
        self.second = self.controller.act_stage2(
            latency_token.float().unsqueeze(0), self.first.indices[:, 1], self.language_feature, self.budget,
            greedy=self.greedy, generator=self.generator,
        )  # fmt: skip
        space = self.controller.knob_space
        return Stage2Choice(
            top_k=space.top_k_values[int(self.second.indices[0, 0])],
            num_blocks=space.num_blocks_values[int(self.second.indices[0, 1])],
        )

    @property
    def actions(self) -> torch.Tensor:
        """[4] indices (tier, insertion, top_k, num_blocks) chosen for this request."""
        assert self.first is not None and self.second is not None, "the request has not run"
        return torch.cat([self.first.indices[0], self.second.indices[0]])

    @property
    def log_probs(self) -> torch.Tensor:
        """[4] log-probabilities of the chosen sub-actions under the sampling policy."""
        assert self.first is not None and self.second is not None, "the request has not run"
        return torch.cat([self.first.log_prob[0], self.second.log_prob[0]])


@dataclass(frozen=True)
class AdaptiveResult:
    result: InferenceResult
    budget_ms: float
    actions: tuple[int, int, int, int]
    log_prob: float
    """Sum over the four sub-actions, under the policy that chose them."""

    @property
    def met_budget(self) -> bool:
        return self.result.total_ms <= self.budget_ms


def adaptive_infer(
    model: MoEVLM,
    controller: Controller,
    image: Image.Image,
    prompt: str,
    budget_ms: float,
    *,
    greedy: bool = True,
    generator: torch.Generator | None = None,
    max_new_tokens: int = 4,
    device: str = "cpu",
    budget_token: bool | None = None,
) -> AdaptiveResult:
    """One adaptive inference under a latency budget (DESIGN §1); `budget_token` overrides
    whether the budget token is appended (None: the controller's config decides)."""
    policy = ControllerPolicy(
        controller, budget_ms, greedy=greedy, generator=generator, token_norm=model.embedding_norm(),
        budget_token=budget_token,
    )  # fmt: skip
    result = execute(model, image, prompt, policy, max_new_tokens=max_new_tokens, device=device)
    return _adaptive_result(controller, policy, result)


def adaptive_infer_group(
    model: MoEVLM,
    controller: Controller,
    image: Image.Image,
    prompt: str,
    plans: Sequence[tuple[float, torch.Generator | None]],
    *,
    overhead_ms: float,
    greedy: bool = False,
    max_new_tokens: int = 4,
    device: str = "cpu",
    budget_token: bool | None = None,
) -> list[AdaptiveResult]:
    """One adaptive inference per (budget_ms, generator) of `plans` on one request, the work they
    share run once; each plan's latency is composed from measured stages plus `overhead_ms`
    (`execute_group`). Plan i chooses exactly what `adaptive_infer` at its budget with an equally
    seeded generator chooses."""
    norm = model.embedding_norm()
    policies = [ControllerPolicy(controller, budget, greedy=greedy, generator=generator, token_norm=norm,
                                 budget_token=budget_token) for budget, generator in plans]  # fmt: skip
    results = execute_group(model, image, prompt, policies, overhead_ms=overhead_ms, max_new_tokens=max_new_tokens,
                            device=device)  # fmt: skip
    return [_adaptive_result(controller, p, r) for p, r in zip(policies, results)]


def _adaptive_result(controller: Controller, policy: ControllerPolicy, result: InferenceResult) -> AdaptiveResult:
    actions = tuple(int(a) for a in policy.actions)
    actions_to_knobs(controller.knob_space, actions)
    return AdaptiveResult(result, policy.budget_ms, actions, float(policy.log_probs.sum()))  # type: ignore[arg-type]
