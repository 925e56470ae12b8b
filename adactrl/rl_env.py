"""One adaptive inference as a two-step Gymnasium episode, for RL libraries (RLlib's PPO).

    reset   draws a training sample and a budget        -> stage 1's input
    step 1  takes (tier, insertion); runs vision and the blocks before stage 2
                                                        -> stage 2's input
    step 2  takes (top_k, num_blocks); runs the rest and decodes
                                                        -> the reward, terminated

The reward is the GRPO path's (`adactrl.reward.compute_reward` on the measured latency, the
answer's score and the plan's complexity), and the episode's last `info` holds its components.
The observation and action spaces come from the model's `KnobSpace`: the action is the four
sub-action indices (tier, insertion, top_k, num_blocks); step 1 reads the first two, step 2
the last two. One observation space serves both steps, `stage` telling which one it is.

The executor runs one inference in one call, asking its plan policy for each stage's choice, so
the episode runs it in a thread of its own that pauses at each stage until the agent acts. The
time it waits for the agent is not the model's: it is taken out of the run's 'controller' and
'total' milliseconds (on the same clock the executor times with, `adactrl.timing.cpu_clock`).
The agent's own forward pass is therefore not in the latency this env reports; `adactrl
evaluate` measures the trained controller with it.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from adactrl.eval.scoring import AnswerScorer
from adactrl.executor import InferenceResult, Stage1Choice, Stage2Choice, execute
from adactrl.knobs import KnobSpace
from adactrl.models.adapter import MoEVLM
from adactrl.reward import Reward, RewardConfig, compute_reward, plan_complexity
from adactrl.timing import cpu_clock
from adactrl.training.records import BudgetRange
from adactrl.training.rollout import LatencyFn, PreparedSample, SampleError, measured_latency, prepare_sample

STAGE = "stage"
"""0 before stage 1 acts, 1 before stage 2 acts."""
LANGUAGE = "language"
"""[d_model] the pooled prompt embedding both stages read."""
BUDGET_MS = "budget_ms"
"""[1] the episode's budget; the policy derives its budget features from it."""
LATENCY_TOKEN = "latency_token"
"""[d_model] the hidden state after the insertion block (zeros before stage 1 acts)."""
INSERTION = "insertion"
"""Index of the chosen insertion position (0 before stage 1 acts)."""

AnswerScore = Callable[[str, PreparedSample], float]
"""(prediction, sample) -> the answer's score in [0, 1]; the default is the sample's dataset metric (AnswerScorer)."""


def observation_space(knob_space: KnobSpace, d_model: int) -> gym.spaces.Dict:
    vector = gym.spaces.Box(-np.inf, np.inf, shape=(d_model,), dtype=np.float32)
    return gym.spaces.Dict({
        STAGE: gym.spaces.Discrete(2),
        LANGUAGE: vector,
        BUDGET_MS: gym.spaces.Box(0.0, np.inf, shape=(1,), dtype=np.float32),
        LATENCY_TOKEN: vector,
        INSERTION: gym.spaces.Discrete(knob_space.sizes[1]),
    })  # fmt: skip


def action_space(knob_space: KnobSpace) -> gym.spaces.MultiDiscrete:
    """(tier, insertion, top_k, num_blocks) indices into the KnobSpace value sets."""
    return gym.spaces.MultiDiscrete(list(knob_space.sizes))


class AdaptiveInferenceEnv(gym.Env):
    """The two-step episode over `split` (rows with image, question, answers) on a frozen model.

    Samples are drawn in a random order that covers the split before repeating (a new order each
    pass, from the env's seed); budgets log-uniformly from `budget_range`, as the GRPO path draws
    them. Rows that cannot be used are skipped and counted in `skipped`. `latency_fn` gives a
    run's latency from its result (the measured one by default; tests pass a cost model).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        model: MoEVLM,
        split: Sequence[dict],
        budget_range: BudgetRange,
        *,
        reward: RewardConfig,
        score: AnswerScore | None = None,
        latency_fn: LatencyFn = measured_latency,
        max_new_tokens: int = 4,
        seed: int = 0,
        device: str = "cpu",
    ) -> None:
        if len(split) < 1:
            raise ValueError("the environment needs at least one training sample")
        self.model = model
        self.knob_space = model.knob_space
        self.split = split
        self.budget_range = budget_range
        self.reward_config = reward
        if score is None:
            scorer = AnswerScorer.for_split(split)  # each row by its dataset's metric, as GRPO's rollouts

            def score(prediction: str, sample: PreparedSample) -> float:
                return scorer(prediction, sample.answers, sample.family)

        self.score = score
        self.latency_fn = latency_fn
        self.max_new_tokens = max_new_tokens
        self.device = device
        self.observation_space = observation_space(self.knob_space, model.hidden_size)
        self.action_space = action_space(self.knob_space)
        self.np_random, _ = gym.utils.seeding.np_random(seed)
        self.skipped = 0
        self._order: list[int] = []
        self._episode: _Episode | None = None
        self._obs: dict[str, Any] = {}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        if seed is not None:
            self._order = []
        self._stop_episode()
        sample = self._next_sample()
        (budget,) = self.budget_range.sample(self.np_random, 1)
        self._episode = _Episode(self.model, sample, budget, self.max_new_tokens, self.device)
        language = self._episode.receive()
        self._obs = {
            STAGE: 0, LANGUAGE: language, BUDGET_MS: np.array([budget], dtype=np.float32),
            LATENCY_TOKEN: np.zeros_like(language), INSERTION: 0,
        }  # fmt: skip
        return dict(self._obs), {"sample_id": sample.sample_id, "budget_ms": budget}

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        if self._episode is None:
            raise RuntimeError("call reset() before step()")
        indices = [int(a) for a in np.asarray(action).reshape(-1)]
        if len(indices) != 4 or not self.action_space.contains(np.array(indices, dtype=self.action_space.dtype)):
            raise ValueError(f"an action is 4 indices within {self.action_space.nvec.tolist()}, got {indices}")
        episode = self._episode
        if self._obs[STAGE] == 0:
            episode.act(indices[0], indices[1])
            self._obs |= {STAGE: 1, LATENCY_TOKEN: episode.receive(), INSERTION: indices[1]}
            return dict(self._obs), 0.0, False, False, {}
        episode.act(indices[2], indices[3])
        result = episode.finish()
        self._episode = None
        reward, info = self._score(episode, result)
        return dict(self._obs), reward.total, True, False, info

    def close(self) -> None:
        self._stop_episode()

    def _score(self, episode: _Episode, result: InferenceResult) -> tuple[Reward, dict[str, Any]]:
        latency = dict(result.latency_ms)
        latency["controller"] = max(0.0, latency["controller"] - episode.waited_ms)
        latency["total"] = max(0.0, latency["total"] - episode.waited_ms)
        latency["total"] = float(self.latency_fn(dataclasses.replace(result, latency_ms=latency)))
        sample = episode.sample
        accuracy = float(self.score(result.answer, sample))
        complexity = plan_complexity(result.plan, self.knob_space)
        reward = compute_reward(accuracy, latency["total"], episode.budget_ms, complexity, self.reward_config)
        info = {"reward": reward, "accuracy": accuracy, "latency_ms": latency, "complexity": complexity,
                "plan": result.plan.name, "sample_id": sample.sample_id, "budget_ms": episode.budget_ms}  # fmt: skip
        return reward, info

    def _next_sample(self) -> PreparedSample:
        for _ in range(len(self.split)):
            if not self._order:
                self._order = [int(i) for i in self.np_random.permutation(len(self.split))]
            try:
                return prepare_sample(self.split, self._order.pop(), self.model)
            except SampleError:
                self.skipped += 1
        raise ValueError(f"none of {len(self.split)} samples drawn in a row could be used ({self.skipped} skipped)")

    def _stop_episode(self) -> None:
        if self._episode is not None:
            self._episode.abort()
            self._episode = None


class _Aborted(Exception):
    """The agent left the episode before it ended (reset or close mid-episode)."""


_ABORT = object()


class _Episode:
    """One `execute` call in a thread of its own; it is the executor's plan policy, and each stage
    hands its input to the agent and waits for the agent's two indices."""

    def __init__(self, model: MoEVLM, sample: PreparedSample, budget_ms: float, max_new_tokens: int,
                 device: str) -> None:  # fmt: skip
        self.space = model.knob_space
        self.sample = sample
        self.budget_ms = float(budget_ms)
        self.waited_ms = 0.0
        """Time the run spent waiting for the agent, on the executor's clock."""
        self._clock = cpu_clock()
        self._to_agent: queue.Queue = queue.Queue()
        self._from_agent: queue.Queue = queue.Queue()
        threads = torch.get_num_threads()  # a new thread starts with torch's default count, not this one's
        self._thread = threading.Thread(
            target=self._run, args=(model, threads, max_new_tokens, device), daemon=True, name="adactrl-episode"
        )
        self._thread.start()

    def stage1(self, language_feature: torch.Tensor) -> Stage1Choice:
        tier, insertion = self._ask(language_feature)
        return Stage1Choice(self.space.tiers[tier], self.space.insertion_positions[insertion])

    def stage2(self, latency_token: torch.Tensor, insertion: int) -> Stage2Choice:
        top_k, num_blocks = self._ask(latency_token)
        return Stage2Choice(self.space.top_k_values[top_k], self.space.num_blocks_values[num_blocks])

    def receive(self) -> np.ndarray:
        """The next stage's input: language feature or latency token, [d_model] float32."""
        kind, value = self._to_agent.get()
        if kind == "error":
            raise value
        assert kind == "input", f"the episode sent {kind} where a stage's input was due"
        return value

    def act(self, first: int, second: int) -> None:
        self._from_agent.put((first, second))

    def finish(self) -> InferenceResult:
        kind, value = self._to_agent.get()
        if kind == "error":
            raise value
        self._thread.join()
        return value

    def abort(self) -> None:
        if self._thread.is_alive():
            self._from_agent.put(_ABORT)
            self._thread.join()

    def _ask(self, stage_input: torch.Tensor) -> tuple[int, int]:
        began = self._clock()
        self._to_agent.put(("input", stage_input.detach().float().cpu().numpy().copy()))
        answer = self._from_agent.get()
        self.waited_ms += (self._clock() - began) * 1000.0
        if answer is _ABORT:
            raise _Aborted
        return answer

    def _run(self, model: MoEVLM, threads: int, max_new_tokens: int, device: str) -> None:
        torch.set_num_threads(threads)
        try:
            result = execute(model, self.sample.image, self.sample.question, self, max_new_tokens=max_new_tokens,
                             device=device)  # fmt: skip
        except _Aborted:
            return
        except Exception as err:  # raised again in the agent's thread, where it can be handled
            self._to_agent.put(("error", err))
            return
        self._to_agent.put(("done", result))
