"""Do the experts divide each token's work, or does each expert do all of it?

Lowering top-k can only cost accuracy if the experts a token drops held work the ones it keeps
cannot do. `expert_probe` measures that on the embedded model by changing the routing of every
block the top-k knob reaches (blocks 1..L-1; block 0 keeps its default routing):

- `top`: the router's k best experts with their softmax weights (what the knob does);
- `rescaled`: the same experts, weights scaled up to the mass the default top-k carries, so
  only *which* experts run changes, not how large their sum is;
- `random`: k experts drawn at random per token, rescaled the same way: if these answer as
  well as the router's choice, the experts are interchangeable;
- `scaled`: the default routing with every expert output multiplied by a factor (0 turns the
  experts off), which shows how much the answers depend on the size of the expert sum.

`expert_agreement` looks at the outputs themselves: per block, whether a token's experts point
the same way (copies) or apart, how much of the top-k sum the first picks carry, and how large
the experts' update is beside the hidden state.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.models.olmoe.modeling_olmoe import OlmoeTopKRouter

from adactrl.models.embedded import EmbeddedVLM
from adactrl.models.importance import prefix_and_target, answer_nll

MODES = ("top", "rescaled", "random", "scaled")


@dataclass(frozen=True)
class Routing:
    """One way to route the knob-reachable blocks."""

    mode: str
    top_k: int
    scale: float = 1.0
    """Factor on every expert output (mode `scaled` only)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown routing mode {self.mode!r}; choose one of {list(MODES)}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")
        if self.scale < 0 or (self.mode != "scaled" and self.scale != 1.0):
            raise ValueError("scale is a non-negative factor, and only mode 'scaled' takes one")

    @property
    def name(self) -> str:
        if self.mode == "scaled":
            return f"top-{self.top_k} output x{self.scale:g}"
        if self.mode == "random":
            return f"random {self.top_k}"
        return f"top-{self.top_k}" + (" rescaled" if self.mode == "rescaled" else "")


def default_routings(default_top_k: int) -> tuple[Routing, ...]:
    k, half = default_top_k, max(1, default_top_k // 2)
    return (
        Routing("top", k), Routing("top", half), Routing("top", 1),
        Routing("rescaled", half), Routing("rescaled", 1),
        Routing("random", k), Routing("random", half),
        *(Routing("scaled", k, s) for s in (0.0, 0.25, 0.5, 2.0)),
    )  # fmt: skip


@dataclass(frozen=True)
class ProbePoint:
    """First-answer-token accuracy and answer NLL (teacher-forced, highest tier) under one routing."""

    routing: str
    accuracy: float
    nll: float
    family_accuracy: dict[str, float]


def route(
    probs: torch.Tensor, routing: Routing, default_top_k: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """probs: [T, E] router softmax -> (weights [T, k], expert indices [T, k])."""
    if routing.mode == "random":
        indices = torch.rand(probs.shape, generator=generator).argsort(dim=-1)[:, : routing.top_k]  # [T, k]
        weights = probs.gather(-1, indices)
    else:
        weights, indices = torch.topk(probs, routing.top_k, dim=-1)  # [T, k]
    if routing.mode in ("rescaled", "random"):
        default_mass = torch.topk(probs, default_top_k, dim=-1).values.sum(-1, keepdim=True)  # [T, 1]
        weights = weights * default_mass / weights.sum(-1, keepdim=True)
    return weights, indices


@contextmanager
def routed(model: EmbeddedVLM, routing: Routing, seed: int = 0) -> Iterator[None]:
    """Inside the `with` statement, blocks 1..L-1 of `model` route by `routing`; restored on exit."""
    gates = [block.mlp.gate for block in model.blocks[1:]]
    if not all(isinstance(gate, OlmoeTopKRouter) for gate in gates):
        raise TypeError("expert_probe needs OLMoE routers (the embedded model); this model has none")
    if routing.top_k > gates[0].num_experts:
        raise ValueError(f"top_k {routing.top_k} exceeds the {gates[0].num_experts} experts per block")
    generator = torch.Generator().manual_seed(seed)
    default_top_k = model.knob_space.default_top_k

    def forward(gate: OlmoeTopKRouter, hidden: torch.Tensor):
        hidden = hidden.reshape(-1, gate.hidden_dim)  # [T, d]
        logits = F.linear(hidden, gate.weight)  # [T, E]
        probs = F.softmax(logits, dtype=torch.float, dim=-1)
        weights, indices = route(probs, routing, default_top_k, generator)
        return logits, weights.to(logits.dtype), indices

    hooks = []
    for block, gate in zip(model.blocks[1:], gates):
        gate.forward = forward.__get__(gate)
        if routing.mode == "scaled":
            hooks.append(block.mlp.register_forward_hook(lambda _m, _i, out: out * routing.scale))
    try:
        yield
    finally:
        for gate in gates:
            del gate.forward
        for hook in hooks:
            hook.remove()


@torch.inference_mode()
def expert_probe(
    model: EmbeddedVLM, rows: Iterable[dict], routings: Iterable[Routing] | None = None, seed: int = 0
) -> list[ProbePoint]:
    """rows: dicts with 'image', 'question', 'answer' and 'family'; every block runs."""
    routings = tuple(routings or default_routings(model.knob_space.default_top_k))
    samples = [(prefix_and_target(model, row), row["family"]) for row in rows]
    if not samples:
        raise ValueError("no samples for the expert probe; pass at least one question")
    every_block = tuple(range(model.knob_space.num_layers))
    points = []
    for routing in routings:
        nll, hits = 0.0, {}
        with routed(model, routing, seed):
            for (prefix, target), family in samples:
                nll_i, hit = answer_nll(model, prefix, target, every_block)
                nll += nll_i
                hits.setdefault(family, []).append(hit)
        points.append(
            ProbePoint(
                routing=routing.name,
                accuracy=sum(sum(h) for h in hits.values()) / len(samples),
                nll=nll / len(samples),
                family_accuracy={f: sum(h) / len(h) for f, h in sorted(hits.items())},
            )
        )
    return points


@dataclass(frozen=True)
class BlockAgreement:
    """How the experts of one block share a token's update, averaged over every token.

    Cosines compare output vectors; the sums are weighted by the router's softmax as the block
    runs them (top-k of the default k, no renormalisation)."""

    block: int
    pair_cosine: float
    """Between two different experts of the same token's default top-k (copies would give 1)."""
    half_cosine: float
    """Between the sum of the top k/2 and the sum of the top k (what top-k = k/2 changes)."""
    half_norm: float
    """|top-k/2 sum| / |top-k sum|."""
    top1_cosine: float
    """Between the router's best expert alone and the top-k sum."""
    random_cosine: float
    """Between an expert drawn at random per token and the top-k sum."""
    update_share: float
    """|top-k sum| / |hidden state entering the block|: how large the experts' update is."""


def expert_outputs(moe: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """hidden [T, d] (the MoE's input) -> every expert's output on every token [E, T, d]."""
    experts = moe.experts
    gate, up = torch.einsum("td,ehd->eth", hidden, experts.gate_up_proj).chunk(2, dim=-1)  # [E, T, h] each
    return torch.einsum("eth,edh->etd", experts.act_fn(gate) * up, experts.down_proj)


@torch.inference_mode()
def expert_agreement(model: EmbeddedVLM, rows: Iterable[dict], seed: int = 0) -> list[BlockAgreement]:
    """Per block 1..L-1 at the full plan: do a token's experts compute the same thing, and how
    much of the top-k sum do the first picks carry? rows: dicts with 'image', 'question', 'answer'."""
    samples = [prefix_and_target(model, row) for row in rows]
    if not samples:
        raise ValueError("no samples for the expert agreement; pass at least one question")
    later = list(model.blocks)[1:]
    residual: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(later))}
    moe_input: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(later))}

    def keep(store: list[torch.Tensor], hidden: torch.Tensor) -> None:
        store.append(hidden.reshape(-1, hidden.shape[-1]))

    hooks = []
    for i, block in enumerate(later):
        hooks.append(
            block.register_forward_pre_hook(
                lambda _m, args, kwargs, i=i: keep(residual[i], args[0] if args else kwargs["hidden_states"]),
                with_kwargs=True,
            )
        )
        hooks.append(block.mlp.register_forward_pre_hook(lambda _m, args, i=i: keep(moe_input[i], args[0])))
    try:
        every_block = tuple(range(model.knob_space.num_layers))
        for prefix, target in samples:
            answer_nll(model, prefix, target, every_block)
    finally:
        for hook in hooks:
            hook.remove()
    generator = torch.Generator().manual_seed(seed)
    k = model.knob_space.default_top_k
    return [
        _agreement(i + 1, block.mlp, torch.cat(moe_input[i]), torch.cat(residual[i]), k, generator)
        for i, block in enumerate(later)
    ]


def _agreement(
    index: int, moe: torch.nn.Module, hidden: torch.Tensor, residual: torch.Tensor, k: int, generator: torch.Generator
) -> BlockAgreement:
    outputs = expert_outputs(moe, hidden).transpose(0, 1)  # [T, E, d]
    probs = F.softmax(F.linear(hidden, moe.gate.weight).float(), dim=-1)  # [T, E]
    weights, indices = torch.topk(probs, k, dim=-1)  # [T, k]
    tokens = torch.arange(hidden.shape[0])[:, None]
    chosen = outputs[tokens, indices]  # [T, k, d]
    full = (weights[..., None] * chosen).sum(1)  # [T, d]
    half = (weights[:, : max(1, k // 2), None] * chosen[:, : max(1, k // 2)]).sum(1)
    unit = F.normalize(chosen, dim=-1)
    pairs = unit @ unit.transpose(1, 2)  # [T, k, k]
    off_diagonal = ~torch.eye(k, dtype=torch.bool)
    drawn = outputs[tokens[:, 0], torch.randint(outputs.shape[1], (hidden.shape[0],), generator=generator)]
    return BlockAgreement(
        block=index,
        pair_cosine=float(pairs[:, off_diagonal].mean()) if k > 1 else 1.0,
        half_cosine=float(F.cosine_similarity(half, full, dim=-1).mean()),
        half_norm=float((half.norm(dim=-1) / full.norm(dim=-1)).mean()),
        top1_cosine=float(F.cosine_similarity(chosen[:, 0], full, dim=-1).mean()),
        random_cosine=float(F.cosine_similarity(drawn, full, dim=-1).mean()),
        update_share=float((full.norm(dim=-1) / residual.norm(dim=-1)).mean()),
    )
