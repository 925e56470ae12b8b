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


def test_a_document_without_exactly_one_image_is_refused(tmp_path, molmoe):
    dataset = load_vqa_dataset("text_vqa", "validation", 1, seed=0, data_dir=write_hub_repo(tmp_path / "tv", "text_vqa"))
    answerer = BudgetedAnswerer(LmmsArgs(budget_ms=100.0, model_path=molmoe, warmup=0))
    two = SimpleNamespace(args=("q", {}, lambda doc: [doc["image"], doc["image"]], 0, TASK, "validation"))
    with pytest.raises(ValueError, match=f"task {TASK}: document 0 has 2 images; .* exactly one image"):
        answerer.generate_until([two], {TASK: {"validation": dataset}})
