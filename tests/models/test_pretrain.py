import torch

from adactrl.data.synthetic import FAMILIES
from adactrl.models.embedded import EmbeddedVLM
from adactrl.models.pretrain import pretrain
from adactrl.models.pretrain_config import PretrainConfig


def _tiny(tmp_path, name: str, **overrides) -> PretrainConfig:
    settings = dict(steps=2, batch_size=2, vision_steps=3, eval_every=1, eval_questions=4, warmup_steps=1)
    settings.update(overrides)
    return PretrainConfig(output_dir=str(tmp_path / name), **settings)


def test_pretrain_runs_both_phases_and_saves_a_loadable_model(tmp_path):
    lines: list[str] = []
    pretrain(_tiny(tmp_path, "model", eval_questions=6), log=lines.append)  # one question per family
    assert sum(line.startswith("vision step") for line in lines) == 3  # eval_every=1: every step
    assert "low/pairs_f1" in lines[0] and "medium/pairs_f1" in lines[1] and "high/pairs_f1" in lines[2]  # tiers in turn
    val_lines = [line for line in lines if "val_first_token_acc" in line]
    assert len(val_lines) == 2  # steps 0 and 1
    assert all(f"{family} " in val_lines[0] for family in FAMILIES)  # per-family accuracy
    model = EmbeddedVLM.load(tmp_path / "model")
    assert model.config.num_layers == 16 and not model.training


def test_pretrain_is_deterministic_by_seed(tmp_path):
    pretrain(_tiny(tmp_path, "a", steps=1), log=lambda _: None)
    pretrain(_tiny(tmp_path, "b", steps=1), log=lambda _: None)
    first, second = EmbeddedVLM.load(tmp_path / "a"), EmbeddedVLM.load(tmp_path / "b")
    for (name, p), q in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(p, q), name
