"""Per-block importance scores (seed 002, Exp 6 and 7).

Two methods, both on the teacher-forced negative log-likelihood (NLL) of the reference answer at
the full plan (highest tier, default top-k), averaged over a dataset:

- `loss_increase_greedy_removal` (the default): remove blocks one at a time, each time the block
  whose removal raises the NLL least given the blocks already removed, until only block 0 is
  left. A block's score is the NLL increase over the full model once it and every block removed
  before it are gone, kept strictly increasing along the removal order, so the blocks removed
  last rank first and a plan with n blocks runs exactly the n blocks the search kept. This is
  what the block-count knob does: it drops several blocks at once, and blocks that share work
  (any four of fifteen can read an answer) look dispensable one at a time. Cost: L(L-1)/2 NLL
  evaluations per question (120 for 16 blocks).
- `loss_increase_leave_one_out`: score_i = mean_n [NLL_n(all blocks but i) - NLL_n(all blocks)].
  L evaluations per question, blind to shared work.

Block 0 is scored by leave-one-out in both; plans always keep it. The first-answer-token accuracy
lost (argmax) is recorded beside each score, for greedy removal once the block is gone.

File format (JSON): {"format": "adactrl.importance/1", "method", "dataset", "split",
"num_samples", "seed", "base_nll", "base_accuracy", "scores": [one float per block],
"accuracy_drop": [one float per block], "removal_order": [blocks, first removed first; empty
for leave-one-out]}.

`depth_curve` measures how much depth and how many experts the answers need, past the
KnobSpace's ranges: accuracy with block 0 plus the n - 1 most important later blocks,
n = 1 .. L, and with every block at top-k 1 .. default (`benchmarks/depth_curve.py`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from adactrl.knobs import select_blocks
from adactrl.models.adapter import MoEVLM

FORMAT = "adactrl.importance/1"
GREEDY = "loss_increase_greedy_removal"
LEAVE_ONE_OUT = "loss_increase_leave_one_out"
METHODS: tuple[str, ...] = (GREEDY, LEAVE_ONE_OUT)


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
    method: str = LEAVE_ONE_OUT
    format: str = FORMAT
    removal_order: list[int] = field(default_factory=list)
    """Greedy removal only: the blocks in the order they were removed (block 0 never is)."""

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


def prefix_and_target(model: MoEVLM, row: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A row at the highest tier -> prefix [1, L, d] and answer ids ending with EOS."""
    image_tokens = model.project(model.encode_vision(model.preprocess(row["image"], model.knob_space.tiers[-1])))
    prefix = model.prefill_layout(image_tokens, model.embed_tokens(model.tokenize(row["question"])))
    return prefix, torch.cat([model.tokenize_answer(row["answer"]), torch.tensor([model.eos_token_id])])


def load_importance_scores(path: str | Path, num_layers: int) -> tuple[float, ...]:
    """Read block importance from JSON and check it fits the model. Two formats are accepted:
    this module's (a "scores" list, one float per block) and the seed prototype's flat
    {"0": score, "1": score, ...} (every block from 0 to num_layers - 1 present)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"importance scores file not found: {path}") from None
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    try:
        if isinstance(data, dict) and "scores" in data:
            scores = tuple(float(s) for s in data["scores"])
        elif isinstance(data, dict) and data and all(str(k).isdigit() for k in data):
            blocks = sorted(int(k) for k in data)
            if blocks != list(range(len(blocks))):
                raise ValueError(f"blocks {blocks} are not 0..{len(blocks) - 1}")
            scores = tuple(float(data[str(b)]) for b in blocks)
        else:
            raise ValueError("""expected a 'scores' list or a flat {"0": score, ...}""")
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path} is not an importance-scores JSON: {err}") from err
    if len(scores) != num_layers:
        raise ValueError(f"{path} has {len(scores)} scores but the model has {num_layers} blocks")
    bad = {block: score for block, score in enumerate(scores) if not math.isfinite(score)}
    if bad:  # block selection sorts by score, and NaN scrambles a sort. (A negative score is fine: a
        # block whose removal lowered the loss, ranked last.)
        raise ValueError(f"{path}: importance scores must be finite numbers; blocks {bad} are not")
    return scores


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
        prefix, target = prefix_and_target(model, row)
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
    method: str = GREEDY,
) -> ImportanceScores:
    """rows: dicts with 'image' (PIL), 'question' and 'answer' (the reference answer)."""
    if method not in METHODS:
        raise ValueError(f"unknown importance method {method!r}; choose one of {list(METHODS)}")
    samples = [prefix_and_target(model, row) for row in rows]
    if not samples:
        raise ValueError("no samples to score importance on; pass at least one question")
    all_blocks = tuple(range(model.knob_space.num_layers))
    base_nll, base_acc = _mean_nll(model, samples, all_blocks)
    without = [_mean_nll(model, samples, tuple(b for b in all_blocks if b != i)) for i in all_blocks[:1]]
    removal_order: list[int] = []
    if method == LEAVE_ONE_OUT:
        without += [_mean_nll(model, samples, tuple(b for b in all_blocks if b != i)) for i in all_blocks[1:]]
    else:
        removal_order, after = _greedy_removal(model, samples, all_blocks)
        by_block = dict(zip(removal_order, after))
        without += [by_block[i] for i in all_blocks[1:]]
    scores = [nll - base_nll for nll, _ in without]
    previous = -math.inf
    for block in removal_order:  # strictly increasing along the removal order
        scores[block] = previous = max(scores[block], math.nextafter(previous, math.inf))
    return ImportanceScores(
        dataset=dataset,
        split=split,
        num_samples=len(samples),
        seed=seed,
        base_nll=base_nll,
        base_accuracy=base_acc,
        scores=scores,
        accuracy_drop=[base_acc - acc for _, acc in without],
        method=method,
        removal_order=removal_order,
    )


def _mean_nll(
    model: MoEVLM, samples: Sequence[tuple[torch.Tensor, torch.Tensor]], blocks: tuple[int, ...]
) -> tuple[float, float]:
    """Mean answer NLL and first-token accuracy of `blocks` at the default top-k."""
    results = [answer_nll(model, prefix, target, blocks) for prefix, target in samples]
    return sum(nll for nll, _ in results) / len(results), sum(hit for _, hit in results) / len(results)


def _greedy_removal(
    model: MoEVLM, samples: Sequence[tuple[torch.Tensor, torch.Tensor]], all_blocks: tuple[int, ...]
) -> tuple[list[int], list[tuple[float, float]]]:
    """Blocks in removal order and the (NLL, accuracy) once each is gone; a tie removes the later block."""
    kept, order, after = list(all_blocks), [], []
    while len(kept) > 1:
        trials = {b: _mean_nll(model, samples, tuple(k for k in kept if k != b)) for b in kept[1:]}
        block = min(trials, key=lambda b: (trials[b][0], -b))
        kept.remove(block)
        order.append(block)
        after.append(trials[block])
    return order, after
