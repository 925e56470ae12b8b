"""Settings of `adactrl pretrain-embedded`, apart from the training code so that the command
line can show their defaults without importing torch."""

from __future__ import annotations

from dataclasses import dataclass


DEFAULT_TOP_K = 8
"""`EmbeddedConfig.top_k`, repeated here so this module stays free of torch."""


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of `adactrl pretrain-embedded`. Defaults reproduce the shipped model."""

    output_dir: str
    seed: int = 0
    steps: int = 3600
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    reasoning_low_fraction: float = 0.15
    """Leading share of main steps on the reasoning families alone (count, exists, position, same_color)
    at the cheapest tier, every block, no budget slot (stage 1 of `curriculum`; 0 = skip)."""
    reasoning_fraction: float = 0.1
    """Next share of main steps on the reasoning families alone at every tier (stage 2)."""
    warm_fraction: float = 0.1
    """Next share of main steps on all families with every block at the default top-k, mostly
    cheap tiers and no budget slot (stage 3), before knobs are drawn at random (stage 4)."""
    reasoning_weight: float = 2.0
    """How much more often than each easy family a reasoning family is drawn in stages 3-4."""
    full_plan_fraction: float = 0.35
    """Share of random-knob steps run with every block at the default top-k (at a random
    tier); the rest draw top-k, insertion and blocks at random."""
    top_k_draw_fraction: float = 0.05
    """Share of the random (not full) plans that also draw top-k; the rest run the default
    top-k with their random blocks and insertion (1.0 = every random plan). The shipped model
    drew it in 5% of them (about 3% of all steps): trained below the default top-k more
    often, a model learns to answer as well with four experts, and the knob then buys latency
    for nothing (see the README's "what has been tried")."""
    rising_knob_weights: bool = True
    """Draw top-k and the block count with weights 1..n from the cheapest value up, instead of
    uniformly, in the random-knob stage."""
    slot_ramp_fraction: float = 0.2
    """Leading share of the random-knob stage over which the budget slot's probability rises
    linearly from 0 to `budget_slot_prob` (0 = at full probability at once)."""
    stem_self_only: bool = True
    """Build the model with a per-token block 0 (`EmbeddedConfig.stem_self_only`)."""
    expert_size: int = 64
    """Hidden width of each expert (`EmbeddedConfig.expert_size`): top-k of them is the width
    of a block's MLP for one token."""
    num_experts: int = 16
    """Experts per block (`EmbeddedConfig.num_experts`); the default top-k (8) of them run per
    token, so it must be at least 8."""
    train_routers: bool = False
    """Train the MoE routers (`--train_routers`). Off, as the shipped model was trained, every
    router keeps its random initial weights (hash-like routing, Roller et al. 2021): a learned
    router puts what the answers need into its first pick, so top-1 answers as top-8 does and
    the top-k knob takes nothing away (measured, see the README's "what has been tried")."""
    router_balance_weight: float = 0.0
    """Weight of the load-balancing loss on every MoE router (Switch Transformer / OLMoE's
    auxiliary loss, `RouterRecorder.balance_loss`; OLMoE trains with 0.01). 0 = off, as the
    shipped model was trained."""
    budget_slot_prob: float = 0.5
    """Chance that a random budget-sized token is appended after the prompt, as the
    controller's budget token will be, so the frozen model learns to read past it."""
    vision_steps: int = 2000
    """Steps of the vision phase that comes first: the vision side learns the dense per-token
    targets of `adactrl.models.dense` on its own, about a seventh of the cost of a full step."""
    vision_lr: float = 2e-3
    vision_digit_share: float = 0.5
    """Share of vision-phase images drawn from the digit family: a glyph is one token in a
    hundred, the rarest target, and the hardest to learn."""
    dense_weight: float = 0.5
    """Weight of the dense per-token loss beside the answer loss in the main phase (0 = off)."""
    eval_every: int = 250
    eval_questions: int = 384
    max_minutes: float | None = None
    """Stop early after this much wall time (the schedule still decays as planned)."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be at least 1")
        shares = (
            self.full_plan_fraction, self.reasoning_low_fraction, self.reasoning_fraction, self.warm_fraction,
            self.slot_ramp_fraction, self.top_k_draw_fraction,
        )
        if not all(0.0 <= p <= 1.0 for p in (*shares, self.budget_slot_prob)):
            raise ValueError(
                "full_plan_fraction, reasoning_low_fraction, reasoning_fraction, warm_fraction, "
                "slot_ramp_fraction, top_k_draw_fraction and budget_slot_prob are probabilities in [0, 1]"
            )
        curriculum = self.reasoning_low_fraction + self.reasoning_fraction + self.warm_fraction
        if curriculum > 1.0:
            raise ValueError(
                f"reasoning_low_fraction + reasoning_fraction + warm_fraction = {curriculum:g} exceeds 1; "
                "they are shares of the same main steps, so lower one of them"
            )
        if self.expert_size < 1:
            raise ValueError(f"expert_size must be at least 1, got {self.expert_size}")
        if self.num_experts < DEFAULT_TOP_K:
            raise ValueError(f"num_experts must be at least the default top-k {DEFAULT_TOP_K}, got {self.num_experts}")
        if self.router_balance_weight < 0:
            raise ValueError(f"router_balance_weight must be at least 0 (0 = off), got {self.router_balance_weight}")
        if self.reasoning_weight <= 0:
            raise ValueError(f"reasoning_weight must be positive, got {self.reasoning_weight}")
        if self.lr <= 0 or self.vision_lr <= 0:
            raise ValueError(f"lr and vision_lr must be positive, got {self.lr} and {self.vision_lr}")
        if self.vision_steps < 0 or self.dense_weight < 0:
            raise ValueError("vision_steps and dense_weight must not be negative")
        if not 0.0 <= self.vision_digit_share <= 1.0:
            raise ValueError("vision_digit_share is a probability in [0, 1]")
