"""The two-step Gymnasium episode: Gymnasium's checker, the GRPO path's reward on the same plan, the
agent's waiting time kept out of the latency, and episodes left mid-way."""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from adactrl.data import load_vqa_dataset
from adactrl.eval.vqa import vqa_score
from adactrl.executor import StaticPolicy, execute
from adactrl.reward import RewardConfig, compute_reward, plan_complexity
from adactrl.rl_env import BUDGET_MS, INSERTION, LANGUAGE, LATENCY_TOKEN, STAGE, AdaptiveInferenceEnv
from adactrl.training.records import BudgetRange
from tests.training.helpers import cost_latency

REWARD = RewardConfig(beta=0.1, gamma=2.0, delta=0.1, epsilon=0.05)
"""Every component non-zero somewhere, so the record is compared term by term."""


@pytest.fixture(scope="module")
def split():
    return list(load_vqa_dataset("synthetic", "train", 4, seed=0))


def make_env(model, split, **kwargs) -> AdaptiveInferenceEnv:
    kwargs = {"reward": REWARD, "latency_fn": cost_latency, "seed": 3} | kwargs
    return AdaptiveInferenceEnv(model, split, BudgetRange(20.0, 80.0), **kwargs)


def episode_threads() -> int:
    return sum(t.name == "adactrl-episode" for t in threading.enumerate())


def test_gymnasium_check_env_passes(tiny_model, split):
    env = make_env(tiny_model, split)
    with warnings.catch_warnings():
        # The language feature and latency token are unbounded hidden states: Box(-inf, inf) is their true range.
        warnings.filterwarnings("ignore", message=".*Box observation space (maximum|minimum) value is")
        warnings.filterwarnings("ignore", message=".*alternative render modes")
        check_env(env)
    env.close()
    assert episode_threads() == 0


def test_an_episode_ends_with_the_grpo_paths_reward_for_the_same_plan(tiny_model, split):
    space = tiny_model.knob_space  # tiers 3, insertion 1..5, top_k 2..4, blocks 6..8
    env = make_env(tiny_model, split)
    assert env.action_space.nvec.tolist() == list(space.sizes)
    obs, info = env.reset(seed=11)
    sample = split[info["sample_id"]]
    budget = info["budget_ms"]
    assert obs[STAGE] == 0 and 20.0 <= budget <= 80.0 and obs[BUDGET_MS][0] == pytest.approx(budget)
    words = tiny_model.embed_tokens(tiny_model.tokenize(sample["question"]))
    np.testing.assert_allclose(obs[LANGUAGE], words.mean(dim=0).numpy(), rtol=1e-6, atol=1e-6)
    assert not obs[LATENCY_TOKEN].any()

    obs, reward, terminated, truncated, info = env.step([2, 1, 0, 0])  # high tier, insertion 2; stage 2 ignored
    assert (obs[STAGE], obs[INSERTION], reward, terminated, truncated, info) == (1, 1, 0.0, False, False, {})
    obs, reward, terminated, truncated, info = env.step([0, 4, 1, 2])  # top_k 3, 8 blocks; stage 1 ignored
    assert terminated and not truncated and info["plan"] == "high/ins2/k3/b8"

    plan = space.plan("high", 2, 3, 8, tiny_model.importance)
    result = execute(tiny_model, sample["image"], sample["question"], StaticPolicy(plan))
    np.testing.assert_allclose(obs[LATENCY_TOKEN], result.latency_token.numpy(), rtol=1e-5, atol=1e-5)
    expected = compute_reward(vqa_score(result.answer, sample["answers"]), cost_latency(result), budget,
                              plan_complexity(plan, space), REWARD)  # fmt: skip
    assert info["reward"] == pytest.approx(expected) and reward == pytest.approx(expected.total)
    assert info["latency_ms"]["total"] == pytest.approx(cost_latency(result))
    env.close()


def test_the_agents_thinking_time_is_not_the_models(tiny_model, split):
    env = make_env(tiny_model, split, latency_fn=lambda result: result.latency_ms["total"])
    env.reset(seed=0)
    began = time.perf_counter()
    time.sleep(0.25)
    env.step([0, 0, 0, 0])
    time.sleep(0.25)
    _, _, _, _, info = env.step([0, 0, 0, 0])
    waited_ms = (time.perf_counter() - began) * 1000.0
    # 500 ms of the agent's time passed between the stages; the run itself takes a few ms here.
    assert info["latency_ms"]["controller"] < 50.0
    assert info["latency_ms"]["total"] < waited_ms - 400.0
    env.close()


def test_samples_cover_the_split_before_repeating_and_a_seed_repeats_the_order(tiny_model, split):
    env = make_env(tiny_model, split)
    first = [env.reset(seed=5)[1]["sample_id"]] + [env.reset()[1]["sample_id"] for _ in range(3)]
    assert sorted(first) == [0, 1, 2, 3]
    again = [env.reset(seed=5)[1]["sample_id"]] + [env.reset()[1]["sample_id"] for _ in range(3)]
    assert again == first
    env.close()


def test_leaving_an_episode_midway_ends_its_run(tiny_model, split):
    env = make_env(tiny_model, split)
    env.reset(seed=0)
    env.step([1, 0, 0, 0])  # the run waits for stage 2
    env.reset()  # a new episode; the old run is stopped
    env.close()
    assert episode_threads() == 0


def test_bad_calls_are_refused(tiny_model, split):
    env = make_env(tiny_model, split)
    with pytest.raises(RuntimeError, match="reset"):
        env.step([0, 0, 0, 0])
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"4 indices within \[3, 5, 3, 3\]"):
        env.step([3, 0, 0, 0])
    with pytest.raises(ValueError, match="at least one"):
        make_env(tiny_model, [])
    env.close()


def test_an_unusable_sample_is_skipped_and_counted(tiny_model, split):
    broken = [dict(split[0], answers=[])] + split[1:]
    env = make_env(tiny_model, broken)
    ids = [env.reset(seed=1)[1]["sample_id"]] + [env.reset()[1]["sample_id"] for _ in range(5)]
    assert 0 not in ids and sorted(set(ids)) == [1, 2, 3] and env.skipped >= 1
    env.close()
