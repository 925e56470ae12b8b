"""One loader for every model kind, and errors that name the file and what to do."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from adactrl.models import load_model
from adactrl.models.embedded import EmbeddedVLM, shipped_model_dir
from adactrl.models.importance import load_importance_scores
from adactrl.models.molmoe import SEED_IMPORTANCE, MolmoEVLM, run_case
from adactrl.models.molmoe.random_checkpoint import build_tokenizer

SHARD = "model-00002-of-00002.safetensors"


@pytest.fixture
def copy_of(molmoe_dir, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(molmoe_dir, target)
    return target


def test_load_model_tells_the_kind_from_config_json(molmoe_dir):
    assert isinstance(load_model(None), EmbeddedVLM)
    assert isinstance(load_model(shipped_model_dir()), EmbeddedVLM)
    model = load_model(molmoe_dir, device="cpu", dtype=torch.float32)
    assert isinstance(model, MolmoEVLM) and model.lm_head.weight.dtype == torch.float32


def test_an_unrecognised_directory_gets_what_was_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no config.json.*looked for .*model_type.*molmo"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ValueError, match=r"matches no model adactrl knows; looked for"):
        load_model(tmp_path)


def test_an_unknown_model_type_is_named(copy_of):
    config = json.loads((copy_of / "config.json").read_text())
    (copy_of / "config.json").write_text(json.dumps(config | {"model_type": "llava"}))
    with pytest.raises(ValueError, match=r"config.json: model_type 'llava' is not supported; adactrl loads 'molmo'"):
        load_model(copy_of)


def test_a_missing_shard_is_named_before_anything_loads(copy_of):
    (copy_of / SHARD).unlink()
    with pytest.raises(FileNotFoundError, match=rf"lists shards that are not in .*\['{SHARD}'\]; finish the download"):
        load_model(copy_of)


def test_a_truncated_shard_is_named(copy_of):
    data = (copy_of / SHARD).read_bytes()
    (copy_of / SHARD).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{SHARD} is truncated or corrupt .*re-download this file"):
        load_model(copy_of)


def test_a_tokenizer_without_image_tokens_is_named(copy_of):
    plain = build_tokenizer()
    data = json.loads(plain.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if not t["content"].startswith("<im_")]
    (copy_of / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"tokenizer.json lacks the image tokens \['<im_start>'"):
        load_model(copy_of)


def test_a_dtype_the_device_cannot_run_is_refused(molmoe_dir):
    with pytest.raises(ValueError, match=r"torch.int64 .* is not a floating-point type"):
        load_model(molmoe_dir, dtype=torch.int64)


def test_an_undecodable_image_is_named(molmoe_dir, tmp_path):
    bad = tmp_path / "photo.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"cannot decode image .*photo.jpg"):
        run_case(molmoe_dir, bad, "what is it?", {"top_k": None, "skip_blocks": [], "max_crops": None}, 1)


def test_bf16_weights_stream_into_one_allocation(molmoe_dir):
    model = load_model(molmoe_dir, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    reference = load_model(molmoe_dir)
    assert torch.equal(model.lm.layers[1].mlp.experts.gate_up_proj, reference.lm.layers[1].mlp.experts.gate_up_proj.bfloat16())


def test_importance_accepts_the_seed_flat_format_and_the_project_format(tmp_path, copy_of):
    flat = {str(i): s for i, s in enumerate(SEED_IMPORTANCE)}
    (tmp_path / "flat.json").write_text(json.dumps(flat))
    assert load_importance_scores(tmp_path / "flat.json", 16) == SEED_IMPORTANCE
    (tmp_path / "own.json").write_text(json.dumps({"scores": list(SEED_IMPORTANCE)}))
    assert load_importance_scores(tmp_path / "own.json", 16) == SEED_IMPORTANCE
    (copy_of / "importance.json").write_text(json.dumps({"0": 0.9, "1": 0.1, "2": 0.5, "3": 0.2}))
    assert load_model(copy_of).importance == (0.9, 0.1, 0.5, 0.2)


def test_the_seed_scores_keep_block_0_first():
    assert len(SEED_IMPORTANCE) == 16 and max(SEED_IMPORTANCE) == SEED_IMPORTANCE[0] == 0.56


def test_tiers_map_to_a_configurable_number_of_crops(molmoe_dir, wide_image):
    model = load_model(molmoe_dir, tier_crops={"low": 1, "high": 4})
    assert model.knob_space.tiers == ("low", "high")
    assert model.preprocess(wide_image, "low").num_crops == 2  # the global crop + one
    with pytest.raises(ValueError, match="tier_crops applies to MolmoE"):
        load_model(None, tier_crops={"low": 1})


def test_importance_command_measures_a_molmoe_checkpoint(copy_of, capsys):
    from adactrl.commands.importance import write_importance

    path = write_importance(str(copy_of), "synthetic", 2, 0, None, "leave_one_out")
    assert path == copy_of / "importance.json"
    assert len(json.loads(path.read_text())["scores"]) == 4
    assert len(load_model(copy_of).importance) == 4
