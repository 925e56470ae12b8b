"""The lmms-eval model: its answering logic without lmms-eval (requests in, answers out, the
budget applied), and where lmms-eval is installed (`pip install 'adactrl[lmms]'`), one fixture
task through lmms-eval's own registry, task loading, generation loop and metric."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest

from adactrl.controller.adaptive import adaptive_infer
from adactrl.data import load_vqa_dataset
from adactrl.integrations import lmms
from adactrl.integrations.lmms import BudgetedAnswerer, LmmsArgs, cut_at_stops
from tests.data.layouts import write_hub_repo

TASK = "textvqa_fixture"


@pytest.fixture(scope="module")
def molmoe(tmp_path_factory) -> str:
    from adactrl.models.molmoe.random_checkpoint import write_random_checkpoint

    return str(write_random_checkpoint(tmp_path_factory.mktemp("molmoe")))


def test_model_args_are_checked_with_what_to_change():
    args = LmmsArgs.parse({"model_path": "m", "controller": "c.pt", "budget_ms": 200, "batch_size": "1", "device": "cpu"})
    assert (args.model_path, args.controller, args.budget_ms, args.device) == ("m", "c.pt", 200, "cpu")
    with pytest.raises(ValueError, match=r"needs budget_ms=MS .*budget_ms=200"):
        LmmsArgs.parse({"model_path": "m"})
    with pytest.raises(ValueError, match=r"unknown keys \['budget'\] .*'budget_ms'"):
        LmmsArgs.parse({"budget": 200})
    with pytest.raises(ValueError, match="budget_ms must be a number of milliseconds above 0, got -5"):
        LmmsArgs.parse({"budget_ms": -5})
    with pytest.raises(ValueError, match="budget_ms must be .* got 'fast'"):
        LmmsArgs.parse({"budget_ms": "fast"})
    with pytest.raises(ValueError, match="--batch_size 8: .* use --batch_size 1"):
        LmmsArgs.parse({"budget_ms": 200, "batch_size": 8})


def test_answers_stop_at_the_tasks_stop_strings():
    assert cut_at_stops("Paris ASSISTANT: more", ["ASSISTANT:"]) == "Paris"
    assert cut_at_stops(" two\n\nQuestion: x", ["\n\n", "Question:"]) == "two"
    assert cut_at_stops("yes", []) == "yes"


def test_pyproject_registers_the_model_with_lmms_eval():
    import tomllib
    from importlib import import_module
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    module, function = project["entry-points"]["lmms_eval.models"]["adactrl"].split(":")
    assert callable(getattr(import_module(module), function)) and project["optional-dependencies"]["lmms"]


def test_model_class_needs_lmms_eval_only_when_asked_for():
    assert lmms.MODEL_ID == "adactrl"
    if importlib.util.find_spec("lmms_eval") is None:
        with pytest.raises(ModuleNotFoundError, match="lmms_eval"):
            lmms.LmmsModel  # noqa: B018 - the attribute lmms-eval's registry imports
    with pytest.raises(AttributeError, match="no attribute 'Other'"):
        lmms.Other  # noqa: B018


def _requests(dataset, until=("ASSISTANT:",)):
    """lmms-eval Instances as its evaluator builds them for a generate_until task: args are
    (context, generation_kwargs, doc_to_visual, doc_id, task, split)."""
    return [SimpleNamespace(args=(f"{row['question']}\nAnswer briefly.", {"until": list(until)},
                                  lambda doc: [doc["image"]], i, TASK, "validation"))
            for i, row in enumerate(dataset)]  # fmt: skip


def test_requests_in_answers_out_at_the_budget(tmp_path, molmoe, monkeypatch):
    dataset = load_vqa_dataset("text_vqa", "validation", 3, seed=0, data_dir=write_hub_repo(tmp_path / "tv", "text_vqa"))
    answerer = BudgetedAnswerer(LmmsArgs(budget_ms=150.0, model_path=molmoe, max_new_tokens=3, warmup=1))
    seen = []
    import adactrl.controller.adaptive as adaptive

    def spy(model, controller, image, prompt, budget_ms, **kwargs):
        seen.append((prompt, budget_ms, kwargs["max_new_tokens"]))
        return adaptive_infer(model, controller, image, prompt, budget_ms, **kwargs)

    monkeypatch.setattr(adaptive, "adaptive_infer", spy)
    requests = _requests(dataset)
    texts = answerer.generate_until(requests, {TASK: {"validation": dataset}})
    # One timed run per request, at the budget, plus one untimed warm-up before the first.
    assert [s[1:] for s in seen] == [(150.0, 3)] * 4 and seen[0][0] == seen[1][0] == requests[0].args[0]
    assert [a.budget_ms for a in answerer.answers] == [150.0] * 3
    assert all(a.met == (a.latency_ms <= 150.0) and a.plan.count("/") == 3 for a in answerer.answers)
    # The same greedy inference as adaptive_infer's at that budget: the same plans and answers.
    for request, text, answer in zip(requests, texts, answerer.answers):
        direct = adaptive_infer(answerer.model, answerer.controller, dataset[request.args[3]]["image"].convert("RGB"),
                                request.args[0], 150.0, max_new_tokens=3)  # fmt: skip
        assert (answer.plan, text) == (direct.result.plan.name, cut_at_stops(direct.result.answer, ["ASSISTANT:"]))
    assert answerer.generate_until([], {}) == []


def test_a_trained_controller_checkpoint_is_loaded_with_its_thread_count(tmp_path, molmoe):
    import torch

    from adactrl.controller import Controller, ControllerConfig, save_controller
    from adactrl.models import load_model

    model = load_model(molmoe)
    saved = Controller(ControllerConfig(d_model=model.hidden_size, seed=5), model.knob_space)
    save_controller(tmp_path / "best_model.pt", saved, extra={"budget_range": {"num_threads": 1}})
    threads = torch.get_num_threads()
    try:
        answerer = BudgetedAnswerer(LmmsArgs.parse({"model_path": molmoe, "controller": str(tmp_path / "best_model.pt"),
                                                    "budget_ms": 80}))  # fmt: skip
        assert torch.get_num_threads() == 1  # budgets are milliseconds at the training run's thread count
    finally:
        torch.set_num_threads(threads)
    loaded = answerer.controller.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.state_dict().items())
    with pytest.raises(FileNotFoundError):
        BudgetedAnswerer(LmmsArgs(budget_ms=80.0, model_path=molmoe, controller=str(tmp_path / "missing.pt")))


def test_a_document_without_exactly_one_image_is_refused(tmp_path, molmoe):
    dataset = load_vqa_dataset("text_vqa", "validation", 1, seed=0, data_dir=write_hub_repo(tmp_path / "tv", "text_vqa"))
    answerer = BudgetedAnswerer(LmmsArgs(budget_ms=100.0, model_path=molmoe, warmup=0))
    two = SimpleNamespace(args=("q", {}, lambda doc: [doc["image"], doc["image"]], 0, TASK, "validation"))
    with pytest.raises(ValueError, match=f"task {TASK}: document 0 has 2 images; .* exactly one image"):
        answerer.generate_until([two], {TASK: {"validation": dataset}})


@pytest.mark.skipif(importlib.util.find_spec("lmms_eval") is None,
                    reason="lmms-eval is not installed (pip install 'adactrl[lmms]'); the tests above need none")
def test_a_fixture_task_through_lmms_eval_agrees_with_adactrl(tmp_path, molmoe):
    """lmms-eval's registry finds `--model adactrl` by its entry point, loads a TextVQA fixture
    with its own textvqa task definition and scores with its own VQA metric. Asked as `adactrl
    evaluate` asks (the question alone), it gets the answers and the per-question scores of
    adactrl's evaluation path at the same budget; row 0's annotators give the model's own answer,
    so the scores are not all 0."""
    import lmms_eval
    import pyarrow as pa
    import pyarrow.parquet as pq
    from lmms_eval import evaluator
    from lmms_eval.tasks import TaskManager

    from adactrl.data import read_rows
    from adactrl.evaluation import controller_method, run_requests
    from tests.data.layouts import SCHEMAS, rows

    budget, data = 150.0, write_hub_repo(tmp_path / "textvqa", "text_vqa")
    answerer = BudgetedAnswerer(LmmsArgs(budget_ms=budget, model_path=molmoe, max_new_tokens=3, warmup=0))
    validation = rows("text_vqa", "validation")
    image = load_vqa_dataset("text_vqa", "validation", 3, seed=0, data_dir=data).filter(lambda r: r["question_id"] == 1000)
    own = answerer.answer(image[0]["image"], validation["question"][0], until=["ASSISTANT:"]).text
    validation["answers"][0] = [own] * 10
    pq.write_table(pa.Table.from_pydict(validation, schema=SCHEMAS["text_vqa"].arrow_schema),
                   data / "data" / "validation-00000-of-00001.parquet")  # fmt: skip
    template = f"{lmms_eval.__path__[0]}/tasks/textvqa/_default_template_textvqa_yaml"
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / f"{TASK}.yaml").write_text(
        f"include: {template}\ntask: {TASK}\ndataset_path: {data}\ntest_split: validation\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
        "lmms_eval_specific_kwargs:\n  adactrl:\n    pre_prompt: ''\n    post_prompt: ''\n    ocr: false\n"
    )
    out = evaluator.simple_evaluate(
        model="adactrl", model_args=f"model_path={molmoe},budget_ms={budget},max_new_tokens=3,warmup=0",
        tasks=[TASK], task_manager=TaskManager(include_path=str(tmp_path / "tasks"), model_name="adactrl"),
        batch_size=1, device="cpu",
    )  # fmt: skip
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
    lmms_answers = [s["filtered_resps"][0] if isinstance(s["filtered_resps"], list) else s["filtered_resps"]
                    for s in samples]  # fmt: skip
    lmms_scores = [s["exact_match"] for s in samples]

    dataset = load_vqa_dataset("text_vqa", "validation", 3, seed=0, data_dir=data)
    by_id = {row["question_id"]: row for row in read_rows(dataset)[0]}
    ordered = [by_id[1000 + i] for i in range(3)]
    direct = [answerer.answer(r["image"], r["question"], until=["ASSISTANT:"]).text for r in ordered]
    records = run_requests(answerer.model, [controller_method(answerer.controller)], ordered, [budget],
                           max_new_tokens=3, warmup=0)  # fmt: skip
    assert lmms_answers == direct and direct[0] == own
    assert lmms_scores == [r.accuracy for r in records] and lmms_scores[0] == 1.0
    assert out["results"][TASK]["exact_match,none"] == pytest.approx(sum(lmms_scores) / 3)
