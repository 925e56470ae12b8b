"""One model replica's work, without Ray: the frozen model, the controller, and the cheapest
plan's latency measured where the replica runs."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import torch

from adactrl.controller import Controller
from adactrl.controller.adaptive import adaptive_infer
from adactrl.executor import InferenceResult, StaticPolicy, execute
from adactrl.models.adapter import MoEVLM
from adactrl.serving.budget import CHEAPEST, CONTROLLER, REJECTED, Admission, admit
from adactrl.serving.config import ServeConfig
from adactrl.serving.requests import InferRequest, RequestError
from adactrl.training.records import CALIBRATION_QUANTILE, nearest_rank


RECENT_RUNS = 20
MIN_RECENT_RUNS = 5


@dataclass(frozen=True)
class ServeOutcome:
    """What a replica sends back for one request (plain values: it crosses a process boundary)."""

    admission: Admission
    queue_ms: float
    """From the request's arrival at the HTTP ingress until the replica took it up."""
    cheapest_ms: float
    answer: str = ""
    knobs: dict | None = None
    """The plan that ran (Plan.to_dict()); None when the request was refused."""
    stages_ms: dict[str, float] | None = None
    """Model time per stage (executor.STAGES)."""
    model_ms: float = 0.0
    """Model time end to end (controller included), as the executor measured it."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    image_tokens: int = 0

    @property
    def rejected(self) -> bool:
        return self.admission.plan == REJECTED


class ServingEngine:
    """Answers checked requests under what is left of their budgets (adactrl.serving.budget)."""

    def __init__(
        self,
        model: MoEVLM,
        controller: Controller,
        *,
        max_new_tokens: int = 4,
        device: str = "cpu",
        calibration_runs: int = 8,
    ) -> None:
        self.model = model
        self.controller = controller.to(device).eval()
        self.max_new_tokens = max_new_tokens
        self.device = device
        space = model.knob_space
        self.cheapest = space.plan(space.tiers[0], space.insertion_positions[0], space.top_k_values[0],
                                   space.num_blocks_values[0], model.importance)  # fmt: skip
        self.calibrated_ms = self.calibrate(calibration_runs)
        self.recent_cheapest: deque[float] = deque(maxlen=RECENT_RUNS)
        """The latest runs of the cheapest plan while serving: under load they take longer than at start."""
        self.trained_low_ms = float(self.controller.budget_encoder.range_ms[0])
        """The lowest budget of the controller's training range: below it the cheapest plan runs."""

    @classmethod
    def load(cls, config: ServeConfig) -> ServingEngine:
        """The model and controller a replica of `config` serves, on its device and threads."""
        from adactrl.controller import load_controller
        from adactrl.models import load_model

        device = config.replica_device
        model = load_model(config.model_path, device=device)
        controller, extra = load_controller(config.controller, expected_knob_space=model.knob_space,
                                            expected_d_model=model.hidden_size, map_location=device)  # fmt: skip
        # The checkpoint's milliseconds belong to the thread count its training calibrated with.
        stored = (extra.get("budget_range") or {}).get("num_threads")
        torch.set_num_threads(config.num_threads or stored or max(1, int(config.replica_cpus)))
        return cls(model, controller, max_new_tokens=config.max_new_tokens, device=device,
                   calibration_runs=config.calibration_runs)  # fmt: skip

    @property
    def cheapest_ms(self) -> float:
        """What the cheapest plan takes now: the calibrated p95, or the p95 of its recent runs when
        the machine has slowed since (a load the replica's own requests and its neighbours make)."""
        if len(self.recent_cheapest) < MIN_RECENT_RUNS:
            return self.calibrated_ms
        return max(self.calibrated_ms, nearest_rank(list(self.recent_cheapest), CALIBRATION_QUANTILE))

    def calibrate(self, runs: int, max_rounds: int = 4, agreement: float = 0.25) -> float:
        """p95 of the cheapest plan's latency over `runs` timed runs of a synthetic question, after
        one untimed run of it and one of the controller (first calls pay one-off costs). Rounds of
        `runs` repeat until two in a row agree within `agreement` (at most `max_rounds`), and the
        last is kept: a replica starts while Ray is still starting worker processes beside it, and
        a round timed then would set the refusal threshold too high for the replica's lifetime."""
        from adactrl.data import load_vqa_dataset

        row = load_vqa_dataset("synthetic", "validation", 1, seed=0)[0]
        kwargs = {"max_new_tokens": self.max_new_tokens, "device": self.device}
        adaptive_infer(self.model, self.controller, row["image"], row["question"], 1000.0, **kwargs)
        self._run_cheapest(row["image"], row["question"], self.max_new_tokens)
        previous = None
        for _ in range(max_rounds):
            times = [self._run_cheapest(row["image"], row["question"], self.max_new_tokens).total_ms for _ in range(runs)]
            p95 = nearest_rank(times, CALIBRATION_QUANTILE)
            if previous is not None and abs(p95 - previous) <= agreement * min(p95, previous):
                break
            previous = p95
        return p95

    def answer(self, request: InferRequest, arrived_s: float, reserve_ms: float = 0.0) -> ServeOutcome:
        """Run `request`, which arrived at `arrived_s` (time.time(), on the ingress's clock), with
        what is left of its budget less `reserve_ms` (the hand-off back to the client, measured by
        the ingress); refused at once, without model time, when too little is left."""
        waited_ms = max(0.0, (time.time() - arrived_s) * 1000.0)
        admission = admit(request.budget_ms, waited_ms + reserve_ms, self.cheapest_ms, request.best_effort)
        if admission.plan == REJECTED:
            return ServeOutcome(admission, waited_ms, self.cheapest_ms)
        if admission.plan == CONTROLLER and admission.remaining_ms < self.trained_low_ms:
            admission = Admission(CHEAPEST, admission.remaining_ms)  # below any budget it learned
        tokens = min(request.max_new_tokens or self.max_new_tokens, self.max_new_tokens)
        try:
            if admission.plan == CHEAPEST:
                result = self._run_cheapest(request.image, request.prompt, tokens)
                self.recent_cheapest.append(result.total_ms)
            else:
                result = adaptive_infer(self.model, self.controller, request.image, request.prompt,
                                        admission.remaining_ms, max_new_tokens=tokens, device=self.device).result  # fmt: skip
        except ValueError as err:  # the model refuses the prompt: an unknown word, too long for its context
            raise RequestError(str(err)) from None
        stages = {k: round(v, 3) for k, v in result.latency_ms.items() if k != "total"}
        return ServeOutcome(admission, waited_ms, self.cheapest_ms, result.answer, result.plan.to_dict(), stages,
                            result.total_ms, result.num_prompt_tokens, len(result.token_ids),
                            result.num_image_tokens)  # fmt: skip

    def _run_cheapest(self, image, prompt: str, max_new_tokens: int) -> InferenceResult:
        return execute(self.model, image, prompt, StaticPolicy(self.cheapest), max_new_tokens=max_new_tokens,
                       device=self.device)  # fmt: skip
