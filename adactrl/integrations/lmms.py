"""The budgeted model as an lmms-eval model, so that lmms-eval's own task definitions and metrics
judge it:

    pip install 'adactrl[lmms]'
    lmms-eval --model adactrl \\
        --model_args model_path=DIR,controller=outputs/train/best_model.pt,budget_ms=200 --tasks textvqa_val

lmms-eval finds the model through the `lmms_eval.models` entry point in pyproject.toml
(`adactrl = "adactrl.integrations.lmms:manifest"`), which its model registry reads on import.
Each request is one greedy adaptive inference (`adaptive_infer`) at `budget_ms`, at batch size 1
and measured, as the controller method of `adactrl evaluate` runs it; the answer is cut at the
task's `until` strings. The requests' latencies and misses are logged (logger `adactrl.lmms`).

Only `LmmsModel` needs lmms-eval: it subclasses `lmms_eval.api.model.lmms` and is built when
lmms-eval first asks for it (the module's `__getattr__`). So this module imports without
lmms-eval, and `BudgetedAnswerer`, which does the answering, is tested without it.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

MODEL_ID = "adactrl"
CLASS_NAME = "LmmsModel"
LMMS_SETTINGS = frozenset({"batch_size", "max_batch_size"})
"""What lmms-eval passes every model besides --model_args (and `device`, which LmmsArgs has)."""

log = logging.getLogger("adactrl.lmms")


@dataclass(frozen=True)
class LmmsArgs:
    """`--model_args` of `lmms-eval --model adactrl` (key=value pairs, comma-separated)."""

    budget_ms: float
    """Latency budget of every request, in milliseconds on this machine."""
    controller: str | None = None
    """Controller checkpoint (best_model.pt of `adactrl train`); None: an untrained one (`seed`)."""
    model_path: str | None = None
    """Model directory, embedded or MolmoE-1B; None: the shipped embedded model."""
    max_new_tokens: int = 16
    """Answer tokens at most, unless the task's generation_kwargs set max_new_tokens."""
    device: str = "cpu"
    num_threads: int | None = None
    """torch CPU threads (None: the checkpoint's calibration threads, else torch's default)."""
    warmup: int = 1
    """Untimed runs of the first request, so the cold start is not measured against its budget."""
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.budget_ms, int | float) and math.isfinite(self.budget_ms) and self.budget_ms > 0):
            raise ValueError(f"budget_ms must be a number of milliseconds above 0, got {self.budget_ms!r}")
        if self.max_new_tokens < 1 or self.warmup < 0:
            raise ValueError(f"max_new_tokens must be >= 1 and warmup >= 0, got {self.max_new_tokens}, {self.warmup}")

    @classmethod
    def parse(cls, values: Mapping[str, Any]) -> LmmsArgs:
        """From lmms-eval's parsed --model_args (numbers already converted) and its extra settings."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known - LMMS_SETTINGS)
        if unknown:
            raise ValueError(f"--model_args: unknown keys {unknown} for the adactrl model; it takes {sorted(known)}")
        if "budget_ms" not in values:
            raise ValueError("--model_args needs budget_ms=MS (the latency budget of every request), e.g. "
                             "model_path=DIR,controller=best_model.pt,budget_ms=200")  # fmt: skip
        batch = values.get("batch_size")
        if batch not in (None, 1, "1"):
            raise ValueError(f"--batch_size {batch}: the adactrl model measures each request alone; use --batch_size 1")
        return cls(**{k: v for k, v in values.items() if k in known and v is not None})


@dataclass(frozen=True)
class BudgetedAnswer:
    """One request's answer, its plan and its measured latency."""

    text: str
    plan: str
    latency_ms: float
    budget_ms: float

    @property
    def met(self) -> bool:
        return self.latency_ms <= self.budget_ms


def cut_at_stops(text: str, until: Sequence[str]) -> str:
    """`text` up to the first of the stop strings ("Paris ASSISTANT: x", ["ASSISTANT:"] -> "Paris")."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text.strip()


@dataclass
class BudgetedAnswerer:
    """The model and the controller answering lmms-eval's generation requests under one budget."""

    args: LmmsArgs
    answers: list[BudgetedAnswer] = field(default_factory=list)

    def __post_init__(self) -> None:
        import torch

        from adactrl.controller import Controller, ControllerConfig, load_controller
        from adactrl.models import load_model

        self.model = load_model(self.args.model_path, device=self.args.device)
        space, d_model = self.model.knob_space, self.model.hidden_size
        extra: dict = {}
        if self.args.controller is not None:
            self.controller, extra = load_controller(self.args.controller, expected_knob_space=space,
                                                     expected_d_model=d_model, map_location=self.args.device)  # fmt: skip
        else:
            log.warning("no controller= in --model_args: an untrained controller (seed %d) picks the plans", self.args.seed)
            self.controller = Controller(ControllerConfig(d_model=d_model, seed=self.args.seed), space)
        self.controller.to(self.args.device).eval()
        threads = self.args.num_threads or (extra.get("budget_range") or {}).get("num_threads")
        if threads:
            torch.set_num_threads(int(threads))
        self._warm = self.args.warmup == 0

    def answer(
        self, image: Any, prompt: str, *, until: Sequence[str] = (), max_new_tokens: int | None = None
    ) -> BudgetedAnswer:
        """One greedy adaptive inference at the budget, timed; the first request is run `warmup` times untimed first."""
        from adactrl.controller.adaptive import adaptive_infer
        from adactrl.models.preprocessing import to_rgb

        image = to_rgb(image)
        kwargs = {"max_new_tokens": max_new_tokens or self.args.max_new_tokens, "device": self.args.device}
        for _ in range(0 if self._warm else self.args.warmup):
            adaptive_infer(self.model, self.controller, image, prompt, self.args.budget_ms, **kwargs)
        self._warm = True
        out = adaptive_infer(self.model, self.controller, image, prompt, self.args.budget_ms, **kwargs)
        answer = BudgetedAnswer(cut_at_stops(out.result.answer, until), out.result.plan.name, out.result.total_ms,
                                self.args.budget_ms)  # fmt: skip
        self.answers.append(answer)
        return answer

    def generate_until(self, requests: Sequence[Any], task_dict: Mapping[str, Any]) -> list[str]:
        """lmms-eval's generate_until: each request's `args` are (context, generation_kwargs,
        doc_to_visual, doc_id, task, split); the document is `task_dict[task][split][doc_id]`."""
        from PIL import Image

        texts = []
        for request in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            visuals = doc_to_visual(task_dict[task][split][doc_id])
            images = [v for v in (visuals if isinstance(visuals, list) else [visuals]) if isinstance(v, Image.Image)]
            if len(images) != 1:
                raise ValueError(f"task {task}: document {doc_id} has {len(images)} images; the adactrl model answers "
                                 "questions about exactly one image (VQA and captioning tasks)")  # fmt: skip
            until = gen_kwargs.get("until") or ()
            answer = self.answer(images[0], context, until=[until] if isinstance(until, str) else until,
                                 max_new_tokens=gen_kwargs.get("max_new_tokens"))  # fmt: skip
            texts.append(answer.text)
        if self.answers:
            log.info("%d requests at budget %.1f ms: mean latency %.2f ms, %d missed the budget",
                     len(self.answers), self.args.budget_ms, statistics.fmean(a.latency_ms for a in self.answers),
                     sum(not a.met for a in self.answers))  # fmt: skip
        return texts


def _lmms_model_class() -> type:
    from lmms_eval.api.model import lmms

    class LmmsModel(lmms):
        """`lmms-eval --model adactrl`: generation tasks only (VQA, captions)."""

        is_simple = True

        def __init__(self, **model_args: Any) -> None:
            super().__init__()
            if not log.handlers:  # lmms-eval logs through loguru: show the budget summary beside its output
                handler = logging.StreamHandler()
                handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
                log.addHandler(handler)
                log.setLevel(logging.INFO)
            self.answerer = BudgetedAnswerer(LmmsArgs.parse(model_args))

        def generate_until(self, requests: list) -> list[str]:
            texts = self.answerer.generate_until(requests, self.task_dict)
            for request, text in zip(requests, texts):
                self.cache_hook.add_partial("generate_until", request.args[:2], text)
            return texts

        def loglikelihood(self, requests: list) -> list:
            raise NotImplementedError("the adactrl model generates answers; choose a generate_until task")

        def generate_until_multi_round(self, requests: list) -> list[str]:
            raise NotImplementedError("the adactrl model answers one round per request; choose a single-round task")

    return LmmsModel


def __getattr__(name: str) -> Any:
    if name == CLASS_NAME:  # what lmms-eval's registry imports, built on that first access
        globals()[name] = _lmms_model_class()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def manifest() -> Any:
    """The `lmms_eval.models` entry point: lmms-eval's registry calls it for the model's manifest."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.{CLASS_NAME}")
