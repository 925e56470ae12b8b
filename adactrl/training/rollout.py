"""Rollouts without Ray: load a split, prepare a sample, run a sampled or greedy plan, score it.

The worker (rollout_workers/) composes these; they hold no state of their own, so a unit test
or a benchmark calls them directly.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import datasets
import torch
from PIL import Image

from adactrl.baselines.estimator import EstimatedLatency
from adactrl.controller import Controller
from adactrl.controller.adaptive import AdaptiveResult, adaptive_infer
from adactrl.data import load_vqa_dataset
from adactrl.eval.scoring import AnswerScorer
from adactrl.executor import InferenceResult, StaticPolicy, execute
from adactrl.knobs import KnobSpace, Plan
from adactrl.models.adapter import MoEVLM
from adactrl.models.preprocessing import to_rgb
from adactrl.reward import Reward, RewardConfig, compute_reward, plan_complexity
from adactrl.training.config import ESTIMATOR_HINT
from adactrl.training.records import ESTIMATED_TOTAL, MEASURED_TOTAL

LatencyFn = Callable[[InferenceResult], float]
"""The latency of a run: the measured end-to-end time by default (a test may put a deterministic
cost model in its place), or the estimate of `EstimatedRunLatency`."""


def measured_latency(result: InferenceResult) -> float:
    return result.total_ms


class EstimatedRunLatency:
    """`--latency_mode estimated`: a run's latency as the estimator's stage total (from the plan
    and the run's token counts) plus the run's measured controller time."""

    def __init__(self, estimated: EstimatedLatency) -> None:
        self.estimated = estimated

    @classmethod
    def load(cls, path: str | os.PathLike, knob_space: KnobSpace) -> EstimatedRunLatency:
        """The estimator at `path`, checked against the model's KnobSpace; the errors say what to do."""
        try:
            return cls(EstimatedLatency.load(path, expected_knob_space=knob_space))
        except FileNotFoundError as err:
            raise FileNotFoundError(f"--latency_estimator: {err}; {ESTIMATOR_HINT}") from err
        except ValueError as err:
            raise ValueError(f"--latency_estimator: {err}; {ESTIMATOR_HINT}") from err

    def __call__(self, result: InferenceResult) -> float:
        est = self.estimated.latency_ms(result.plan, result.num_image_tokens, result.num_prompt_tokens,
                                        len(result.token_ids))  # fmt: skip
        return est["total"] + result.latency_ms["controller"]


VQA_SCORER = AnswerScorer([], [])
"""Scores VQA rows; a split with captions needs its own `AnswerScorer.for_split`."""


class SampleError(ValueError):
    """A sample that cannot be used; the worker skips and counts it."""


@dataclass(frozen=True)
class PreparedSample:
    sample_id: int
    image: Image.Image
    question: str
    answers: tuple[str, ...]
    family: str = ""
    """The row's family, which names its dataset and so its metric (adactrl.data.metric_for_family)."""


@dataclass(frozen=True)
class PlanOutcome:
    """One run of one plan at one budget, scored."""

    actions: tuple[int, int, int, int]
    log_prob: float
    result: InferenceResult
    accuracy: float
    latency_ms: dict[str, float]
    """The run's stage times with 'total' as the latency the reward used; with an estimate, also
    ESTIMATED_TOTAL and MEASURED_TOTAL."""
    complexity: float
    """`plan_complexity` of the plan that ran."""
    reward: Reward

    @property
    def total_ms(self) -> float:
        return self.latency_ms["total"]


def load_split(
    dataset_names: Sequence[str], split: str, num_samples: int, seed: int, *, data_dir: str | None = None
) -> datasets.Dataset:
    """`num_samples` rows of `split` from each dataset, concatenated in the given order; the real
    datasets are read from `data_dir` when given (adactrl.data.load_vqa_dataset)."""
    parts = [load_vqa_dataset(name, split, num_samples, seed, data_dir=data_dir) for name in dataset_names]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def prepare_sample(dataset: Sequence[dict], index: int, model: MoEVLM) -> PreparedSample:
    """Decode row `index` and check that it can be run and scored; SampleError says why not."""
    try:
        row = dataset[index]
        image = to_rgb(row["image"])
        answers = tuple(str(a) for a in row["answers"] or ())
        question = str(row["question"])
        model.tokenize(question)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise SampleError(f"sample {index}: {type(err).__name__}: {err}") from err
    if not answers or not any(a.strip() for a in answers):
        raise SampleError(f"sample {index}: no annotator answers to score against")
    return PreparedSample(index, image, question, answers, str(row.get("family", "")))


def run_controller_plan(
    model: MoEVLM,
    controller: Controller,
    sample: PreparedSample,
    budget_ms: float,
    *,
    greedy: bool,
    generator: torch.Generator | None,
    reward_config: RewardConfig,
    latency_fn: LatencyFn = measured_latency,
    estimate_fn: LatencyFn | None = None,
    reward_on_estimate: bool = False,
    scorer: AnswerScorer | None = None,
    max_new_tokens: int = 4,
    device: str = "cpu",
) -> PlanOutcome:
    """One adaptive inference (sampled, or greedy for validation), scored with the shared reward.

    The answer is scored by `scorer` (the split's AnswerScorer; captions need one) or, without
    one, by the VQA score. latency_fn gives the run's measured latency. With an `estimate_fn` the outcome's latency_ms
    keeps both (ESTIMATED_TOTAL, MEASURED_TOTAL), and the reward (and 'total') uses the estimate
    when `reward_on_estimate`, the measurement otherwise.
    """
    out = adaptive_infer(
        model, controller, sample.image, sample.question, budget_ms,
        greedy=greedy, generator=generator, max_new_tokens=max_new_tokens, device=device,
    )  # fmt: skip
    return score_outcome(model, sample, out, reward_config, latency_fn=latency_fn, estimate_fn=estimate_fn,
                         reward_on_estimate=reward_on_estimate, scorer=scorer)  # fmt: skip


def score_outcome(
    model: MoEVLM,
    sample: PreparedSample,
    out: AdaptiveResult,
    reward_config: RewardConfig,
    *,
    latency_fn: LatencyFn = measured_latency,
    estimate_fn: LatencyFn | None = None,
    reward_on_estimate: bool = False,
    scorer: AnswerScorer | None = None,
) -> PlanOutcome:
    """A run's answer scored and its reward computed, on the latency `run_controller_plan` describes
    (the worker scores shared-stage runs, `adaptive_infer_group`'s, with it too)."""
    measured = float(latency_fn(out.result))
    latency = dict(out.result.latency_ms) | {"total": measured}
    if estimate_fn is not None:
        estimated = float(estimate_fn(out.result))
        latency |= {ESTIMATED_TOTAL: estimated, MEASURED_TOTAL: measured}
        latency["total"] = estimated if reward_on_estimate else measured
    accuracy = (scorer or VQA_SCORER)(out.result.answer, sample.answers, sample.family)
    complexity = plan_complexity(out.result.plan, model.knob_space)
    reward = compute_reward(accuracy, latency["total"], out.budget_ms, complexity, reward_config)
    return PlanOutcome(out.actions, out.log_prob, out.result, accuracy, latency, complexity, reward)


def request_overhead_ms(
    model: MoEVLM, sample: PreparedSample, *, runs: int = 3, max_new_tokens: int = 4, device: str = "cpu"
) -> float:
    """The bookkeeping between an end-to-end run's timed stages (`InferenceResult.overhead_ms`), the
    median over `runs` runs of the full static plan after one warm-up: what the shared-stage path
    adds to each plan's composed total."""
    policy = StaticPolicy(model.knob_space.full_plan(model.importance))
    runs_ms = [execute(model, sample.image, sample.question, policy, max_new_tokens=max_new_tokens,
                       device=device).overhead_ms for _ in range(runs + 1)]  # fmt: skip
    return statistics.median(runs_ms[1:])


def run_static_plan(
    model: MoEVLM,
    sample: PreparedSample,
    plan: Plan,
    *,
    latency_fn: LatencyFn = measured_latency,
    max_new_tokens: int = 4,
    device: str = "cpu",
) -> float:
    """The latency of one static plan on one sample (calibration)."""
    result = execute(model, sample.image, sample.question, StaticPolicy(plan), max_new_tokens=max_new_tokens, device=device)
    return float(latency_fn(result))

