import json

import pytest
import torch

from adactrl.data import load_vqa_dataset
from adactrl.models.embedded import load_importance_scores
from adactrl.knobs import select_blocks
from adactrl.models.importance import (
    FORMAT,
    GREEDY,
    LEAVE_ONE_OUT,
    ImportanceScores,
    answer_nll,
    compute_importance,
    depth_curve,
)


@pytest.fixture(scope="module")
def scores(tiny_model) -> ImportanceScores:
    rows = load_vqa_dataset("synthetic", "validation", 3, seed=0)
    return compute_importance(tiny_model, rows, dataset="synthetic", split="validation", seed=0, method=LEAVE_ONE_OUT)


@pytest.fixture(scope="module")
def greedy(tiny_model) -> ImportanceScores:
    rows = load_vqa_dataset("synthetic", "validation", 3, seed=0)
    return compute_importance(tiny_model, rows, dataset="synthetic", split="validation", seed=0)


def test_one_score_per_block(scores):
    assert scores.num_samples == 3
    assert len(scores.scores) == len(scores.accuracy_drop) == 8
    assert all(isinstance(s, float) for s in scores.scores)
    assert scores.base_nll > 0.0
    assert 0.0 <= scores.base_accuracy <= 1.0
    # removing a block can lose at most the hits the full model had, and gain at most the misses
    for drop in scores.accuracy_drop:
        assert -(1.0 - scores.base_accuracy) <= drop <= scores.base_accuracy
    assert sorted(scores.ranking()) == list(range(8))


def test_score_is_the_nll_increase_when_the_block_is_removed(tiny_model, scores):
    """Recompute block 4's score by hand for the three samples: mean(NLL without 4 - NLL with all)."""
    rows = load_vqa_dataset("synthetic", "validation", 3, seed=0)
    increases = []
    for row in rows:
        image = tiny_model.project(tiny_model.encode_vision(tiny_model.preprocess(row["image"], "high")))
        prefix = torch.cat([image, tiny_model.embed_tokens(tiny_model.tokenize(row["question"]))])[None]
        target = torch.cat([tiny_model.tokenize(row["answer"]), torch.tensor([tiny_model.eos_token_id])])
        full, _ = answer_nll(tiny_model, prefix, target, tuple(range(8)))
        without, _ = answer_nll(tiny_model, prefix, target, (0, 1, 2, 3, 5, 6, 7))
        increases.append(without - full)
    assert scores.scores[4] == pytest.approx(sum(increases) / 3, rel=1e-5)


def test_ranking_orders_by_score_then_block():
    scores = ImportanceScores("synthetic", "validation", 1, 0, 1.0, 1.0, [0.1, 0.5, 0.5, -0.2], [0.0] * 4)
    # 0.5 (1), 0.5 (2) tie -> earlier first, then 0.1 (0), then -0.2 (3)
    assert scores.ranking() == [1, 2, 0, 3]


def test_json_round_trip(scores, tmp_path):
    path = tmp_path / "sub" / "importance.json"
    scores.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT and data["method"] == LEAVE_ONE_OUT and data["removal_order"] == []
    assert data["dataset"] == "synthetic" and data["split"] == "validation" and data["num_samples"] == 3
    assert ImportanceScores(**data) == scores
    assert load_importance_scores(path, 8) == tuple(scores.scores)
    with pytest.raises(ValueError, match="has 8 scores but the model has 16 blocks"):
        load_importance_scores(path, 16)


def test_greedy_removal_is_the_default_and_ranks_the_last_removed_first(greedy, scores):
    assert greedy.method == GREEDY and sorted(greedy.removal_order) == list(range(1, 8))
    along = [greedy.scores[b] for b in greedy.removal_order]
    assert all(a < b for a, b in zip(along, along[1:]))
    assert [b for b in greedy.ranking() if b != 0] == greedy.removal_order[::-1]
    # The first block removed is the one whose removal alone costs least (a tie removes the later
    # block), and it scores what leave-one-out gives it; block 0 is scored by leave-one-out too.
    first = min(range(1, 8), key=lambda b: (scores.scores[b], -b))
    assert greedy.removal_order[0] == first
    assert greedy.scores[first] == pytest.approx(scores.scores[first], rel=1e-6, abs=1e-9)
    assert greedy.scores[0] == pytest.approx(scores.scores[0], rel=1e-6)
    assert greedy.base_nll == pytest.approx(scores.base_nll)


@pytest.mark.parametrize("num_blocks", [2, 5, 7])
def test_greedy_scores_make_plans_run_the_blocks_the_search_kept(greedy, num_blocks):
    dropped = set(greedy.removal_order[: 8 - num_blocks])
    assert select_blocks(greedy.scores, num_blocks, 1) == tuple(b for b in range(8) if b not in dropped)


def test_greedy_accuracy_drop_is_measured_once_the_block_is_gone(tiny_model, greedy):
    rows = load_vqa_dataset("synthetic", "validation", 3, seed=0)
    second = greedy.removal_order[1]
    kept = tuple(b for b in range(8) if b not in greedy.removal_order[:2])
    hits = []
    for row in rows:
        image = tiny_model.project(tiny_model.encode_vision(tiny_model.preprocess(row["image"], "high")))
        prefix = torch.cat([image, tiny_model.embed_tokens(tiny_model.tokenize(row["question"]))])[None]
        target = torch.cat([tiny_model.tokenize(row["answer"]), torch.tensor([tiny_model.eos_token_id])])
        hits.append(answer_nll(tiny_model, prefix, target, kept)[1])
    assert greedy.accuracy_drop[second] == pytest.approx(greedy.base_accuracy - sum(hits) / 3)


def test_greedy_json_round_trip(greedy, tmp_path):
    greedy.save(tmp_path / "importance.json")
    data = json.loads((tmp_path / "importance.json").read_text())
    assert data["method"] == GREEDY and ImportanceScores(**data) == greedy


def test_unknown_importance_method_is_refused(tiny_model):
    rows = load_vqa_dataset("synthetic", "validation", 1, seed=0)
    with pytest.raises(ValueError, match="unknown importance method 'random'; choose one of"):
        compute_importance(tiny_model, rows, dataset="synthetic", split="validation", seed=0, method="random")


def test_missing_importance_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        load_importance_scores(tmp_path / "nowhere.json", 8)


def test_no_samples_is_refused(tiny_model):
    with pytest.raises(ValueError, match="no samples"):
        compute_importance(tiny_model, [], dataset="synthetic", split="validation", seed=0)


@pytest.fixture(scope="module")
def curve(tiny_model):
    rows = load_vqa_dataset("synthetic", "validation", 6, seed=0)
    return depth_curve(tiny_model, rows, tiny_model.importance)


def test_depth_curve_adds_blocks_by_importance_then_lowers_top_k(tiny_model, curve):
    """8 depth points (block 0, then later blocks most important first), then top-k 1..4 at full depth."""
    depth, experts = curve[:8], curve[8:]
    assert [p.num_blocks for p in depth] == list(range(1, 9)) and {p.top_k for p in depth} == {4}
    assert depth[0].blocks == (0,)
    ranked = sorted(range(1, 8), key=lambda i: -tiny_model.importance[i])
    for n in range(2, 9):
        assert set(depth[n - 1].blocks) == {0, *ranked[: n - 1]}
    assert [p.top_k for p in experts] == [1, 2, 3, 4] and all(p.blocks == tuple(range(8)) for p in experts)
    assert depth[-1].nll == pytest.approx(experts[-1].nll) and depth[-1].accuracy == experts[-1].accuracy


def test_depth_curve_scores_each_family_like_the_importance_base(tiny_model, curve):
    """The full-plan point is the importance scores' base; family accuracies average to it."""
    rows = load_vqa_dataset("synthetic", "validation", 6, seed=0)
    base = compute_importance(tiny_model, rows, dataset="synthetic", split="validation", seed=0)
    full = curve[7]
    assert full.nll == pytest.approx(base.base_nll, rel=1e-5) and full.accuracy == base.base_accuracy
    assert sorted(full.family_accuracy) == sorted({row["family"] for row in rows})
    assert sum(full.family_accuracy.values()) / 6 == pytest.approx(full.accuracy)  # one row per family
    assert len({p.nll for p in curve[8:]}) == 4  # each top-k really changes the computation


def test_depth_curve_needs_samples(tiny_model):
    with pytest.raises(ValueError, match="at least one question"):
        depth_curve(tiny_model, [], tiny_model.importance)
