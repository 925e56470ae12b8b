"""`adactrl train --algorithm ppo`: the same controller trained with RLlib's PPO (new API stack).

RLlib's EnvRunner actors are the rollout workers (one per GPU where the cluster has one per
worker, else `--worker_cpus` each): each holds the frozen model and runs
`adactrl.rl_env.AdaptiveInferenceEnv`, one adaptive inference per episode. RLlib's Learner (in
this process) applies PPO's clipped loss with a value baseline (`ControllerRLModule`'s value
head), GAE at gamma = lambda = 1 over the two steps. Around it the run is the GRPO run's: the
same data, budget calibration (in this process, on the cheapest and full plans), reward, greedy
validation at the same budgets every epoch, `best_model.pt` and one checkpoint per epoch (plain
controller checkpoints: a PPO run does not resume), the history CSVs, one MLflow run, the static
oracle and the summary table.

Budgets of work: one PPO update takes `batch_size * budgets_per_sample * group_size` episodes, the
model runs of one GRPO learner step; an epoch is `num_train_samples * budgets_per_sample *
group_size` episodes, as a GRPO epoch; `--max_model_runs` stops both at the same count.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
import torch
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, LEARNER_RESULTS, NUM_EPISODES_LIFETIME
from ray.tune.registry import register_env

from adactrl.controller import Controller, ControllerConfig, load_controller, save_controller
from adactrl.metrics import (
    LOSS_ENTROPY, LOSS_GRAD_NORM, LOSS_POLICY, LOSS_TOTAL, REWARD_PREFIX, ROLLOUT_ACCURACY, ROLLOUT_LATENCY_MS,
    ROLLOUT_VIOLATION_RATE, VAL_REWARD,
)  # fmt: skip
from adactrl.orchestration.driver import TrainOutcome, write_outputs
from adactrl.orchestration.ppo.module import ControllerRLModule, controller_state, module_config
from adactrl.orchestration.ray_backend import actor_bundles, check_cluster_holds, local_cpus, start_ray
from adactrl.rl_env import AdaptiveInferenceEnv
from adactrl.reward import RewardConfig
from adactrl.training.checkpoints import BEST_MODEL, TrainerState, epoch_checkpoint_name
from adactrl.training.config import TrainConfig, WorkerConfig
from adactrl.training.events import BatchEvent, EpochEvent, RecorderObserver, TrainingObserver, ValidationEvent
from adactrl.training.outputs import RunRecorder, budget_point, run_tags
from adactrl.training.records import BudgetRange, EvalRecord, EvalRequest
from adactrl.training.rollout import LatencyFn, load_split, measured_latency
from adactrl.training.summary import eval_metrics, format_summary, static_oracle
from rollout_workers import RolloutWorker, load_model

log = logging.getLogger("adactrl.train")
ENV_NAME = "adactrl-adaptive-inference"
VF_LOSS_COEFF = 0.5
ROLLOUT_MODEL_RUNS = "rollout/model_runs"
"""Model runs (episodes) sampled so far in the run: the x axis the two algorithms share."""
LOSS_VALUE = "loss/value"
LOSS_VF_EXPLAINED_VAR = "loss/vf_explained_var"
_LEARNER_KEYS = {"total_loss": LOSS_TOTAL, "policy_loss": LOSS_POLICY, "vf_loss": LOSS_VALUE,
                 "entropy": LOSS_ENTROPY, "vf_explained_var": LOSS_VF_EXPLAINED_VAR,
                 "gradients_default_optimizer_global_norm": LOSS_GRAD_NORM}  # fmt: skip


@dataclass(frozen=True)
class EnvSettings:
    """What an EnvRunner needs to build its environment: the model, the train split, the budgets."""

    model_path: str | None
    importance_scores_file: str | None
    dataset_names: tuple[str, ...]
    num_train_samples: int
    data_seed: int
    data_dir: str | None
    budget_range_ms: tuple[float, float]
    reward: RewardConfig
    max_new_tokens: int
    seed: int
    latency_fn: LatencyFn = measured_latency
    device: str = "cpu"
    num_threads: int = 1


def make_env(env_config: Any) -> AdaptiveInferenceEnv:
    """The EnvRunner's environment; worker i seeds it with seed + i (RLlib's EnvContext)."""
    settings: EnvSettings = env_config["settings"]
    torch.set_num_threads(settings.num_threads)
    model = load_model(settings.model_path, settings.importance_scores_file, settings.device).to(settings.device)
    split = load_split(settings.dataset_names, "train", settings.num_train_samples, settings.data_seed,
                       data_dir=settings.data_dir)  # fmt: skip
    return AdaptiveInferenceEnv(
        model, split, BudgetRange(*settings.budget_range_ms), reward=settings.reward, latency_fn=settings.latency_fn,
        max_new_tokens=settings.max_new_tokens, seed=settings.seed + getattr(env_config, "worker_index", 0),
        device=settings.device,
    )  # fmt: skip


class EpisodeSums(RLlibCallback):
    """Sums, per training iteration, of each finished episode's reward components, accuracy,
    latency and budget miss (the env's last info), and the episode count: `episode_means`."""

    def on_episode_end(self, *, episode: Any, metrics_logger: Any = None, **kwargs: Any) -> None:
        info = episode.get_infos(-1)
        values = info["reward"].to_metrics() | {
            "accuracy": info["accuracy"], "latency_ms": info["latency_ms"]["total"],
            "violated": float(info["latency_ms"]["total"] > info["budget_ms"]), "episodes": 1.0,
        }  # fmt: skip
        for key, value in values.items():
            metrics_logger.log_value(("adactrl", key), float(value), reduce="sum")


def episode_means(env_results: dict[str, Any]) -> dict[str, float]:
    """The iteration's means over its episodes from `EpisodeSums`, under the GRPO run's names."""
    sums = env_results.get("adactrl", {})
    count = float(sums.get("episodes", 0.0))
    if not count:
        return {}
    names = {"accuracy": ROLLOUT_ACCURACY, "latency_ms": ROLLOUT_LATENCY_MS, "violated": ROLLOUT_VIOLATION_RATE}
    return {names.get(key, key): float(value) / count for key, value in sums.items() if key != "episodes"}


def ppo_config(config: TrainConfig, settings: EnvSettings, spec: dict, gpus: float) -> PPOConfig:
    """RLlib's PPO on the new API stack, sized as the GRPO run: one update per GRPO request's runs."""
    episodes = config.batch_size * config.budgets_per_sample * config.group_size
    # "truncate_episodes" with an even fragment: every fragment ends with an episode. RLlib's
    # "complete_episodes" samples one episode per call and resets the env with its seed before
    # each, so every episode of a runner would replay the same question at the same budget.
    fragment = 2 * math.ceil(episodes / config.num_workers)
    workers_gpu = 1 if gpus >= config.num_workers else 0
    loss = config.learner.loss
    return (
        PPOConfig()
        .environment(ENV_NAME, env_config={"settings": settings})
        .env_runners(num_env_runners=config.num_workers, num_envs_per_env_runner=1,
                     num_cpus_per_env_runner=config.worker_cpus, num_gpus_per_env_runner=workers_gpu,
                     batch_mode="truncate_episodes", rollout_fragment_length=fragment,
                     create_local_env_runner=False)  # fmt: skip
        .learners(num_learners=0, num_gpus_per_learner=1 if gpus - workers_gpu * config.num_workers >= 1 else 0)
        .training(lr=config.learner.lr, gamma=1.0, lambda_=1.0, clip_param=loss.clip_eps,
                  entropy_coeff=loss.entropy_coef, vf_loss_coeff=VF_LOSS_COEFF, use_kl_loss=False,
                  grad_clip=config.learner.max_grad_norm, grad_clip_by="global_norm",
                  train_batch_size_per_learner=fragment * config.num_workers,
                  minibatch_size=fragment * config.num_workers,
                  num_epochs=config.learner.update_passes)  # fmt: skip
        .rl_module(rl_module_spec=RLModuleSpec(module_class=ControllerRLModule, model_config=spec))
        .callbacks(EpisodeSums)
        .debugging(seed=config.seed, log_level="WARN")
        .reporting(metrics_num_episodes_for_smoothing=episodes)
    )


def run_ppo_training(
    config: TrainConfig, *, latency_fn: LatencyFn = measured_latency, observers: Sequence[TrainingObserver] = ()
) -> TrainOutcome:
    """Calibrate, validate the untrained controller, train with PPO until `num_epochs` epochs or
    `max_model_runs` episodes, validating and checkpointing every epoch; then the oracle and the
    summary. `latency_fn` replaces the measured latency everywhere (tests: a cost model)."""
    began = time.perf_counter()
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = load_model(config.model_path, config.importance_scores_file)
    if config.load_checkpoint is not None:
        controller, _ = load_controller(config.load_checkpoint, expected_knob_space=model.knob_space,
                                        expected_d_model=model.hidden_size)  # fmt: skip
    else:
        controller = Controller(ControllerConfig(d_model=model.hidden_size, seed=config.seed), model.knob_space)
    worker_config = WorkerConfig(controller=controller.config, data=config.data, reward=config.reward,
                                 model_path=config.model_path, importance_scores_file=config.importance_scores_file,
                                 max_new_tokens=config.max_new_tokens)  # fmt: skip
    evaluator = RolloutWorker(worker_config, 0, latency_fn=latency_fn)
    recorder = RunRecorder(output_dir, tracking_uri=config.mlflow_tracking_uri, experiment=config.mlflow_experiment,
                           run_name=output_dir.name, tags=run_tags(config.model_path, config.data.dataset_names))
    run = _PPORun(config, evaluator, controller, recorder, (RecorderObserver(recorder), *observers))
    ok = False
    try:
        recorder.log_params(config.to_params() | {"model.d_model": model.hidden_size,
                                                  "model.knob_space": json.dumps(model.knob_space.to_dict()),
                                                  "ppo.vf_loss_coeff": VF_LOSS_COEFF})
        budget = run.calibrate()
        settings = EnvSettings(
            config.model_path, config.importance_scores_file, config.data.dataset_names, config.data.num_train_samples,
            config.data.seed, config.data.data_dir, (budget.low_ms, budget.high_ms), config.reward,
            config.max_new_tokens, config.seed, latency_fn,
        )  # fmt: skip
        run.state.untrained_val = run.validate(0)
        with _algorithm(config, settings, module_config(controller, (budget.low_ms, budget.high_ms),
                                                        config.load_checkpoint)) as algo:  # fmt: skip
            run.train(algo)
        summary, oracle = run.summary()
        summary["wall_s"] = time.perf_counter() - began
        write_outputs(recorder, summary, run.best_records, oracle)
        ok = True
        return TrainOutcome(run.state, summary, output_dir, recorder.run_id, recorder.tracking_uri,
                            time.perf_counter() - began)  # fmt: skip
    finally:
        recorder.finish(ok)


class _algorithm:
    """The PPO algorithm on a Ray instance (started locally, or `config.ray_address`, unless one is up)."""

    def __init__(self, config: TrainConfig, settings: EnvSettings, spec: dict) -> None:
        self.config, self.settings, self.spec = config, settings, spec
        self.started = False
        self.algo: Any = None

    def __enter__(self) -> Any:
        bundles = actor_bundles(self.config, 0)
        if not ray.is_initialized():
            start_ray(self.config.ray_address, num_cpus=local_cpus(bundles, shared=bundles[0]["CPU"]))
            self.started = True
        gpus = ray.cluster_resources().get("GPU", 0)
        check_cluster_holds(actor_bundles(self.config, gpus)[1:], self.config.num_workers)
        register_env(ENV_NAME, make_env)
        device = "cuda" if gpus >= self.config.num_workers else "cpu"
        settings = replace(self.settings, device=device, num_threads=max(1, int(self.config.worker_cpus)))
        self.algo = ppo_config(self.config, settings, self.spec, gpus).build_algo()
        log.info("PPO: %d EnvRunner actors on %s, the learner in the driver", self.config.num_workers,
                 "GPUs" if device == "cuda" else "CPUs")  # fmt: skip
        return self.algo

    def __exit__(self, *exc: object) -> None:
        if self.algo is not None:
            self.algo.stop()
        if self.started:
            ray.shutdown()


class _PPORun:
    """The run around the algorithm: calibration, validation, checkpoints, histories, summary."""

    def __init__(self, config: TrainConfig, evaluator: RolloutWorker, controller: Controller,
                 recorder: RunRecorder, observers: Sequence[TrainingObserver]) -> None:  # fmt: skip
        self.config, self.evaluator, self.controller, self.recorder = config, evaluator, controller, recorder
        self.observers = observers
        self.output_dir = Path(config.output_dir)
        self.state = TrainerState(config=config.to_params())
        self.best_records: tuple[EvalRecord, ...] = ()
        self._last_records: tuple[EvalRecord, ...] = ()
        self.model_runs = 0
        """Episodes RLlib's EnvRunners finished: training model runs."""

    @property
    def val_budgets(self) -> tuple[float, ...]:
        assert self.state.budget_range is not None, "calibrate() runs first"
        return self.state.budget_range.quantiles(self.config.num_val_budgets)

    def calibrate(self) -> BudgetRange:
        if self.config.budget_range_ms is not None:
            budget = BudgetRange(*self.config.budget_range_ms)
        else:
            n = min(self.config.calibration_samples, self.evaluator.split_sizes()["train"])
            budget = BudgetRange.calibrate([self.evaluator.calibrate(tuple(range(n)))], self.config.budget_margin)
        self.state.budget_range = budget
        self.controller.set_budget_range(budget.low_ms, budget.high_ms)
        log.info("budget range %.2f..%.2f ms", budget.low_ms, budget.high_ms)
        self.recorder.log_params({"budget/low_ms": budget.low_ms, "budget/high_ms": budget.high_ms,
                                  "budget/val_budgets_ms": self.val_budgets})  # fmt: skip
        return budget

    def validate(self, epoch: int) -> dict[str, float]:
        """The greedy controller on the validation split at the validation budgets (as GRPO's)."""
        self.evaluator.load_weights(self.state.step, self.controller.state_dict())
        n_val = self.evaluator.split_sizes()["validation"]
        batch = self.evaluator.evaluate(EvalRequest(tuple(range(n_val)), self.val_budgets, self.state.step))
        metrics = eval_metrics(batch.records) | {ROLLOUT_MODEL_RUNS: float(self.model_runs)}
        self._emit("on_validation", ValidationEvent(epoch, self.state.step, metrics, batch.records))
        self._last_records = batch.records
        return metrics

    def train(self, algo: Any) -> None:
        config = self.config
        per_sample = config.budgets_per_sample * config.group_size
        per_epoch = self.evaluator.split_sizes()["train"] * per_sample
        limit = config.num_epochs * per_epoch
        if config.max_model_runs is not None:
            limit = min(limit, config.max_model_runs)
        last_epoch, epoch = math.ceil(limit / per_epoch), 1
        while self.model_runs < limit:
            result = algo.train()
            self.state.step += 1
            runs = result.get(ENV_RUNNER_RESULTS, {}).get(NUM_EPISODES_LIFETIME)
            if runs is None:  # every EnvRunner failed this step; RLlib logged why
                raise RuntimeError(f"PPO step {self.state.step}: no episode finished; see the EnvRunner errors above")
            self.model_runs = int(runs)
            learner = result[LEARNER_RESULTS].get(DEFAULT_MODULE_ID, {})
            metrics = {name: float(learner[key]) for key, name in _LEARNER_KEYS.items() if key in learner}
            metrics |= episode_means(result[ENV_RUNNER_RESULTS]) | {ROLLOUT_MODEL_RUNS: float(self.model_runs)}
            self._emit("on_batch", BatchEvent(self.state.step, epoch, self.state.step - 1, -1, metrics))
            log.info("PPO step %d: %d model runs, %s", self.state.step, self.model_runs,
                     ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.startswith(REWARD_PREFIX)))
            while epoch <= last_epoch and self.model_runs >= min(epoch * per_epoch, limit):
                self._end_epoch(algo, epoch)
                epoch += 1

    def _end_epoch(self, algo: Any, epoch: int) -> None:
        weights = algo.learner_group.get_weights()[DEFAULT_MODULE_ID]
        self.controller.load_state_dict(controller_state(weights))
        metrics = self.validate(epoch)
        extra = {"epoch": epoch, "algorithm": "ppo", "model_runs": self.model_runs, "val": dict(metrics),
                 "budget_range": self.state.budget_range.to_dict()}  # fmt: skip
        self.state.epoch = epoch
        if metrics[VAL_REWARD] > self.state.best_val_reward:
            self.state.best_val_reward, self.state.best_epoch = metrics[VAL_REWARD], epoch
            self.state.best_val, self.best_records = dict(metrics), self._last_records
            save_controller(self.output_dir / BEST_MODEL, self.controller, extra=extra)
        save_controller(self.output_dir / epoch_checkpoint_name(epoch), self.controller, extra=extra)
        self._emit("on_epoch_end", EpochEvent(epoch, metrics))

    def summary(self) -> tuple[dict[str, Any], list]:
        state = self.state
        rows = {"untrained controller": state.untrained_val, f"trained controller (epoch {state.best_epoch})": state.best_val}
        points, oracle_plans = [], {}
        n = min(self.config.oracle_samples, self.evaluator.split_sizes()["validation"])
        records = self.evaluator.sweep(tuple(range(n))) if n > 0 else []
        if records:
            metrics, chosen = static_oracle(records, self.val_budgets, self.config.reward)
            rows["static Pareto oracle"] = metrics
            oracle_plans = {f"{b:.3f}": plan for b, plan in chosen.items()}
            points = [budget_point(b, [r for r in records if r.plan == plan]) for b, plan in chosen.items()]
        summary = {
            "table": format_summary(rows, self.val_budgets), "rows": rows, "val_budgets_ms": list(self.val_budgets),
            "oracle_plans": oracle_plans, "budget_range": self.state.budget_range.to_dict(), "best_epoch": state.best_epoch,
            "steps": state.step, "model_runs": self.model_runs, "algorithm": "ppo",
        }  # fmt: skip
        return summary, points

    def _emit(self, method: str, event: Any) -> None:
        for observer in self.observers:
            getattr(observer, method)(event)
