"""The `adactrl` command line, in process, on the shipped model."""

import argparse
import json
import shutil

import pyarrow.parquet as pq
import pytest
import torch

from adactrl.cli import build_parser, main, normalise_flags
from adactrl.controller import Controller, ControllerConfig, save_controller
from adactrl.executor import STAGES
from adactrl.knobs import KnobSpace
from adactrl.models.embedded import IMPORTANCE_FILE, EmbeddedVLM, shipped_model_dir
from adactrl.models.importance import FORMAT


@pytest.fixture
def shared_model(monkeypatch, shipped_model):
    """Commands get the session's shipped model instead of reading the checkpoint again."""
    real_load = EmbeddedVLM.load.__func__

    def load(cls, directory=None):
        return shipped_model if directory is None else real_load(cls, directory)

    monkeypatch.setattr(EmbeddedVLM, "load", classmethod(load))
    return shipped_model


@pytest.fixture
def question(tmp_path, synthetic_rows):
    row = synthetic_rows[0]
    path = tmp_path / "question.png"
    row["image"].save(path)
    return str(path), row["question"]


def infer(question, *extra: str) -> int:
    image, prompt = question
    return main(["infer", "--image", image, "--prompt", prompt, *extra])


def test_infer_prints_answer_knobs_and_latency(question, capsys):
    assert infer(question, "--budget", "200") == 0  # the real load, from the shipped assets
    out = capsys.readouterr().out
    assert out.startswith("answer: ")
    assert "untrained" in out
    assert "knobs: tier=" in out and "top_k=" in out and "num_blocks=" in out
    assert "latency (ms): controller=" in out and "decode=" in out
    assert "vs budget 200.00 ms" in out


def test_infer_json(shared_model, question, capsys):
    assert infer(question, "--budget", "200", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {
        "answer", "controller", "knobs", "latency_ms", "budget_ms", "met_budget", "image_tokens", "prompt_tokens",
        "warmup_runs",
    }  # fmt: skip
    assert set(report["knobs"]) == {"tier", "insertion", "top_k", "num_blocks", "blocks"}
    assert len(report["knobs"]["blocks"]) == report["knobs"]["num_blocks"]
    assert set(report["latency_ms"]) == {*STAGES, "total"}
    assert report["budget_ms"] == 200.0
    assert report["met_budget"] == (report["latency_ms"]["total"] <= 200.0)
    assert report["image_tokens"] in (9, 45, 90)
    assert report["controller"].startswith("untrained")


def test_infer_warmup_runs_the_same_request_untimed_first(shared_model, question, capsys, monkeypatch):
    from adactrl.controller import adaptive

    runs = []
    real = adaptive.execute
    monkeypatch.setattr(adaptive, "execute", lambda *a, **k: runs.append(real(*a, **k)) or runs[-1])
    reports = []
    for warmup in ("0", "2"):
        assert infer(question, "--budget", "100", "--warmup", warmup, "--json") == 0
        reports.append(json.loads(capsys.readouterr().out))
    assert len(runs) == 1 + 3  # one timed run, then two untimed and the timed one
    assert [r["warmup_runs"] for r in reports] == [0, 2]
    assert reports[0]["knobs"] == reports[1]["knobs"] and reports[0]["answer"] == reports[1]["answer"]
    assert reports[1]["latency_ms"]["total"] == pytest.approx(runs[-1].latency_ms["total"], abs=1e-3)


def test_infer_refuses_a_negative_warmup(shared_model, question, capsys):
    assert infer(question, "--budget", "100", "--warmup", "-1") == 2
    assert "--warmup must be 0 or more" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_infer_on_a_gpu(question, capsys):
    # its own load: moving the session's shared model to the GPU would move it for every test
    assert infer(question, "--budget", "100", "--device", "cuda", "--json") == 0
    assert json.loads(capsys.readouterr().out)["latency_ms"]["total"] > 0


@pytest.mark.parametrize("budget", ["0", "-5", "nan", "inf"])
def test_infer_refuses_bad_budgets(shared_model, question, capsys, budget):
    assert infer(question, "--budget", budget) == 2
    err = capsys.readouterr().err
    assert "--budget" in err and "above 0" in err


def test_infer_missing_image_names_the_path(shared_model, tmp_path, capsys):
    missing = str(tmp_path / "no_such_image.png")
    assert infer((missing, "what shape is the big object ?"), "--budget", "100") == 2
    assert missing in capsys.readouterr().err


def test_infer_unknown_words_are_named(shared_model, question, capsys):
    assert infer((question[0], "what colour is the zebra ?"), "--budget", "100") == 2
    err = capsys.readouterr().err
    assert "'colour', 'zebra'" in err and "--list_vocabulary" in err


def test_infer_needs_image_prompt_and_budget(shared_model, capsys):
    assert main(["infer", "--prompt", "what digit is in the box ?"]) == 2
    assert "--image, --budget" in capsys.readouterr().err


def test_list_vocabulary(shared_model, capsys):
    assert main(["infer", "--list_vocabulary"]) == 0
    assert capsys.readouterr().out.split() == shared_model.tokenizer.vocabulary()


def test_dashed_flags_still_work_for_one_release_with_a_warning(shared_model, capsys):
    assert main(["infer", "--list-vocabulary"]) == 0
    out, err = capsys.readouterr()
    assert out.split() == shared_model.tokenizer.vocabulary()
    assert "--list-vocabulary is deprecated" in err and "use --list_vocabulary" in err


def test_every_flag_of_every_command_is_spelled_with_underscores():
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    dashed = {f"{name} {flag}" for name, command in commands.choices.items()
              for flag in command._option_string_actions if flag.startswith("--") and "-" in flag[2:]}  # fmt: skip
    assert not dashed


def test_normalise_flags_leaves_values_and_positionals_after_the_separator_alone():
    parser = build_parser()
    argv = ["tune", "--num-samples=2", "--", "--num-epochs", "1"]
    assert normalise_flags(parser, argv) == ["tune", "--num_samples=2", "--", "--num-epochs", "1"]


def test_infer_with_a_controller_checkpoint(shared_model, question, tmp_path, capsys):
    path = tmp_path / "controller.pt"
    save_controller(path, Controller(ControllerConfig(d_model=128, seed=1), shared_model.knob_space))
    assert infer(question, "--budget", "100", "--controller", str(path), "--json") == 0
    assert json.loads(capsys.readouterr().out)["controller"] == str(path)


def test_infer_refuses_a_controller_for_another_knob_space(shared_model, question, tmp_path, capsys):
    other = KnobSpace.from_model(16, 8, min_block_fraction=0.5)  # blocks 8..16, not 12..16
    path = tmp_path / "other.pt"
    save_controller(path, Controller(ControllerConfig(d_model=128), other))
    assert infer(question, "--budget", "100", "--controller", str(path)) == 2
    err = capsys.readouterr().err
    assert "another KnobSpace" in err and "num_blocks_values" in err


def test_profile_writes_table_summary_and_plot(shared_model, tmp_path, capsys):
    output = tmp_path / "profile"
    assert main(["profile", "--num_samples", "2", "--output_dir", str(output)]) == 0
    assert "75 plans x 2 samples" in capsys.readouterr().out
    table = pq.read_table(output / "profile.parquet")
    assert table.num_rows == 75 * 2
    assert {"plan", "accuracy", "latency_ms", "decode_ms"} <= set(table.column_names)
    summary = json.loads((output / "summary.json").read_text())
    assert len(summary) == 75
    assert any(row["pareto"] for row in summary)
    assert [row["latency_ms"] for row in summary] == sorted(row["latency_ms"] for row in summary)
    assert (output / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_importance_writes_json_into_the_model_directory(tmp_path, capsys):
    model_dir = shutil.copytree(shipped_model_dir(), tmp_path / "model")
    (model_dir / IMPORTANCE_FILE).unlink(missing_ok=True)
    assert main(["importance", "--model_path", str(model_dir), "--num_samples", "2"]) == 0
    assert "importance over 2 samples" in capsys.readouterr().out
    data = json.loads((model_dir / IMPORTANCE_FILE).read_text())
    assert data["format"] == FORMAT and data["num_samples"] == 2 and data["split"] == "validation"
    assert len(data["scores"]) == 16 and data["method"] == "loss_increase_greedy_removal"
    assert sorted(data["removal_order"]) == list(range(1, 16))
    assert EmbeddedVLM.load(model_dir).importance == tuple(data["scores"])
    other = tmp_path / "loo.json"
    args = ["importance", "--model_path", str(model_dir), "--num_samples", "1", "--method", "leave_one_out"]
    assert main([*args, "--output", str(other)]) == 0
    assert json.loads(other.read_text())["method"] == "loss_increase_leave_one_out"


def test_pretrain_embedded_flags_reach_the_config(monkeypatch, tmp_path):
    from adactrl.commands import importance as importance_command
    from adactrl.models import pretrain as pretrain_module

    seen = {}
    monkeypatch.setattr(pretrain_module, "pretrain", lambda config, log: seen.update(config=config))
    monkeypatch.setattr(importance_command, "write_importance", lambda *args: seen.setdefault("importance", args))
    args = ["pretrain-embedded", "--output_dir", str(tmp_path), "--steps", "7", "--warm_fraction", "0.3"]
    assert main([*args, "--full_plan_fraction", "0.5", "--max_minutes", "2", "--no_rising_knob_weights", "--no_stem_self_only"]) == 0
    config = seen["config"]
    assert (config.steps, config.warm_fraction, config.full_plan_fraction, config.max_minutes) == (7, 0.3, 0.5, 2.0)
    assert not config.rising_knob_weights and not config.stem_self_only and config.slot_ramp_fraction == 0.2
    assert config.vision_steps == pretrain_module.PretrainConfig.vision_steps  # unset flags keep the defaults
    assert main([*args, "--expert_size", "8", "--num_experts", "32", "--top_k_draw_fraction", "0.25"]) == 0
    assert (seen["config"].expert_size, seen["config"].num_experts, seen["config"].top_k_draw_fraction) == (8, 32, 0.25)
    assert seen["importance"][0] == str(tmp_path)
