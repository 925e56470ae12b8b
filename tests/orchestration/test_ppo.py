"""RLlib's PPO on the product's controller: the RLModule's logits and weights, a tiny training run
through RLlib on the tiny model (`adactrl train --algorithm ppo`) evaluated beside another
controller, and the model-run cap that lets GRPO and PPO compare at an equal rollout budget."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.tune.registry import register_env

from adactrl.cli import main
from adactrl.commands.evaluate import controller_names
from adactrl.controller import Controller, ControllerConfig, load_controller, save_controller
from adactrl.data import load_vqa_dataset
from adactrl.orchestration.driver import run_training
from adactrl.orchestration.ppo import ControllerRLModule, controller_state, module_config
from adactrl.orchestration.ppo.training import ENV_NAME, EnvSettings, make_env, ppo_config
from adactrl.reward import RewardConfig
from adactrl.rl_env import AdaptiveInferenceEnv
from adactrl.training.config import LearnerConfig, TrainConfig
from adactrl.training.records import BudgetRange
from tests.training.helpers import cost_latency, small_config


@pytest.fixture()
def module_and_obs(tiny_model):
    """The module over the tiny model's spaces, and one observation of each step, batched [2]."""
    controller = Controller(ControllerConfig(d_model=tiny_model.hidden_size, seed=0), tiny_model.knob_space)
    split = list(load_vqa_dataset("synthetic", "train", 2, seed=0))
    env = AdaptiveInferenceEnv(tiny_model, split, BudgetRange(20.0, 80.0), reward=RewardConfig(),
                               latency_fn=cost_latency, seed=0)  # fmt: skip
    first, _ = env.reset(seed=0)
    second, *_ = env.step([1, 2, 0, 0])
    env.close()
    module = ControllerRLModule(observation_space=env.observation_space, action_space=env.action_space,
                                model_config=module_config(controller, (20.0, 80.0), None))  # fmt: skip
    obs = {key: torch.as_tensor(np.stack([first[key], second[key]])) for key in first}
    return module, controller, obs


def test_each_step_acts_with_its_own_stage_and_pins_the_other(module_and_obs):
    module, controller, obs = module_and_obs
    controller.set_budget_range(20.0, 80.0)
    logits = module.logits(obs)  # [2, 3 + 5 + 3 + 3]
    dist = module.get_train_action_dist_cls().from_logits(logits)
    budget = obs["budget_ms"][:, 0]
    tier, insertion = controller.stage1_dist(obs["language"], budget)
    top_k, blocks = controller.stage2_dist(obs["latency_token"], obs["insertion"].long(), obs["language"], budget)
    # Row 0 is step 1: the entropy is stage 1's alone; row 1 is step 2: stage 2's alone.
    expected = torch.stack([tier.entropy()[0] + insertion.entropy()[0], top_k.entropy()[1] + blocks.entropy()[1]])
    torch.testing.assert_close(dist.entropy(), expected)
    actions = torch.tensor([[2, 4, 0, 0], [0, 0, 1, 2]])
    expected_logp = torch.stack([tier.log_prob(torch.tensor(2))[0] + insertion.log_prob(torch.tensor(4))[0],
                                 top_k.log_prob(torch.tensor(1))[1] + blocks.log_prob(torch.tensor(2))[1]])
    torch.testing.assert_close(dist.logp(actions), expected_logp)
    # A pinned sub-action off index 0 is impossible: the other stage cannot pick.
    assert dist.logp(torch.tensor([[2, 4, 1, 0], [1, 0, 1, 2]]))[0] < -1e3
    assert module.compute_values({"obs": obs}).shape == (2,)


def test_the_modules_controller_weights_load_into_the_products_controller(module_and_obs, tiny_model):
    module, controller, _ = module_and_obs
    state = controller_state({k: v.numpy() for k, v in module.state_dict().items()})
    loaded = Controller(controller.config, tiny_model.knob_space)
    loaded.load_state_dict(state)  # strict: every key of the controller, nothing else
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), module.controller.state_dict().values()))


@pytest.fixture(scope="module")
def ppo_run(ray_local, tiny_model_dir, tmp_path_factory):
    """A tiny `adactrl train --algorithm ppo` run: its output dir and MLflow store."""
    tmp_path = tmp_path_factory.mktemp("ppo_run")
    out = tmp_path / "ppo"
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["train", "--algorithm", "ppo", "--model_path", tiny_model_dir, "--output_dir", str(out),
            "--num_train_samples", "4", "--num_val_samples", "2", "--batch_size", "2", "--group_size", "2",
            "--num_workers", "1", "--worker_cpus", "0.5", "--budget_range_ms", "5", "500", "--num_val_budgets", "2",
            "--oracle_samples", "0", "--num_epochs", "3", "--max_model_runs", "12", "--lr", "0.03",
            "--mlflow_tracking_uri", db]  # fmt: skip
    assert main(argv) == 0
    return out, db


def test_ppo_trains_the_controller_through_rllib(ppo_run, tiny_model):
    out, db = ppo_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == "ppo" and summary["model_runs"] == 12 and summary["steps"] == 3  # 4 runs a step
    trained, extra = load_controller(out / "best_model.pt", expected_knob_space=tiny_model.knob_space,
                                     expected_d_model=tiny_model.hidden_size)  # fmt: skip
    assert extra["algorithm"] == "ppo" and extra["budget_range"]["low_ms"] == 5.0
    start = Controller(ControllerConfig(d_model=tiny_model.hidden_size, seed=0), tiny_model.knob_space)
    for stage in ("stage1", "stage2"):
        before, after = getattr(start, stage).state_dict(), getattr(trained, stage).state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before), f"{stage} did not change"
    # 12 runs are an epoch (8 runs) and a half: the half epoch ends the run, validated and saved.
    assert (out / "checkpoint_epoch_2.pt").is_file() and not (out / "checkpoint_epoch_3.pt").exists()
    with (out / "training_history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [float(r["rollout/model_runs"]) for r in rows] == [4.0, 8.0, 12.0]
    client = MlflowClient(db)
    (run,) = client.search_runs([client.get_experiment_by_name("adactrl-train").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["algorithm"] == "ppo"
    assert {"loss/policy", "loss/value", "reward/total", "val/accuracy"} <= set(run.data.metrics)


def test_evaluate_reports_each_controller_as_a_row(ppo_run, tiny_model_dir, tiny_model, tmp_path):
    out, _ = ppo_run
    untrained = tmp_path / "untrained.pt"
    _, extra = load_controller(out / "best_model.pt")
    save_controller(untrained, Controller(ControllerConfig(d_model=tiny_model.hidden_size), tiny_model.knob_space),
                    extra={"budget_range": extra["budget_range"]})  # fmt: skip
    argv = ["evaluate", "--controller", str(untrained), str(out / "best_model.pt"), "--controller_names", "untrained",
            "ppo", "--model_path", tiny_model_dir, "--num_samples", "2", "--profile_samples", "2", "--budgets", "8",
            "100", "--static_plans", "none", "--baselines", "oracles", "--no_budget_token_check",
            "--output_dir", str(tmp_path / "eval")]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    rows = {(r["method"], r["budget_ms"]) for r in report["rows"]}
    assert {("untrained", 8.0), ("ppo", 8.0), ("untrained", 100.0), ("ppo", 100.0)} <= rows
    assert [p["minus_first"]["ppo"]["num_questions"] for p in report["paired"]] == [2, 2]
    with pytest.raises(ValueError, match="one distinct name per --controller"):
        controller_names(["a.pt", "b.pt"], ["same", "same"])
    assert controller_names(["runs/grpo/best_model.pt", "runs/ppo/best_model.pt"], None) == ["grpo", "ppo"]


def test_an_env_runner_draws_a_new_question_and_budget_each_episode(ray_local, tiny_model_dir, tiny_model, tmp_path):
    config = small_config(tmp_path / "run", tiny_model_dir, algorithm="ppo", budget_range_ms=(5.0, 500.0))
    settings = EnvSettings(tiny_model_dir, None, ("synthetic",), 4, 0, None, (5.0, 500.0), RewardConfig(), 4, 0,
                           cost_latency)  # fmt: skip
    controller = Controller(ControllerConfig(d_model=tiny_model.hidden_size), tiny_model.knob_space)
    register_env(ENV_NAME, make_env)
    runner = SingleAgentEnvRunner(config=ppo_config(config, settings, module_config(controller, (5.0, 500.0), None), 0),
                                  worker_index=1)  # fmt: skip
    episodes = runner.sample() + runner.sample()  # two updates' worth: 2 x 6 episodes of 2 steps
    runner.stop()
    assert [len(e) for e in episodes] == [2] * 12 and all(e.is_done for e in episodes)
    drawn = [(e.get_infos(-1)["sample_id"], e.get_infos(-1)["budget_ms"]) for e in episodes]
    assert len(set(drawn)) == 12 and {i for i, _ in drawn} == {0, 1, 2, 3}


def test_grpo_stops_at_the_same_model_run_cap(tiny_model_dir, tmp_path):
    # 4 samples x 3 plans = 12 runs an epoch, 6 a request: 7 runs round up to two requests, one epoch.
    config = small_config(tmp_path / "grpo", tiny_model_dir, num_epochs=3, max_model_runs=7, budget_range_ms=(5.0, 500.0))
    outcome = run_training(config, local=True, latency_fn=cost_latency)
    assert (outcome.state.step, outcome.state.epoch) == (2, 1)


def test_ppo_takes_update_passes_as_rllibs_epochs(tiny_model_dir, tiny_model, tmp_path):
    settings = EnvSettings(tiny_model_dir, None, ("synthetic",), 4, 0, None, (5.0, 500.0), RewardConfig(), 4, 0,
                           cost_latency)  # fmt: skip
    spec = module_config(Controller(ControllerConfig(d_model=tiny_model.hidden_size), tiny_model.knob_space),
                         (5.0, 500.0), None)  # fmt: skip
    for passes in (1, 3):
        config = small_config(tmp_path / "run", tiny_model_dir, algorithm="ppo",
                              learner=LearnerConfig(update_passes=passes))  # fmt: skip
        assert ppo_config(config, settings, spec, 0).num_epochs == passes


def test_ppo_refuses_grpo_only_settings():
    with pytest.raises(ValueError, match=r"--resume .*--stage1_lr_ratio.*use --algorithm grpo"):
        TrainConfig(algorithm="ppo", resume=True, learner=LearnerConfig(stage1_lr_ratio=0.5))
    with pytest.raises(ValueError, match="max_model_runs must be >= 1"):
        TrainConfig(max_model_runs=0)
    with pytest.raises(ValueError, match="algorithm must be one of"):
        TrainConfig(algorithm="a2c")
