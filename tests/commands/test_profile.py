import json

import torch

from adactrl.cli import main
from adactrl.profiling import read_profile


def test_all_insertions_sweeps_each_distinct_plan_once(tmp_path, tiny_model):
    model_dir = tmp_path / "model"
    tiny_model.save(model_dir, dtype=torch.float32)
    space = tiny_model.knob_space
    out = tmp_path / "profile"
    args = ["profile", "--model_path", str(model_dir), "--num_samples", "1", "--num_threads", "1", "--output_dir"]
    assert main([*args, str(out), "--all_insertions"]) == 0
    plans = {r.plan for r in read_profile(out)}
    n_tier, n_ins, n_k, n_b = space.sizes
    # below the default top-k every insertion point is its own plan; at it, they all run alike
    assert len(plans) == n_tier * n_b * ((n_k - 1) * n_ins + 1)
    assert {r.insertion for r in read_profile(out)} == set(space.insertion_positions)
    assert main([*args, str(tmp_path / "first")]) == 0
    assert len(json.loads((tmp_path / "first" / "summary.json").read_text())) == n_tier * n_k * n_b
