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
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

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
def answer_nll(model: MoEVLM, prefix: torch.Tensor, target: torch.Tensor, blocks: tuple[int, ...]) -> tuple[float, bool]:
    """Teacher-forced NLL (mean over answer tokens) and whether the first token is argmax-right.

    prefix: [1, L, d] (image tokens + prompt); target: [A] answer ids ending with EOS.
    """
    inputs = torch.cat([prefix, model.embed_tokens(target[:-1]).unsqueeze(0)], dim=1)  # [1, L+A-1, d]
    hidden = model.run_blocks(inputs, blocks, model.knob_space.default_top_k, None, 0)
    logits = model.lm_logits(hidden[:, prefix.shape[1] - 1 :])[0]  # [A, V]
    nll = F.cross_entropy(logits.float(), target)
    return float(nll), bool(logits[0].argmax() == target[0])


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
        image_tokens = model.project(model.encode_vision(model.preprocess(row["image"], space.tiers[-1])))
        prefix = torch.cat([image_tokens, model.embed_tokens(model.tokenize(row["question"]))]).unsqueeze(0)
        target = torch.cat([model.tokenize(row["answer"]), torch.tensor([model.eos_token_id])])
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
