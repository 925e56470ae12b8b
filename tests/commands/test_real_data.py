"""`adactrl train`, `profile` and `evaluate` on dataset fixtures in the hub repositories' layouts,
with the tiny MolmoE fixture. Its weights are random, so accuracy is near 0: what is tested is the
mechanics (a mix trained and reported per dataset, each dataset scored by its own metric)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from adactrl.cli import main
from adactrl.data import load_vqa_dataset, read_rows
from adactrl.eval import CiderD, vqa_score
from tests.data.layouts import CAPTIONS, SCHEMAS, rows, write_hub_repo

TINY = ["--num_epochs", "1", "--num_train_samples", "2", "--num_val_samples", "1", "--batch_size", "2",
        "--group_size", "2", "--num_workers", "1", "--budget_range_ms", "5", "2000", "--num_val_budgets", "1",
        "--max_new_tokens", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def molmoe(tmp_path_factory) -> str:
    from adactrl.models.molmoe.random_checkpoint import write_random_checkpoint

    return str(write_random_checkpoint(tmp_path_factory.mktemp("molmoe")))


def test_train_on_textvqa_and_captions_then_evaluate_textvqa(ray_local, molmoe, tmp_path, capsys):
    data = tmp_path / "data"
    write_hub_repo(data / "text_vqa", "text_vqa")
    write_hub_repo(data / "coco_caption", "coco_caption", splits=("train", "val"))  # a train split, as docs/datasets.md says
    run, db = tmp_path / "run", f"sqlite:///{tmp_path / 'm.db'}"
    argv = ["train", "--model_path", molmoe, "--dataset_names", "text_vqa", "coco_caption", "--data_dir", str(data),
            "--output_dir", str(run), "--oracle_samples", "2", "--mlflow_tracking_uri", db, *TINY]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "\n  coco_caption " in printed and "\n  text_vqa " in printed  # the summary's per-dataset rows
    with (run / "validation_history.csv").open() as f:
        history = list(csv.DictReader(f))
    per_dataset = [f"val/{d}/{m}" for d in ("text_vqa", "coco_caption")
                   for m in ("accuracy", "latency_ms", "violation_rate", "reward")]  # fmt: skip
    assert len(history) == 2 and all(key in history[-1] for key in per_dataset)
    assert all(0.0 <= float(row[f"val/{d}/accuracy"]) <= 1.0 for row in history for d in ("text_vqa", "coco_caption"))
    summary = json.loads((run / "summary.json").read_text())
    assert {"untrained controller", "static Pareto oracle"} <= set(summary["rows"])
    assert all(key in metrics for metrics in summary["rows"].values() for key in per_dataset)
    client = MlflowClient(db)
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("adactrl-train").experiment_id])
    assert set(per_dataset) <= set(mlflow_run.data.metrics)
    assert mlflow_run.data.tags["adactrl.datasets"] == "text_vqa,coco_caption"

    out = tmp_path / "evaluate"
    argv = ["evaluate", "--controller", str(run / "best_model.pt"), "--model_path", molmoe, "--dataset_name",
            "text_vqa", "--data_dir", str(data), "--split", "validation", "--num_samples", "3", "--profile_split",
            "train", "--profile_samples", "2", "--num_budgets", "2", "--static_plans", "none", "--baselines", "oracles",
            "--no_budget_token_check", "--max_new_tokens", "2", "--output_dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "evaluation.json").read_text())
    assert report["dataset"]["name"] == "text_vqa" and report["dataset"]["num_samples"] == 3
    controller = [row for row in report["rows"] if row["method"] == "controller"]
    assert len(controller) == 2 and all(row["num_requests"] == 3 and 0.0 <= row["accuracy"] <= 1.0 for row in controller)
    with (out / "requests.csv").open() as f:
        requests = list(csv.DictReader(f))
    assert {r["family"] for r in requests} == {"text_vqa"} and {int(r["question_id"]) for r in requests} == {1000, 1001, 1002}


def _static_answers(model_path: str, data: Path) -> set[str]:
    """The tiny MolmoE's answers to the first caption image under every static plan."""
    from adactrl.executor import StaticPolicy, execute
    from adactrl.models import load_model

    model = load_model(model_path)
    (row,) = [r for r in read_rows(load_vqa_dataset("coco_caption", "val", 3, 0, data_dir=data))[0]
              if r["question_id"] == 179765]  # fmt: skip
    plans = model.knob_space.static_plans(model.importance)
    return {execute(model, row["image"], row["question"], StaticPolicy(p)).answer for p in plans}


def test_captions_are_scored_by_cider_in_profile_and_evaluate(molmoe, tmp_path):
    """Row 0's references include the model's own answers, so some scores are above 0; each is
    CIDEr-D / 10 against the split's references (not the VQA score), in the profile table and
    in `adactrl evaluate`'s requests alike."""
    from adactrl.controller import Controller, ControllerConfig, save_controller
    from adactrl.models import load_model
    from adactrl.profiling import read_profile

    data = write_hub_repo(tmp_path / "coco", "coco_caption")
    answers = sorted(_static_answers(molmoe, data))
    val = rows("coco_caption", "val")
    val["answer"][0] = [*answers, *CAPTIONS[0]][:5]
    pq.write_table(pa.Table.from_pydict(val, schema=SCHEMAS["coco_caption"].arrow_schema),
                   data / "data" / "val-00000-of-00001.parquet")  # fmt: skip
    references = {179765 + i: refs for i, refs in enumerate(val["answer"])}
    cider = CiderD(list(references.values()))

    common = ["--model_path", molmoe, "--dataset_name", "coco_caption", "--data_dir", str(data), "--num_samples", "3"]
    assert main(["profile", *common, "--split", "validation", "--output_dir", str(tmp_path / "profile")]) == 0
    profile = read_profile(tmp_path / "profile")
    model = load_model(molmoe)
    assert len(profile) == 3 * len(model.knob_space.static_plans(model.importance))
    for record in profile:
        refs = references[record.question_id]
        assert record.accuracy == pytest.approx(cider.score(record.answer, refs) / 10, abs=1e-12)
    scored = [r for r in profile if r.accuracy > 0]
    assert scored and all(r.accuracy != pytest.approx(vqa_score(r.answer, references[r.question_id])) for r in scored)

    save_controller(tmp_path / "c.pt", Controller(ControllerConfig(d_model=model.hidden_size, seed=0), model.knob_space))
    out = tmp_path / "evaluate"
    argv = ["evaluate", "--controller", str(tmp_path / "c.pt"), *common, "--split", "val", "--profile",
            str(tmp_path / "profile"), "--num_budgets", "1", "--static_plans", "all", "--baselines", "oracles",
            "--no_budget_token_check", "--output_dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    by_plan = {(r.question_id, r.plan): r.accuracy for r in profile}
    with (out / "requests.csv").open() as f:
        requests = list(csv.DictReader(f))
    assert {r["family"] for r in requests} == {"coco_caption"}
    assert len(requests) == 3 * (3 + len(by_plan) // 3)  # controller, the two oracles and every static plan
    for request in requests:  # the controller may pick an insertion point the profile did not sweep
        if request["kind"] != "controller":
            assert float(request["accuracy"]) == pytest.approx(by_plan[(int(request["question_id"]), request["plan"])])
        assert 0.0 <= float(request["accuracy"]) <= 1.0


# ----------------------------------------------------------------------------- bad input, as the CLI reports it


def test_a_dataset_in_no_source_exits_2_with_the_fetch_command(tmp_path, capsys, monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    argv = ["profile", "--dataset_name", "okvqa", "--split", "validation", "--output_dir", str(tmp_path / "p")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "okvqa (lmms-lab/OK-VQA, split 'val2014') is not available" in err
    assert "hf download --repo-type dataset lmms-lab/OK-VQA --include 'data/val2014-*' --local-dir DIR" in err


def test_training_on_a_dataset_without_a_train_split_fails_before_ray_starts(tmp_path, capsys):
    data = tmp_path / "data"
    write_hub_repo(data / "text_vqa", "text_vqa")
    write_hub_repo(data / "okvqa", "okvqa")  # the hub repository has val2014 only
    argv = ["train", "--dataset_names", "text_vqa", "okvqa", "--data_dir", str(data), "--output_dir", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "okvqa has no split 'train' in --data_dir" in err and "add a train split with lmms-lab/OK-VQA's columns" in err
    argv[2:4] = ["text_vqa", "coco_caption"]  # a folder of datasets without this one
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "does not hold coco_caption in a known layout" in err and f"add {data}/coco_caption beside" in err
    assert not (tmp_path / "r" / "train.log").exists()


def test_training_rollouts_and_validation_score_captions_by_cider(molmoe, tmp_path):
    """The reward's accuracy term and validation use CIDEr-D / 10 on caption rows: each record's
    accuracy is that of its plan's answer (the greedy answer of the same knobs run statically:
    the controller appends no budget token by default) against the split's references."""
    from adactrl.controller import Controller, ControllerConfig
    from adactrl.controller.policy import actions_to_knobs
    from adactrl.executor import StaticPolicy, execute
    from adactrl.reward import RewardConfig
    from adactrl.training.config import DataConfig, WorkerConfig
    from adactrl.training.records import EvalRequest, RolloutRequest
    from rollout_workers import RolloutWorker

    data = tmp_path / "data"
    write_hub_repo(data / "coco_caption", "coco_caption", splits=("train", "val"))
    config = WorkerConfig(
        controller=ControllerConfig(d_model=64, seed=0), reward=RewardConfig(), model_path=molmoe,
        data=DataConfig(dataset_names=("coco_caption",), num_train_samples=3, num_val_samples=3, data_dir=str(data)),
    )  # fmt: skip
    model = RolloutWorker(config, 0).model
    space = model.knob_space
    plans = [p for at in space.insertion_positions for p in space.static_plans(model.importance, at)]
    first = load_vqa_dataset("coco_caption", "train", 3, 0, data_dir=data / "coco_caption")
    own = sorted({execute(model, first[0]["image"], first[0]["question"], StaticPolicy(p)).answer for p in plans})
    for split in ("train", "val"):  # the first image's references hold the model's own answers (in every
        table = rows("coco_caption", split)  # image's, their document frequency would weigh them 0)
        table["answer"][0] = [*own, *CAPTIONS[0]][:5]
        pq.write_table(pa.Table.from_pydict(table, schema=SCHEMAS["coco_caption"].arrow_schema),
                       data / "coco_caption" / "data" / f"{split}-00000-of-00001.parquet")  # fmt: skip
    config = WorkerConfig(**{**config.__dict__, "controller": ControllerConfig(d_model=model.hidden_size, seed=0)})
    worker = RolloutWorker(config, 0)
    worker.load_weights(0, Controller(config.controller, space).state_dict())
    batches = {"train": worker.rollout(RolloutRequest(1, 0, (0, 1, 2), (50.0, 50.0, 50.0), 2, 0, 7)).records,
               "validation": worker.evaluate(EvalRequest((0, 1, 2), (50.0,), 0)).records}  # fmt: skip
    scored = []
    for split, records in batches.items():
        rows_ = worker.splits[split]
        cider = CiderD(rows_["answers"])
        assert records and all(r.family == "coco_caption" for r in records)
        for record in records:
            knobs = record.knobs if split == "validation" else actions_to_knobs(space, record.actions)
            row = rows_[record.sample_id]
            answer = execute(worker.model, row["image"], row["question"],
                             StaticPolicy(space.plan(*knobs, model.importance))).answer  # fmt: skip
            assert record.accuracy == pytest.approx(cider.score(answer, row["answers"]) / 10, abs=1e-12)
            scored.append(record.accuracy)
    assert any(score > 0 for score in scored)
