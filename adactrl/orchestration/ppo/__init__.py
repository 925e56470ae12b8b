"""RLlib's PPO training the product's controller: a baseline beside GRPO on the same rollouts (docs/ppo.md)."""

from adactrl.orchestration.ppo.module import ControllerRLModule, controller_state, module_config
from adactrl.orchestration.ppo.training import run_ppo_training

__all__ = ["ControllerRLModule", "controller_state", "module_config", "run_ppo_training"]
