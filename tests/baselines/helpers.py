"""Hand-made profile rows for the baseline tests."""

from __future__ import annotations

from adactrl.profiling import SweepRecord


def record(plan: tuple[str, int, int], qid: int, accuracy: float, latency_ms: float, **fields) -> SweepRecord:
    """One profile row of plan (tier, top_k, num_blocks) at insertion 1; latency split evenly."""
    tier, top_k, num_blocks = plan
    values = dict(
        question_id=qid, family="count", plan=f"{tier}/ins1/k{top_k}/b{num_blocks}", tier=tier, insertion=1,
        top_k=top_k, num_blocks=num_blocks, answer="2", accuracy=accuracy, num_image_tokens=9,
        num_prompt_tokens=5, num_output_tokens=2, latency_ms=latency_ms, vision_ms=latency_ms / 4,
        projector_ms=latency_ms / 4, prefill_ms=latency_ms / 4, controller_ms=0.0, decode_ms=latency_ms / 4,
    )  # fmt: skip
    values.update(fields)
    return SweepRecord(**values)
