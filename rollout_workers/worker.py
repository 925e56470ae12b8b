"""The rollout worker: a plain class; the orchestration layer applies `ray.remote` where it creates one.

It builds its model, its controller copy and its data splits locally from a `WorkerConfig`,
so requests carry only sample indices and budgets. Plans are sampled with a generator seeded
by the request, so a re-issued request (after a worker restart) samples the same plans.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from adactrl.controller import Controller
from adactrl.controller.adaptive import AdaptiveResult, adaptive_infer, adaptive_infer_group
from adactrl.eval.scoring import AnswerScorer
from adactrl.models import load_model as load_frozen_model
from adactrl.models.adapter import MoEVLM
from adactrl.models.importance import load_importance_scores
from adactrl.profiling import SweepRecord, sweep
from adactrl.training.config import WorkerConfig
from adactrl.training.records import (
    CHECKED_TOTAL,
    COMPOSED_TOTAL,
    CalibrationResult,
    EvalBatch,
    EvalRecord,
    EvalRequest,
    RolloutBatch,
    RolloutRecord,
    RolloutRequest,
    SkippedSample,
    WeightsRef,
)
from adactrl.training.rollout import (
    EstimatedRunLatency,
    LatencyFn,
    PlanOutcome,
    PreparedSample,
    SampleError,
    load_split,
    measured_latency,
    prepare_sample,
    request_overhead_ms,
    run_controller_plan,
    run_static_plan,
    score_outcome,
)

WARMUP_RUNS = 2


@dataclass(frozen=True)
class RolloutReceipt:
    """A finished rollout request, without its records."""

    epoch: int
    request_id: int
    worker_index: int
    policy_version: int
    num_records: int

    @classmethod
    def of(cls, batch: RolloutBatch) -> RolloutReceipt:
        return cls(batch.epoch, batch.request_id, batch.worker_index, batch.policy_version, len(batch.records))


def load_model(model_path: str | None, importance_scores_file: str | None, device: str = "cpu") -> MoEVLM:
    """The frozen model (embedded or MolmoE: `adactrl.models.load_model` tells which from the
    directory's config.json), with importance scores from a file when one is given."""
    model = load_frozen_model(model_path, device=device)
    if importance_scores_file is not None:
        model.importance = load_importance_scores(importance_scores_file, model.knob_space.num_layers)
    return model


class RolloutWorker:
    """`latency_fn` is the measured latency of a run. With `config.latency_mode` "estimated" the
    worker loads the latency estimator once; training rollouts and calibration then use the
    estimate, validation the measurement, and every record keeps both."""

    def __init__(self, config: WorkerConfig, worker_index: int, *, latency_fn: LatencyFn = measured_latency) -> None:
        torch.set_num_threads(config.num_threads)
        torch.manual_seed(config.data.seed + worker_index)
        self.config = config
        self.worker_index = worker_index
        self.latency_fn = latency_fn
        self.device = config.device
        self.model = load_model(config.model_path, config.importance_scores_file, self.device).to(self.device)
        self.estimate_fn: EstimatedRunLatency | None = None
        if config.latency_mode == "estimated":
            assert config.latency_estimator is not None, "TrainConfig checks that estimated mode has a path"
            self.estimate_fn = EstimatedRunLatency.load(config.latency_estimator, self.model.knob_space)
        self.reward_latency_fn: LatencyFn = self.estimate_fn or latency_fn
        """The latency of the training reward and of the budget calibration."""
        self.controller = Controller(config.controller, self.model.knob_space).to(self.device).eval()
        self.version = -1
        """No weights yet: the driver sends the learner's before the first request."""
        self.overhead_ms: float | None = None
        """The request overhead added to each shared-stage plan: measured before the first such request."""
        data = config.data
        self.splits = {
            "train": load_split(data.dataset_names, "train", data.num_train_samples, data.seed, data_dir=data.data_dir),
            "validation": load_split(data.dataset_names, "validation", data.num_val_samples, data.seed,
                                     data_dir=data.data_dir),  # fmt: skip
        }
        self.scorers = {name: AnswerScorer.for_split(split) for name, split in self.splits.items()}
        """Each split's answers scored by their dataset's metric (CIDEr-D over the split's captions)."""

    def ping(self) -> int:
        """The worker's process id (tests and the driver use it to see a restart)."""
        return os.getpid()

    def split_sizes(self) -> dict[str, int]:
        return {name: len(split) for name, split in self.splits.items()}

    def load_weights(self, version: int, state: dict[str, torch.Tensor | np.ndarray]) -> int:
        """Always loads (a version number alone does not say which weights a worker holds: a
        restarted learner publishes its versions again, a restarted worker holds none). Under Ray
        the state comes as numpy arrays, read from the object store without a copy."""
        self.controller.load_state_dict({k: v if isinstance(v, torch.Tensor) else torch.tensor(v)
                                         for k, v in state.items()})  # fmt: skip
        self.version = version
        return self.version

    def current_weights(self) -> WeightsRef:
        """The version and controller state this worker holds (to check a broadcast arrived)."""
        return WeightsRef(self.version, {k: v.detach().cpu().clone() for k, v in self.controller.state_dict().items()})

    def rollout(self, request: RolloutRequest) -> RolloutBatch:
        """group_size sampled plans per (sample, budget) pair, each run, measured and scored.

        Each plan samples with its own generator, seeded by (request seed, entry, position in its
        group), so both rollout modes run the same plans. "shared" runs all of a sample's plans,
        across its budgets, through the shared-stage path (docs/shared-rollouts.md); "per_plan"
        runs each from scratch."""
        self._check_version(request.policy_version)
        began = time.perf_counter()
        records, skipped = [], []
        for index, entries in _entries_by_sample(request.sample_indices):
            sample = self._prepare("train", index, skipped)
            if sample is None:
                continue
            plans = [(request.budgets_ms[e], self._plan_generator(request.seed, e, g))
                     for e in entries for g in range(request.group_size)]  # fmt: skip
            if request.rollout_mode == "shared":
                outcomes = self._run_shared(sample, plans, request, first=len(records))
            else:
                outcomes = [self._run_sampled(sample, budget, generator) for budget, generator in plans]
            records.extend(
                RolloutRecord(
                    sample_id=index, budget_ms=budget, actions=out.actions, old_logp=out.log_prob,
                    language_feature=out.result.language_feature.float().cpu().numpy(),
                    latency_token=out.result.latency_token.float().cpu().numpy(),
                    accuracy=out.accuracy, latency_ms=out.latency_ms, reward=out.reward,
                    policy_version=self.version, worker_index=self.worker_index, complexity=out.complexity,
                    family=sample.family,
                )  # fmt: skip
                for (budget, _), out in zip(plans, outcomes)
            )
        return RolloutBatch(
            epoch=request.epoch, request_id=request.request_id, records=tuple(records), skipped=tuple(skipped),
            policy_version=self.version, worker_index=self.worker_index, rollout_s=time.perf_counter() - began,
        )  # fmt: skip

    def _plan_generator(self, seed: int, entry: int, position: int) -> torch.Generator:
        plan_seed = int(np.random.SeedSequence([seed, entry, position]).generate_state(1)[0])
        return torch.Generator(device=self.device).manual_seed(plan_seed)

    def _run_sampled(self, sample: PreparedSample, budget: float, generator: torch.Generator) -> PlanOutcome:
        """One sampled plan run end to end."""
        out = adaptive_infer(
            self.model, self.controller, sample.image, sample.question, budget, greedy=False, generator=generator,
            max_new_tokens=self.config.max_new_tokens, device=self.device,
        )  # fmt: skip
        return self._score(sample, out)

    def _score(self, sample: PreparedSample, out: AdaptiveResult) -> PlanOutcome:
        """A training run scored: the reward on the estimate in estimated mode, else the measurement."""
        return score_outcome(
            self.model, sample, out, self.config.reward, latency_fn=self.latency_fn, estimate_fn=self.estimate_fn,
            reward_on_estimate=True, scorer=self.scorers["train"],
        )  # fmt: skip

    def _run_shared(
        self, sample: PreparedSample, plans: list[tuple[float, torch.Generator]], request: RolloutRequest, first: int
    ) -> list[PlanOutcome]:
        """A sample's plans through the shared-stage path. With `composition_check_every` N, the
        request's plans numbered n (from `first`) with (n + request_id) % N == 0 also run end to end
        from a generator seeded alike: the record keeps that run's total (CHECKED_TOTAL) beside the
        composed one (COMPOSED_TOTAL)."""
        if self.overhead_ms is None:
            self.overhead_ms = request_overhead_ms(self.model, sample, max_new_tokens=self.config.max_new_tokens,
                                                   device=self.device)  # fmt: skip
        seeds = [generator.initial_seed() for _, generator in plans]
        outs = adaptive_infer_group(
            self.model, self.controller, sample.image, sample.question, plans, overhead_ms=self.overhead_ms,
            max_new_tokens=self.config.max_new_tokens, device=self.device,
        )  # fmt: skip
        outcomes = [self._score(sample, out) for out in outs]
        every = request.composition_check_every
        for n, ((budget, _), seed, out) in enumerate(zip(plans, seeds, outcomes), start=first):
            if every and (n + request.request_id) % every == 0:
                generator = torch.Generator(device=self.device).manual_seed(seed)
                alone = self._run_sampled(sample, budget, generator)
                if alone.actions != out.actions:
                    raise RuntimeError(f"sample {sample.sample_id}: the end-to-end check sampled {alone.actions} "
                                       f"where the shared path sampled {out.actions} from the same seed")  # fmt: skip
                out.latency_ms[COMPOSED_TOTAL] = out.result.total_ms
                out.latency_ms[CHECKED_TOTAL] = alone.result.total_ms
        return outcomes

    def rollout_with_receipt(
        self, request: RolloutRequest, version: int | None = None, state: dict[str, torch.Tensor] | None = None
    ) -> tuple[RolloutReceipt, RolloutBatch]:
        """Load (version, state) when given, then `rollout`, and a receipt for it. Under Ray the two
        come back as two objects: the driver reads the receipt (a small record: it learns the request
        is done) and hands the batch's ref to the learner, which fetches the records itself. Under Ray
        the weights come with every call, their object-store ref resolved before it runs: a call
        finds them whatever happened to this worker since the last one (Ray may have restarted it,
        and may run an actor's calls out of order while one of them waits for an argument)."""
        if state is not None:
            self.load_weights(version, state)
        batch = self.rollout(request)
        return RolloutReceipt.of(batch), batch

    def evaluate(
        self, request: EvalRequest, version: int | None = None, state: dict[str, torch.Tensor] | None = None
    ) -> EvalBatch:
        """The greedy policy on validation samples, at every budget of the request, scored on the
        measured latency (with an estimator the records keep its estimate too). Loads (version,
        state) first when given, as `rollout_with_receipt` does."""
        if state is not None:
            self.load_weights(version, state)
        self._check_version(request.policy_version)
        records, skipped = [], []
        for index in request.sample_indices:
            sample = self._prepare("validation", index, skipped)
            if sample is None:
                continue
            for budget in request.budgets_ms:
                out = run_controller_plan(
                    self.model, self.controller, sample, budget, greedy=True, generator=None,
                    reward_config=self.config.reward, latency_fn=self.latency_fn, estimate_fn=self.estimate_fn,
                    scorer=self.scorers["validation"], max_new_tokens=self.config.max_new_tokens, device=self.device,
                )  # fmt: skip
                records.append(
                    EvalRecord(
                        sample_id=index, budget_ms=budget, knobs=out.result.plan.knobs, accuracy=out.accuracy,
                        latency_ms=out.latency_ms, complexity=out.complexity, reward=out.reward,
                        policy_version=self.version, family=sample.family,
                    )  # fmt: skip
                )
        return EvalBatch(tuple(records), tuple(skipped), self.version, self.worker_index)

    def calibrate(self, sample_indices: tuple[int, ...]) -> CalibrationResult:
        """Latencies of the cheapest and the full static plan, after warm-up, interleaved per sample:
        the training reward's latency (estimated in estimated mode), so budgets share its scale."""
        space, importance = self.model.knob_space, self.model.importance
        cheapest = space.plan(
            space.tiers[0], space.insertion_positions[0], space.top_k_values[0], space.num_blocks_values[0], importance
        )
        full = space.full_plan(importance)
        samples = [s for i in sample_indices if (s := self._prepare("train", i, [])) is not None]
        if not samples:
            raise ValueError(f"worker {self.worker_index}: none of the calibration samples {sample_indices} is usable")
        kwargs = {"latency_fn": self.reward_latency_fn, "max_new_tokens": self.config.max_new_tokens,
                  "device": self.device}  # fmt: skip
        for _ in range(WARMUP_RUNS):
            run_static_plan(self.model, samples[0], full, **kwargs)
        cheap_ms, full_ms = [], []
        for sample in samples:
            cheap_ms.append(run_static_plan(self.model, sample, cheapest, **kwargs))
            full_ms.append(run_static_plan(self.model, sample, full, **kwargs))
        return CalibrationResult(tuple(cheap_ms), tuple(full_ms), self.worker_index, torch.get_num_threads(),
                                 self.device)  # fmt: skip

    def sweep(self, sample_indices: tuple[int, ...]) -> list[SweepRecord]:
        """Every static plan on the given validation samples (the Pareto oracle's data)."""
        rows = []
        for index in sample_indices:
            sample = self._prepare("validation", index, [])
            if sample is not None:
                rows.append({"image": sample.image, "question": sample.question, "answers": sample.answers,
                             "question_id": index, "family": sample.family})
        if not rows:
            return []
        plans = self.model.knob_space.static_plans(self.model.importance)
        return sweep(self.model, rows, plans, max_new_tokens=self.config.max_new_tokens, device=self.device,
                     scorer=self.scorers["validation"])  # fmt: skip

    def _check_version(self, wanted: int) -> None:
        if self.version != wanted:
            raise RuntimeError(
                f"worker {self.worker_index} holds policy version {self.version} but the request needs "
                f"{wanted}: send the weights (load_weights) before the request"
            )

    def _prepare(self, split: str, index: int, skipped: list[SkippedSample]) -> PreparedSample | None:
        try:
            return prepare_sample(self.splits[split], index, self.model)
        except SampleError as err:
            skipped.append(SkippedSample(index, str(err)))
            return None


def _entries_by_sample(sample_indices: tuple[int, ...]) -> list[tuple[int, list[int]]]:
    """(sample index, the request's entries for it) in order of first appearance: a sample's budgets
    come together, so the shared-stage path serves them all from one prefix."""
    entries: dict[int, list[int]] = {}
    for entry, index in enumerate(sample_indices):
        entries.setdefault(index, []).append(entry)
    return list(entries.items())
