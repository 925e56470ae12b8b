"""Pretraining of the embedded model on the synthetic VQA set, with knobs drawn at random
(tier, MoE top-k, which blocks run) so that accuracy degrades gradually as knobs go down.

Two phases. The vision phase trains the vision tower and projector alone on dense per-token
targets from the generator's scene layout (`adactrl.models.dense`): which objects and digits lie
under each image token. The main phase trains everything on the answers, with the dense loss
kept on at a lower weight. Fresh questions are drawn from the generator at every step (no epochs,
no overfitting); a fixed validation split measures first-answer-token accuracy at the full plan.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adactrl.data.synthetic import FAMILIES, SyntheticVQAConfig, generate_sample, make_synthetic_vqa
from adactrl.models.dense import DenseHeads, token_targets
from adactrl.models.embedded import EmbeddedConfig, EmbeddedVLM
from adactrl.models.pretrain_config import PretrainConfig
from adactrl.models.tokenizer import WordTokenizer, build_tokenizer

IGNORE = -100


@dataclass(frozen=True)
class KnobDraw:
    tier: str
    insertion: int
    top_k: int
    blocks: tuple[int, ...]


REASONING_FAMILIES: tuple[str, ...] = ("count", "exists", "position", "same_color")
"""The families that compose what several image tokens show; they are learned first."""
RECALL_FAMILIES: tuple[str, ...] = ("price",)
"""Families answered from facts stored in the weights; drawn as often as a reasoning family."""


def draw_knobs(
    model: EmbeddedVLM,
    rng: np.random.Generator,
    full_plan_fraction: float,
    rising: bool = False,
    top_k_draw_fraction: float = 1.0,
) -> KnobDraw:
    """A random plan; its blocks are a random subset so any importance ranking is covered.

    Half the steps use the high tier so the fine-detail questions are seen where they can be
    answered; the other tiers share the rest. The block count, and top-k in a share
    `top_k_draw_fraction` of these plans (the default top-k otherwise), are drawn uniformly, or
    with `rising` with weights 1, 2, ..., n from the cheapest value up (every setting is
    trained, the expensive ones most)."""
    space = model.knob_space
    tiers = space.tiers
    tier = tiers[-1] if rng.random() < 0.5 else str(rng.choice(tiers[:-1]))
    if rng.random() < full_plan_fraction:
        return KnobDraw(tier, 1, space.default_top_k, tuple(range(space.num_layers)))
    insertion = int(rng.choice(space.insertion_positions))
    if rising:
        top_k = int(rng.choice(space.top_k_values, p=_rising(len(space.top_k_values))))
        num_blocks = int(rng.choice(space.num_blocks_values, p=_rising(len(space.num_blocks_values))))
    else:
        top_k = int(rng.choice(space.top_k_values))
        num_blocks = int(rng.choice(space.num_blocks_values))
    if top_k_draw_fraction < 1.0 and rng.random() >= top_k_draw_fraction:
        top_k = space.default_top_k
    later = rng.choice(np.arange(insertion, space.num_layers), size=num_blocks - insertion, replace=False)
    return KnobDraw(tier, insertion, top_k, tuple(sorted([*range(insertion), *map(int, later)])))


def draw_warm_knobs(model: EmbeddedVLM, rng: np.random.Generator) -> KnobDraw:
    """Every block at the default top-k, mostly cheap tiers: short image sequences let the
    answer position find the question and the objects in few steps."""
    space = model.knob_space
    tier = space.tiers[int(rng.choice(len(space.tiers), p=_warm_tier_probs(len(space.tiers))))]
    return KnobDraw(tier, 1, space.default_top_k, tuple(range(space.num_layers)))


def _warm_tier_probs(num_tiers: int) -> np.ndarray:
    weights = np.array([2.0**-i for i in range(num_tiers)])  # cheapest tier most often
    return weights / weights.sum()


def _rising(n: int) -> np.ndarray:
    weights = np.arange(1, n + 1, dtype=float)
    return weights / weights.sum()


@dataclass(frozen=True)
class Stage:
    """What one main-phase step trains on (see `curriculum`)."""

    name: str
    families: tuple[str, ...]
    family_probs: np.ndarray
    slot_prob: float

    def draw_knobs(self, model: EmbeddedVLM, rng: np.random.Generator, config: PretrainConfig) -> KnobDraw:
        space = model.knob_space
        if self.name == "reasoning-low":
            return KnobDraw(space.tiers[0], 1, space.default_top_k, tuple(range(space.num_layers)))
        if self.name in ("reasoning", "warm"):
            return draw_warm_knobs(model, rng)
        return draw_knobs(
            model, rng, config.full_plan_fraction, config.rising_knob_weights, config.top_k_draw_fraction
        )

    def draw_families(self, rng: np.random.Generator, n: int) -> list[str]:
        # Equal weights draw as the shipped model's recipe did, so its RNG stream (and its
        # weights) stay reproducible from the seed.
        if np.allclose(self.family_probs, self.family_probs[0]):
            return [self.families[int(rng.integers(len(self.families)))] for _ in range(n)]
        return [self.families[i] for i in rng.choice(len(self.families), size=n, p=self.family_probs)]


def curriculum(step: int, config: PretrainConfig) -> Stage:
    """The main phase's stage at `step`, in order:

    1. `reasoning-low` (`reasoning_low_fraction` of the steps): count / exists / position / same_color only,
       the cheapest tier, every block, no budget slot. With 9 image tokens the answer position
       learns to find the objects the question names; at 90 tokens, or beside easy families
       that block 0 answers alone, it never starts (README, "what has been tried").
    2. `reasoning` (`reasoning_fraction`): the same families at every tier, cheap ones most.
    3. `warm` (`warm_fraction`): all families (the reasoning ones `reasoning_weight` times as
       often), every block, mixed tiers, no budget slot.
    4. `random-knobs` (the rest): tier, insertion, top-k and blocks drawn at random; the budget
       slot's probability rises linearly to `budget_slot_prob` over the first
       `slot_ramp_fraction` of the stage.

    The defaults (see `PretrainConfig`) spend 15%, 10% and 10% of the steps on stages 1-3.
    """
    ends = np.cumsum([config.reasoning_low_fraction, config.reasoning_fraction, config.warm_fraction]) * config.steps
    reasoning = (REASONING_FAMILIES, np.full(len(REASONING_FAMILIES), 1 / len(REASONING_FAMILIES)), 0.0)
    if step < ends[0]:
        return Stage("reasoning-low", *reasoning)
    if step < ends[1]:
        return Stage("reasoning", *reasoning)
    weighted = REASONING_FAMILIES + RECALL_FAMILIES
    weights = np.array([config.reasoning_weight if f in weighted else 1.0 for f in FAMILIES])
    mixed = (FAMILIES, weights / weights.sum())
    if step < ends[2]:
        return Stage("warm", *mixed, 0.0)
    ramp = max(1.0, config.slot_ramp_fraction * (config.steps - ends[2]))
    return Stage("random-knobs", *mixed, config.budget_slot_prob * min(1.0, (step - ends[2] + 1) / ramp))


def image_tokens(model: EmbeddedVLM, images: list, tier: str) -> torch.Tensor:
    """A batch of images at one tier -> projected image tokens [B, N, d]."""
    crops = torch.stack([model.preprocess(im, tier) for im in images])  # [B, C, 3, H, W]
    batch, num_crops = crops.shape[:2]
    features = model.encode_vision(crops.flatten(0, 1))  # [B*C, P, d_v]
    return model.project_batch(features.reshape(batch, num_crops, *features.shape[1:]))


def answer_logits(
    model: EmbeddedVLM,
    tokens: torch.Tensor,
    questions: list[str],
    answers: list[str],
    knobs: KnobDraw,
    budget_slots: list[torch.Tensor | None],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher-forced batch from image tokens [B, N, d]: returns logits [B, L, V], labels
    [B, L] (IGNORE off-answer) and which positions are real tokens, not padding [B, L] bool."""
    rows, label_rows = [], []
    for b in range(tokens.shape[0]):
        prompt = model.embed_tokens(torch.tensor(model.tokenizer.encode(questions[b])))
        target = torch.tensor(model.tokenizer.encode(answers[b]) + [model.eos_token_id])
        parts = [tokens[b], prompt]
        if budget_slots[b] is not None:
            parts.append(budget_slots[b].unsqueeze(0))
        parts.append(model.embed_tokens(target[:-1]))
        row = torch.cat(parts)  # [L_b, d]
        labels = torch.full((row.shape[0],), IGNORE, dtype=torch.long)
        labels[-len(target) :] = target  # position t predicts token t+1
        rows.append(row)
        label_rows.append(labels)
    length = max(r.shape[0] for r in rows)
    hidden = torch.stack([F.pad(r, (0, 0, 0, length - r.shape[0])) for r in rows])  # [B, L, d]
    labels = torch.stack([F.pad(l, (0, length - l.shape[0]), value=IGNORE) for l in label_rows])  # [B, L]
    valid = torch.arange(length)[None, :] < torch.tensor([r.shape[0] for r in rows])[:, None]  # [B, L]
    head = knobs.blocks[: knobs.insertion]
    hidden = model.run_blocks(hidden, head, model.knob_space.default_top_k, None, 0)
    hidden = model.run_blocks(hidden, knobs.blocks[knobs.insertion :], knobs.top_k, None, 0)
    return model.lm_logits(hidden), labels, valid


class RouterRecorder:
    """Keeps the router logits of every MoE block a forward pass runs, with the top-k each ran at,
    for `balance_loss`. A no-op unless `enabled`."""

    def __init__(self, model: EmbeddedVLM, enabled: bool = True) -> None:
        self.model, self.enabled = model, enabled
        self.calls: list[tuple[torch.Tensor, int]] = []
        self._handles: list = []

    def __enter__(self) -> RouterRecorder:
        if self.enabled:
            for block in self.model.blocks:
                self._handles.append(block.mlp.gate.register_forward_hook(self._record))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _record(self, gate: nn.Module, inputs: tuple, output: tuple) -> None:
        self.calls.append((output[0], gate.top_k))  # router logits [B*L, E]

    def balance_loss(self, valid: torch.Tensor) -> torch.Tensor:
        """The Switch Transformer / OLMoE load-balancing loss, averaged over the blocks run:
        E * sum_i f_i * P_i, where f_i is the share of top-k slots that went to expert i and P_i
        its mean router probability, over the real (`valid`, [B*L] bool) tokens. It is 1 when
        routing is balanced (or flat) and at most E / top-k, reached when the same top-k experts
        take every token."""
        losses = []
        for logits, top_k in self.calls:
            probs = logits[valid].float().softmax(dim=-1)  # [T, E]
            num_experts = probs.shape[-1]
            chosen = F.one_hot(probs.topk(top_k, dim=-1).indices, num_experts).sum(dim=1).float()  # [T, E]
            share = chosen.mean(dim=0) / top_k
            losses.append(num_experts * (share * probs.mean(dim=0)).sum())
        return torch.stack(losses).mean()


def first_token_correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row: is the first answer token predicted right (answers are mostly 1 word)? [B] bool."""
    first = (labels != IGNORE).int().argmax(dim=1)  # [B] first labelled position
    rows = torch.arange(labels.shape[0])
    return logits[rows, first].argmax(-1) == labels[rows, first]


def build_model(
    seed: int,
    vocabulary: tuple[str, ...],
    stem_self_only: bool = False,
    expert_size: int = EmbeddedConfig.expert_size,
    num_experts: int = EmbeddedConfig.num_experts,
) -> EmbeddedVLM:
    """A fresh model whose blocks start as identities: zeroed attention-output and expert
    down-projections let the 16-block stack learn as fast as a shallow one at first."""
    torch.manual_seed(seed)
    tokenizer = WordTokenizer(build_tokenizer(vocabulary))
    config = EmbeddedConfig(
        vocab_size=tokenizer.vocab_size, stem_self_only=stem_self_only, expert_size=expert_size, num_experts=num_experts
    )
    model = EmbeddedVLM(config, tokenizer)
    for block in model.blocks:
        nn.init.zeros_(block.self_attn.o_proj.weight)
        nn.init.zeros_(block.mlp.experts.down_proj)
    return model


def pretrain(config: PretrainConfig, log: Callable[[str], None] = print) -> EmbeddedVLM:
    from adactrl.data.synthetic import VOCABULARY

    model = build_model(config.seed, VOCABULARY, config.stem_self_only, config.expert_size, config.num_experts)
    model.train()
    if not config.train_routers:
        for block in model.blocks:
            block.mlp.gate.weight.requires_grad_(False)
    heads = DenseHeads(model.hidden_size)
    rng = np.random.default_rng([config.seed, 17])
    val = make_synthetic_vqa(SyntheticVQAConfig(config.eval_questions, seed=config.seed, split="validation"))
    val_rows = [val[i] for i in range(len(val))]
    started = time.monotonic()
    if config.vision_steps:
        pretrain_vision(model, heads, config, rng, log)
    params = [p for p in (*model.parameters(), *heads.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, config))
    norm = model.embedding_norm()
    side = model.config.tokens_per_side
    stage_name = None
    for step in range(config.steps):
        stage = curriculum(step, config)
        if stage.name != stage_name:
            stage_name = stage.name
            log(f"step {step:5d}  stage {stage.name}: families {'/'.join(stage.families)}")
        knobs = stage.draw_knobs(model, rng, config)
        families = stage.draw_families(rng, config.batch_size)
        samples = [
            generate_sample(np.random.default_rng([config.seed, 99, step, b]), family)
            for b, family in enumerate(families)
        ]
        if step % 50 == 0:
            norm = model.embedding_norm()
        slots = [_random_slot(rng, model.hidden_size, norm) if rng.random() < stage.slot_prob else None for _ in samples]
        tokens = image_tokens(model, [s.image for s in samples], knobs.tier)
        with RouterRecorder(model, enabled=config.router_balance_weight > 0) as routers:
            logits, labels, valid = answer_logits(
                model, tokens, [s.question for s in samples], [s.answer for s in samples], knobs, slots
            )
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
        if routers.calls:
            loss = loss + config.router_balance_weight * routers.balance_loss(valid.flatten())
        if config.dense_weight:
            dense, _ = heads.loss(tokens, token_targets(samples, model.config.crop, knobs.tier, side))
            loss = loss + config.dense_weight * dense
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        minutes = (time.monotonic() - started) / 60
        if step % config.eval_every == 0 or step == config.steps - 1:
            acc, per_family = evaluate_full_plan(model, val_rows)
            families_text = " ".join(f"{f} {a:.2f}" for f, a in per_family.items())
            log(f"step {step:5d}  loss {loss.item():.3f}  val_first_token_acc {acc:.3f} ({families_text})  {minutes:.1f} min")
        if config.max_minutes is not None and minutes > config.max_minutes:
            log(f"stopping at step {step}: {config.max_minutes} minutes reached")
            break
    model.eval().requires_grad_(False)
    model.save(Path(config.output_dir))
    return model


def pretrain_vision(
    model: EmbeddedVLM, heads: DenseHeads, config: PretrainConfig, rng: np.random.Generator, log: Callable[[str], None]
) -> None:
    """The vision phase: the vision tower, projector and crop embeddings learn the dense targets
    alone (no language model, so a step costs a fraction of a full one), tiers in turn."""
    params = [*model.vision.parameters(), *model.projector.parameters(), *model.crop_embedding.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.vision_lr, weight_decay=config.weight_decay)
    tiers = model.knob_space.tiers
    side = model.config.tokens_per_side
    started = time.monotonic()
    window: dict[str, list[float]] = {}
    for step in range(config.vision_steps):
        tier = tiers[step % len(tiers)]
        families = [
            "digit" if rng.random() < config.vision_digit_share else FAMILIES[int(rng.integers(len(FAMILIES)))]
            for _ in range(config.batch_size)
        ]
        samples = [generate_sample(np.random.default_rng([config.seed, 98, step, b]), f) for b, f in enumerate(families)]
        tokens = image_tokens(model, [s.image for s in samples], tier)
        loss, stats = heads.loss(tokens, token_targets(samples, model.config.crop, tier, side))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        for name, value in stats.items():
            window.setdefault(f"{tier}/{name}", []).append(value)
        if (step + 1) % config.eval_every == 0 or step == config.vision_steps - 1:
            means = " ".join(f"{name} {np.mean(values):.2f}" for name, values in sorted(window.items()))
            minutes = (time.monotonic() - started) / 60
            log(f"vision step {step:5d}  loss {loss.item():.3f}  {means}  {minutes:.1f} min")
            window.clear()


@torch.no_grad()
def evaluate_full_plan(model: EmbeddedVLM, rows: list[dict], batch_size: int = 64) -> tuple[float, dict[str, float]]:
    """First-answer-token accuracy at the full plan: overall and per family (in FAMILIES order)."""
    was_training = model.training
    model.eval()
    space = model.knob_space
    knobs = KnobDraw(space.tiers[-1], 1, space.default_top_k, tuple(range(space.num_layers)))
    by_family: dict[str, list[bool]] = {}
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        tokens = image_tokens(model, [r["image"] for r in chunk], knobs.tier)
        logits, labels, _ = answer_logits(
            model, tokens, [r["question"] for r in chunk], [r["answer"] for r in chunk], knobs, [None] * len(chunk)
        )
        for row, ok in zip(chunk, first_token_correct(logits, labels).tolist()):
            by_family.setdefault(row["family"], []).append(ok)
    model.train(was_training)
    overall = float(np.mean([ok for oks in by_family.values() for ok in oks]))
    return overall, {f: float(np.mean(by_family[f])) for f in FAMILIES if f in by_family}


def _random_slot(rng: np.random.Generator, width: int, norm: float) -> torch.Tensor:
    vector = torch.from_numpy(rng.standard_normal(width).astype(np.float32))
    return vector / vector.norm() * norm


def _lr_factor(step: int, config: PretrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
