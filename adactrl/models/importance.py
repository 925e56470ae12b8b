"""Per-block importance scores (seed 002, Exp 6 and 7).

Method (`loss_increase_leave_one_out`): for every block i, run the model at its full plan with
block i removed and measure how much the teacher-forced negative log-likelihood of the
reference answer rises over the full model, averaged over a dataset:

    score_i = mean_n [ NLL_n(all blocks but i) - NLL_n(all blocks) ]

A block whose removal costs more is more important. The accuracy lost (first answer token,
argmax) is recorded beside it. Block 0 is scored too, but plans always keep it.

File format (JSON): {"format": "adactrl.importance/1", "method", "dataset", "split",
"num_samples", "seed", "base_nll", "base_accuracy", "scores": [one float per block],
"accuracy_drop": [one float per block]}.

Leave-one-out scores miss work that many interchangeable blocks share: if any four of fifteen
blocks can read an answer, removing one costs nothing. `depth_curve` measures that directly,
past the KnobSpace's ranges: accuracy with block 0 plus the n - 1 most important later blocks,
n = 1 .. L, and with every block at top-k 1 .. default (`benchmarks/depth_curve.py`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from adactrl.knobs import select_blocks
from adactrl.models.adapter import MoEVLM

FORMAT = "adactrl.importance/1"
METHOD = "loss_increase_leave_one_out"


@dataclass(frozen=True)
class ImportanceScores:
    dataset: str
    split: str
    num_samples: int
    seed: int
    base_nll: float
    base_accuracy: float
    scores: list[float]
    accuracy_drop: list[float]
    method: str = METHOD
    format: str = FORMAT

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    def ranking(self) -> list[int]:
        """Blocks from most to least important."""
        return sorted(range(len(self.scores)), key=lambda i: (-self.scores[i], i))


@torch.inference_mode()
def answer_nll(
    model: MoEVLM, prefix: torch.Tensor, target: torch.Tensor, blocks: tuple[int, ...], top_k: int | None = None
) -> tuple[float, bool]:
    """Teacher-forced NLL (mean over answer tokens) and whether the first token is argmax-right.

    prefix: [1, L, d] (image tokens + prompt); target: [A] answer ids ending with EOS; every block
    runs at `top_k` (the default top-k if None).
    """
    inputs = torch.cat([prefix, model.embed_tokens(target[:-1]).unsqueeze(0)], dim=1)  # [1, L+A-1, d]
    top_k = model.knob_space.default_top_k if top_k is None else top_k
    hidden = model.run_blocks(inputs, blocks, top_k, None, 0)
    logits = model.lm_logits(hidden[:, prefix.shape[1] - 1 :])[0]  # [A, V]
    nll = F.cross_entropy(logits.float(), target)
    return float(nll), bool(logits[0].argmax() == target[0])


def _prefix_and_target(model: MoEVLM, row: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A row at the highest tier -> prefix [1, L, d] and answer ids ending with EOS."""
    image_tokens = model.project(model.encode_vision(model.preprocess(row["image"], model.knob_space.tiers[-1])))
    prefix = torch.cat([image_tokens, model.embed_tokens(model.tokenize(row["question"]))]).unsqueeze(0)
    return prefix, torch.cat([model.tokenize(row["answer"]), torch.tensor([model.eos_token_id])])


@dataclass(frozen=True)
class CurvePoint:
    """First-answer-token accuracy of one (blocks, top-k) setting at the highest tier."""

    num_blocks: int
    top_k: int
    blocks: tuple[int, ...]
    accuracy: float
    nll: float
    family_accuracy: dict[str, float]


@torch.inference_mode()
def depth_curve(model: MoEVLM, rows: Iterable[dict], importance: list[float] | tuple[float, ...]) -> list[CurvePoint]:
    """Accuracy with block 0 plus the n - 1 most important later blocks (n = 1 .. L, default top-k),
    then with every block at top-k 1 .. default. rows: dicts with 'image', 'question', 'answer'
    and 'family'. Settings outside the KnobSpace are measured on purpose: they show how much
    depth and how many experts the answers need, which the knob ranges alone cannot."""
    space = model.knob_space
    settings = [(select_blocks(importance, n, 1), space.default_top_k) for n in range(1, space.num_layers + 1)]
    settings += [(tuple(range(space.num_layers)), k) for k in range(1, space.default_top_k + 1)]
    nll = [0.0] * len(settings)
    hits: list[dict[str, list[bool]]] = [{} for _ in settings]
    count = 0
    for row in rows:
        prefix, target = _prefix_and_target(model, row)
        count += 1
        for i, (blocks, top_k) in enumerate(settings):
            nll_i, hit = answer_nll(model, prefix, target, blocks, top_k)
            nll[i] += nll_i
            hits[i].setdefault(row["family"], []).append(hit)
    if count == 0:
        raise ValueError("no samples for the depth curve; pass at least one question")
    return [
        CurvePoint(
            num_blocks=len(blocks),
            top_k=top_k,
            blocks=blocks,
            accuracy=sum(sum(h) for h in hits[i].values()) / count,
            nll=nll[i] / count,
            family_accuracy={f: sum(h) / len(h) for f, h in sorted(hits[i].items())},
        )
        for i, (blocks, top_k) in enumerate(settings)
    ]


@torch.inference_mode()
def compute_importance(
    model: MoEVLM,
    rows: Iterable[dict],
    *,
    dataset: str,
    split: str,
    seed: int,
) -> ImportanceScores:
    """rows: dicts with 'image' (PIL), 'question' and 'answer' (the reference answer)."""
    space = model.knob_space
    all_blocks = tuple(range(space.num_layers))
    base_nll, base_hits, count = 0.0, 0, 0
    removed_nll = [0.0] * space.num_layers
    removed_hits = [0] * space.num_layers
    for row in rows:
        prefix, target = _prefix_and_target(model, row)
        nll, hit = answer_nll(model, prefix, target, all_blocks)
        base_nll, base_hits, count = base_nll + nll, base_hits + hit, count + 1
        for i in all_blocks:
            nll_i, hit_i = answer_nll(model, prefix, target, tuple(b for b in all_blocks if b != i))
            removed_nll[i] += nll_i
            removed_hits[i] += hit_i
    if count == 0:
        raise ValueError("no samples to score importance on; pass at least one question")
    return ImportanceScores(
        dataset=dataset,
        split=split,
        num_samples=count,
        seed=seed,
        base_nll=base_nll / count,
        base_accuracy=base_hits / count,
        scores=[(removed_nll[i] - base_nll) / count for i in all_blocks],
        accuracy_drop=[(base_hits - removed_hits[i]) / count for i in all_blocks],
    )
