"""The JSON bodies `adactrl serve` answers with (shapes documented in docs/serving.md)."""

from __future__ import annotations

import time
import uuid

from adactrl.serving.engine import ServeOutcome
from adactrl.serving.requests import InferRequest


def budget_report(request: InferRequest, outcome: ServeOutcome, total_ms: float) -> dict:
    """What both endpoints report: knobs, the latency breakdown (queue, model stages, model, and
    total end to end at the ingress) and whether the budget was met."""
    latency = {"queue": round(outcome.queue_ms, 3), **(outcome.stages_ms or {}),
               "model": round(outcome.model_ms, 3), "total": round(total_ms, 3)}  # fmt: skip
    return {
        "knobs": outcome.knobs,
        "plan": outcome.admission.plan,
        "budget_ms": request.budget_ms,
        "remaining_ms": round(outcome.admission.remaining_ms, 3),
        "cheapest_ms": round(outcome.cheapest_ms, 3),
        "met_budget": total_ms <= request.budget_ms,
        "latency_ms": latency,
    }


def infer_body(request: InferRequest, outcome: ServeOutcome, total_ms: float) -> dict:
    """`POST /v1/infer`: the answer and the budget report."""
    return {"answer": outcome.answer, **budget_report(request, outcome, total_ms),
            "image_tokens": outcome.image_tokens, "prompt_tokens": outcome.prompt_tokens}  # fmt: skip


def chat_body(request: InferRequest, outcome: ServeOutcome, total_ms: float, model: str) -> dict:
    """`POST /v1/chat/completions`: OpenAI's chat.completion object; the budget report is the
    `adactrl` extension field (clients that do not know it ignore it)."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": outcome.answer},
                     "finish_reason": "stop"}],  # fmt: skip
        "usage": {"prompt_tokens": outcome.prompt_tokens + outcome.image_tokens,
                  "completion_tokens": outcome.completion_tokens,
                  "total_tokens": outcome.prompt_tokens + outcome.image_tokens + outcome.completion_tokens},  # fmt: skip
        "adactrl": budget_report(request, outcome, total_ms),
    }


def error_body(message: str, status: int, **extra: float | str) -> dict:
    """Every refusal, OpenAI's error shape: {"error": {"message", "type", "code", ...}}."""
    kind = {413: "payload_too_large", 429: "over_budget"}.get(status, "invalid_request_error")
    return {"error": {"message": message, "type": kind, "code": status, **extra}}


def rejected_body(request: InferRequest, outcome: ServeOutcome) -> dict:
    """429: too little of the budget was left, or would be when a replica is free."""
    admission = outcome.admission
    message = (f"{max(admission.remaining_ms, 0.0):.1f} ms of the {request.budget_ms:g} ms budget would be left for "
               f"the model after the queue, below the cheapest plan's {outcome.cheapest_ms:.1f} ms; "
               f"retry after {admission.retry_after_s} s, raise the budget, or send best_effort: true")  # fmt: skip
    return error_body(message, 429, queue_ms=round(outcome.queue_ms, 3), cheapest_ms=round(outcome.cheapest_ms, 3),
                      retry_after_s=admission.retry_after_s)  # fmt: skip
