"""The knobs of one adaptive inference: the value sets a model allows and a chosen plan."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

TIERS: tuple[str, ...] = ("low", "medium", "high")


@dataclass(frozen=True)
class KnobSpace:
    """The knob values a model allows, derived from its depth and its default MoE top-k."""

    num_layers: int
    """Transformer blocks in the language model."""
    default_top_k: int
    """Experts per token the model was built with; block 0 and blocks before stage 2 use it."""
    tiers: tuple[str, ...] = TIERS
    """Vision token tiers, cheapest first."""
    insertion_positions: tuple[int, ...] = (1, 2, 3, 4, 5)
    """Stage 2 runs after this many blocks."""
    top_k_values: tuple[int, ...] = (4, 5, 6, 7, 8)
    """MoE top-k choices for the blocks after the insertion point."""
    num_blocks_values: tuple[int, ...] = (12, 13, 14, 15, 16)
    """How many blocks run in total."""

    def __post_init__(self) -> None:
        if self.num_layers < 2:
            raise ValueError(f"num_layers must be at least 2, got {self.num_layers}")
        if not self.tiers or len(set(self.tiers)) != len(self.tiers):
            raise ValueError(f"tiers must be non-empty and distinct, got {self.tiers}")
        _check_sorted_unique("insertion_positions", self.insertion_positions, 1, self.num_layers - 1)
        _check_sorted_unique("top_k_values", self.top_k_values, 1, self.default_top_k)
        _check_sorted_unique("num_blocks_values", self.num_blocks_values, 1, self.num_layers)
        if max(self.insertion_positions) > min(self.num_blocks_values):
            raise ValueError(
                f"insertion position {max(self.insertion_positions)} exceeds the smallest block count "
                f"{min(self.num_blocks_values)}: the blocks before stage 2 always run"
            )

    @classmethod
    def from_model(
        cls,
        num_layers: int,
        default_top_k: int,
        tiers: Sequence[str] = TIERS,
        max_insertion: int = 5,
        min_block_fraction: float = 0.75,
        min_top_k_fraction: float = 0.5,
    ) -> KnobSpace:
        """Value sets scaled to a model: MolmoE-1B (16 blocks, top-8) gives 1..5, 4..8, 12..16."""
        min_blocks = max(1, math.ceil(min_block_fraction * num_layers))
        min_k = max(1, math.ceil(min_top_k_fraction * default_top_k))
        return cls(
            num_layers=num_layers,
            default_top_k=default_top_k,
            tiers=tuple(tiers),
            insertion_positions=tuple(range(1, min(max_insertion, min_blocks, num_layers - 1) + 1)),
            top_k_values=tuple(range(min_k, default_top_k + 1)),
            num_blocks_values=tuple(range(min_blocks, num_layers + 1)),
        )

    @property
    def sizes(self) -> tuple[int, int, int, int]:
        """Number of choices per sub-action: (tier, insertion, top_k, num_blocks)."""
        return (
            len(self.tiers),
            len(self.insertion_positions),
            len(self.top_k_values),
            len(self.num_blocks_values),
        )

    def to_dict(self) -> dict:
        return {
            "num_layers": self.num_layers,
            "default_top_k": self.default_top_k,
            "tiers": list(self.tiers),
            "insertion_positions": list(self.insertion_positions),
            "top_k_values": list(self.top_k_values),
            "num_blocks_values": list(self.num_blocks_values),
        }

    @classmethod
    def from_dict(cls, data: dict) -> KnobSpace:
        return cls(
            num_layers=int(data["num_layers"]),
            default_top_k=int(data["default_top_k"]),
            tiers=tuple(data["tiers"]),
            insertion_positions=tuple(int(v) for v in data["insertion_positions"]),
            top_k_values=tuple(int(v) for v in data["top_k_values"]),
            num_blocks_values=tuple(int(v) for v in data["num_blocks_values"]),
        )

    def plan(
        self,
        tier: str,
        insertion: int,
        top_k: int,
        num_blocks: int,
        importance: Sequence[float],
    ) -> Plan:
        """A validated plan; the blocks to run follow from the importance scores."""
        _check_member("tier", tier, self.tiers)
        _check_member("insertion", insertion, self.insertion_positions)
        _check_member("top_k", top_k, self.top_k_values)
        _check_member("num_blocks", num_blocks, self.num_blocks_values)
        if len(importance) != self.num_layers:
            raise ValueError(
                f"importance has {len(importance)} scores but the model has {self.num_layers} blocks; "
                "pass one score per block"
            )
        blocks = select_blocks(importance, num_blocks, insertion)
        return Plan(tier=tier, insertion=insertion, top_k=top_k, num_blocks=num_blocks, blocks=blocks)

    def full_plan(self, importance: Sequence[float]) -> Plan:
        """The most expensive plan: the model as built."""
        return self.plan(
            self.tiers[-1],
            self.insertion_positions[0],
            self.default_top_k if self.default_top_k in self.top_k_values else self.top_k_values[-1],
            self.num_blocks_values[-1],
            importance,
        )

    def static_plans(self, importance: Sequence[float], insertion: int | None = None) -> list[Plan]:
        """Every (tier, top_k, num_blocks) plan at one insertion point (the first by default)."""
        at = self.insertion_positions[0] if insertion is None else insertion
        return [
            self.plan(tier, at, k, n, importance)
            for tier in self.tiers
            for k in self.top_k_values
            for n in self.num_blocks_values
        ]


class Knobs(NamedTuple):
    """One value per knob: what a plan runs and what every record, summary and oracle choice
    reports. `KnobSpace.plan(*knobs, importance)` makes it executable."""

    tier: str
    insertion: int
    top_k: int
    num_blocks: int

    @property
    def name(self) -> str:
        return f"{self.tier}/ins{self.insertion}/k{self.top_k}/b{self.num_blocks}"


@dataclass(frozen=True)
class Plan:
    """One choice of every knob, and the blocks it runs (ascending, block 0 first)."""

    tier: str
    insertion: int
    top_k: int
    num_blocks: int
    blocks: tuple[int, ...]

    @property
    def knobs(self) -> Knobs:
        return Knobs(self.tier, self.insertion, self.top_k, self.num_blocks)

    @property
    def name(self) -> str:
        return self.knobs.name

    def to_dict(self) -> dict:
        return self.knobs._asdict() | {"blocks": list(self.blocks)}


def select_blocks(importance: Sequence[float], num_blocks: int, insertion: int) -> tuple[int, ...]:
    """Blocks 0..insertion-1 always run; the rest are the most important of the later blocks.

    Ties break toward the earlier block so that the choice is deterministic.
    """
    num_layers = len(importance)
    if not 1 <= insertion <= num_blocks <= num_layers:
        raise ValueError(
            f"need 1 <= insertion ({insertion}) <= num_blocks ({num_blocks}) <= layers ({num_layers})"
        )
    later = sorted(range(insertion, num_layers), key=lambda i: (-float(importance[i]), i))
    chosen = list(range(insertion)) + later[: num_blocks - insertion]
    return tuple(sorted(chosen))


def _check_member(name: str, value: object, allowed: Sequence[object]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is outside this model's KnobSpace; choose one of {list(allowed)}")


def _check_sorted_unique(name: str, values: Sequence[int], low: int, high: int) -> None:
    if not values:
        raise ValueError(f"{name} must not be empty")
    if list(values) != sorted(set(values)):
        raise ValueError(f"{name} must be ascending and distinct, got {list(values)}")
    if values[0] < low or values[-1] > high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got {list(values)}")
