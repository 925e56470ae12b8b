"""The product's controller as an RLlib RLModule, with a value head for PPO's baseline.

The module holds a `Controller` (budget encoder, stage 1, stage 2: the modules the GRPO path
trains) and a small `ValueHead`. On `adactrl.rl_env`'s two-step episode it emits logits for the
four sub-actions (tier, insertion, top_k, num_blocks): at step 1 stage 1's two heads, at step 2
stage 2's; the other stage's two sub-actions are pinned to index 0 (one logit at 0, the rest at
PINNED_LOGIT), so their log-probability and entropy are 0 and the PPO loss sees each step's own
two choices only. `controller_state` strips the prefix, so the trained weights load into the
product's `Controller` (`adactrl infer`, `adactrl evaluate`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchMultiCategorical
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from torch import nn

from adactrl.controller import Controller, ControllerConfig, load_controller
from adactrl.knobs import KnobSpace
from adactrl.rl_env import BUDGET_MS, INSERTION, LANGUAGE, LATENCY_TOKEN, STAGE

PINNED_LOGIT = -1e4
"""exp(-1e4) is 0 in float32: a pinned sub-action has probability 1 on index 0, and its log-prob
and entropy are exactly 0, with no inf in the arithmetic."""
MIN_BUDGET_MS = 1e-3
"""Floor of the budget the module reads: RLlib may pass zero-filled observations (dummy batches)."""
CONTROLLER_PREFIX = "controller."


def module_config(controller: Controller, budget_range_ms: tuple[float, float], checkpoint: str | None) -> dict:
    """The RLModule's `model_config`: plain values only (RLlib ships it to every actor). The
    starting weights are the controller's config and seed, or the checkpoint at `checkpoint`."""
    return {"controller": dataclasses.asdict(controller.config), "knob_space": controller.knob_space.to_dict(),
            "budget_range_ms": list(budget_range_ms), "checkpoint": checkpoint}  # fmt: skip


def controller_state(module_state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The `Controller` state dict inside the module's (RLlib's get_state: numpy arrays or tensors)."""
    return {key.removeprefix(CONTROLLER_PREFIX): torch.as_tensor(value)
            for key, value in module_state.items() if key.startswith(CONTROLLER_PREFIX)}  # fmt: skip


class ValueHead(nn.Module):
    """V(observation): the request (language feature, budget position), the stage, and at step 2
    the latency token and insertion, as the active stage reads them -> [B]."""

    def __init__(self, d_model: int, n_ins: int, width: int) -> None:
        super().__init__()
        self.language = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, width))
        self.token = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, width))
        self.insertion = nn.Embedding(n_ins, width)
        self.stage = nn.Embedding(2, width)
        self.position = nn.Linear(1, width)
        self.out = nn.Sequential(nn.GELU(), nn.Linear(width, width), nn.GELU(), nn.Linear(width, 1))

    def forward(self, language: torch.Tensor, position: torch.Tensor, stage: torch.Tensor,
                latency_token: torch.Tensor, insertion: torch.Tensor) -> torch.Tensor:  # fmt: skip
        second = stage.float()[:, None]  # [B, 1], 1 at step 2
        h = self.language(language) + self.position(position) + self.stage(stage)  # [B, W]
        h = h + second * (self.token(latency_token) + self.insertion(insertion))  # [B, W]
        return self.out(h).squeeze(-1)  # [B]


class ControllerRLModule(TorchRLModule, ValueFunctionAPI):
    """`Controller` + `ValueHead` over `adactrl.rl_env.AdaptiveInferenceEnv`; `model_config`
    comes from `module_config`."""

    def setup(self) -> None:
        spec = self.model_config
        knob_space = KnobSpace.from_dict(spec["knob_space"])
        if spec.get("checkpoint"):
            self.controller, _ = load_controller(spec["checkpoint"], expected_knob_space=knob_space)
        else:
            self.controller = Controller(ControllerConfig(**spec["controller"]), knob_space)
        self.controller.set_budget_range(*spec["budget_range_ms"])
        config = self.controller.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.value_head = ValueHead(config.d_model, knob_space.sizes[1], 2 * config.stage1_width_dim)
        self.action_dist_cls = TorchMultiCategorical.get_partial_dist_cls(
            space=self.action_space, input_lens=list(knob_space.sizes)
        )

    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {Columns.ACTION_DIST_INPUTS: self.logits(batch[Columns.OBS])}

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        obs = batch[Columns.OBS]
        position = self.controller.budget_encoder.position(_budget(obs))  # [B, 1]
        return self.value_head(obs[LANGUAGE], position, obs[STAGE].long(), obs[LATENCY_TOKEN],
                               obs[INSERTION].long())  # fmt: skip

    def logits(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, n_tier + n_ins + n_k + n_b]: the active stage's logits, the other stage's pinned."""
        budget, language, first = _budget(obs), obs[LANGUAGE], obs[STAGE].long() == 0  # [B], [B, d], [B]
        tier, insertion = self.controller.stage1_dist(language, budget)
        top_k, blocks = self.controller.stage2_dist(obs[LATENCY_TOKEN], obs[INSERTION].long(), language, budget)
        parts = [_active(first, tier.logits), _active(first, insertion.logits),
                 _active(~first, top_k.logits), _active(~first, blocks.logits)]  # fmt: skip
        return torch.cat(parts, dim=-1)


def _budget(obs: dict[str, torch.Tensor]) -> torch.Tensor:
    return obs[BUDGET_MS].reshape(-1).float().clamp_min(MIN_BUDGET_MS)  # [B]


def _active(active: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Rows where `active` keep their logits [B, n]; the others pick index 0 with probability 1."""
    pinned = torch.full_like(logits, PINNED_LOGIT)
    pinned[:, 0] = 0.0
    return torch.where(active[:, None], logits, pinned)  # [B, n]
