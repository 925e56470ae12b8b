import pytest

from adactrl.knobs import KnobSpace, Plan, select_blocks

MOLMOE_IMPORTANCE = tuple(float(16 - i) for i in range(16))


def test_from_model_molmoe_sizes():
    space = KnobSpace.from_model(16, 8)
    assert space.tiers == ("low", "medium", "high")
    assert space.insertion_positions == (1, 2, 3, 4, 5)
    assert space.top_k_values == (4, 5, 6, 7, 8)
    assert space.num_blocks_values == (12, 13, 14, 15, 16)
    assert space.sizes == (3, 5, 5, 5)


@pytest.mark.parametrize(
    ("layers", "top_k", "insertion", "top_ks", "blocks"),
    [
        # ceil(0.75 * 24) = 18 blocks at least; ceil(0.5 * 8) = 4 experts at least
        (24, 8, (1, 2, 3, 4, 5), (4, 5, 6, 7, 8), tuple(range(18, 25))),
        # ceil(0.75 * 32) = 24; ceil(0.5 * 16) = 8
        (32, 16, (1, 2, 3, 4, 5), tuple(range(8, 17)), tuple(range(24, 33))),
        # ceil(0.75 * 8) = 6; ceil(0.5 * 4) = 2
        (8, 4, (1, 2, 3, 4, 5), (2, 3, 4), (6, 7, 8)),
        # ceil(0.75 * 4) = 3 blocks, so insertion stops at 3 (blocks before stage 2 always run)
        (4, 2, (1, 2, 3), (1, 2), (3, 4)),
    ],
)
def test_from_model_scales_with_the_model(layers, top_k, insertion, top_ks, blocks):
    space = KnobSpace.from_model(layers, top_k)
    assert space.insertion_positions == insertion
    assert space.top_k_values == top_ks
    assert space.num_blocks_values == blocks


def test_knob_space_dict_round_trip():
    space = KnobSpace.from_model(24, 8, tiers=("low", "high"))
    assert KnobSpace.from_dict(space.to_dict()) == space


def test_select_blocks_keeps_the_head_then_the_most_important():
    importance = [9, 1, 5, 5, 3, 7]
    # keep 0, 1; later blocks by score: 5 (7), 2 (5), 3 (5), 4 (3) -> take 5 and 2
    assert select_blocks(importance, num_blocks=4, insertion=2) == (0, 1, 2, 5)
    # blocks before the insertion point run even when they score lowest
    assert select_blocks([0, 0, 4, 4, 4, 1], num_blocks=3, insertion=2) == (0, 1, 2)


def test_select_blocks_breaks_ties_toward_the_earlier_block():
    # later blocks 1..5 score 0, 4, 4, 4, 1: the three 4s tie, so 2 and 3 go first
    assert select_blocks([0, 0, 4, 4, 4, 1], num_blocks=3, insertion=1) == (0, 2, 3)
    assert select_blocks([1.0] * 6, num_blocks=4, insertion=1) == (0, 1, 2, 3)


def test_select_blocks_refuses_impossible_counts():
    with pytest.raises(ValueError, match="insertion"):
        select_blocks([1.0] * 6, num_blocks=2, insertion=3)
    with pytest.raises(ValueError, match="layers"):
        select_blocks([1.0] * 6, num_blocks=7, insertion=1)


def test_plan_runs_the_chosen_blocks():
    space = KnobSpace.from_model(16, 8)
    plan = space.plan("medium", 3, 6, 13, MOLMOE_IMPORTANCE)
    # depth-ordered scores: the first 13 blocks are the most important
    assert plan == Plan("medium", 3, 6, 13, tuple(range(13)))
    assert plan.name == "medium/ins3/k6/b13"
    assert plan.to_dict()["blocks"] == list(range(13))


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        (("ultra", 1, 8, 16), r"tier='ultra'.*\['low', 'medium', 'high'\]"),
        (("high", 6, 8, 16), r"insertion=6.*\[1, 2, 3, 4, 5\]"),
        (("high", 1, 3, 16), r"top_k=3.*\[4, 5, 6, 7, 8\]"),
        (("high", 1, 8, 11), r"num_blocks=11.*\[12, 13, 14, 15, 16\]"),
    ],
)
def test_plan_validation_names_the_knob_and_the_allowed_values(knobs, message):
    space = KnobSpace.from_model(16, 8)
    with pytest.raises(ValueError, match=message):
        space.plan(*knobs, MOLMOE_IMPORTANCE)


def test_plan_refuses_importance_of_another_depth():
    space = KnobSpace.from_model(16, 8)
    with pytest.raises(ValueError, match="importance has 20 scores but the model has 16 blocks"):
        space.plan("high", 1, 8, 16, [1.0] * 20)


def test_full_plan_is_the_model_as_built():
    space = KnobSpace.from_model(16, 8)
    assert space.full_plan(MOLMOE_IMPORTANCE) == Plan("high", 1, 8, 16, tuple(range(16)))


def test_static_plans_cover_the_grid_at_one_insertion_point():
    space = KnobSpace.from_model(16, 8)
    plans = space.static_plans(MOLMOE_IMPORTANCE)
    assert len(plans) == 3 * 5 * 5
    assert len({p.name for p in plans}) == 75
    assert {p.insertion for p in plans} == {1}
    assert {p.insertion for p in space.static_plans(MOLMOE_IMPORTANCE, insertion=4)} == {4}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_layers": 1, "default_top_k": 1},
        {"num_layers": 16, "default_top_k": 8, "top_k_values": (4, 9)},
        {"num_layers": 16, "default_top_k": 8, "num_blocks_values": (16, 12)},
        {"num_layers": 16, "default_top_k": 8, "insertion_positions": (1, 13), "num_blocks_values": (12,)},
        {"num_layers": 16, "default_top_k": 8, "tiers": ("low", "low")},
    ],
)
def test_knob_space_rejects_inconsistent_values(kwargs):
    with pytest.raises(ValueError):
        KnobSpace(**kwargs)
