"""The real datasets load from each layout a user has on disk, with nothing downloaded."""

from __future__ import annotations

from pathlib import Path

import datasets
import huggingface_hub
import pytest
from PIL import UnidentifiedImageError

from adactrl.data import (
    CAPTION_PROMPT,
    VQA_FEATURES,
    DatasetUnavailableError,
    dataset_of_family,
    load_vqa_dataset,
    metric_for_family,
    read_rows,
)
from adactrl.training.rollout import SampleError, prepare_sample
from tests.data.layouts import (
    ANSWERS,
    CAPTIONS,
    OKVQA_TYPES,
    VQA_TYPES,
    SPLITS,
    rows,
    write_arrow_cache,
    write_hub_cache,
    write_hub_repo,
)

NAMES = ("text_vqa", "coco_2014_vqa", "okvqa", "coco_caption")
FAMILIES = {
    "text_vqa": ["text_vqa"] * 3,
    "coco_2014_vqa": [f"coco_2014_vqa:{t}" for t in VQA_TYPES],
    "okvqa": [f"okvqa:{t}" for t in OKVQA_TYPES],
    "coco_caption": ["coco_caption"] * 3,
}


@pytest.fixture
def caches(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """Empty hub and datasets caches of this test only (conftest already keeps HOME and HF_HOME
    in a temporary directory and sets HF_HUB_OFFLINE=1)."""
    hub, arrow = tmp_path / "hf" / "hub", tmp_path / "hf" / "datasets"
    hub.mkdir(parents=True)
    arrow.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(arrow))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", Path(arrow))
    return hub, arrow


def _by_id(dataset: datasets.Dataset) -> dict[int, dict]:
    return {row["question_id"]: row for row in dataset}


def check_rows(dataset: datasets.Dataset, name: str) -> None:
    assert dataset.features == VQA_FEATURES
    assert len(dataset) == 3
    by_id = _by_id(dataset)
    first_id = 179765 if name == "coco_caption" else 1000
    assert sorted(by_id) == [first_id, first_id + 1, first_id + 2]
    for i in range(3):
        row = by_id[first_id + i]
        assert row["image"].size == (12, 10)
        assert row["family"] == FAMILIES[name][i]
        if name == "coco_caption":
            assert row["question"] == CAPTION_PROMPT
            assert row["answers"] == CAPTIONS[i] and row["answer"] == CAPTIONS[i][0]
        else:
            assert row["question"].endswith("?")
            assert row["answers"] == ANSWERS[i]
    if name != "coco_caption":  # the most frequent answer; "2" (5 of 10) beats "two" (3)
        assert [by_id[first_id + i]["answer"] for i in range(3)] == ["stop", "2", "yes"]


@pytest.mark.parametrize("name", NAMES)
def test_loads_from_a_hub_repository_download(tmp_path, caches, name):
    root = write_hub_repo(tmp_path / "repo", name)
    check_rows(load_vqa_dataset(name, "validation", 10, seed=0, data_dir=root), name)


@pytest.mark.parametrize("name", NAMES)
def test_loads_from_the_hub_cache_offline(tmp_path, caches, name):
    write_hub_cache(caches[0], name)
    check_rows(load_vqa_dataset(name, "validation", 10, seed=0), name)


@pytest.mark.parametrize("name", NAMES)
def test_loads_from_the_datasets_arrow_cache_offline(tmp_path, caches, name):
    write_arrow_cache(caches[1], name, write_hub_repo(tmp_path / "source", name))
    check_rows(load_vqa_dataset(name, "validation", 10, seed=0), name)


@pytest.mark.parametrize("name", NAMES)
def test_loads_from_save_to_disk_folders(tmp_path, caches, name):
    source = write_hub_repo(tmp_path / "source", name)
    splits = datasets.DatasetDict(
        {s: datasets.Dataset.from_parquet(str(source / "data" / f"{s}-00000-of-00001.parquet")) for s in SPLITS[name]}
    )
    splits.save_to_disk(tmp_path / "dict")
    check_rows(load_vqa_dataset(name, "validation", 10, seed=0, data_dir=tmp_path / "dict"), name)
    for split, dataset in splits.items():  # one folder per split
        dataset.save_to_disk(tmp_path / "per_split" / split)
    check_rows(load_vqa_dataset(name, "validation", 10, seed=0, data_dir=tmp_path / "per_split"), name)


def test_real_split_names_alias_and_dataset_folders(tmp_path, caches):
    for name in NAMES:
        write_hub_repo(tmp_path / "all" / name, name)
    # One --data_dir for a mix: a folder per dataset; each dataset's own split names work too.
    assert len(load_vqa_dataset("okvqa", "val2014", 10, seed=0, data_dir=tmp_path / "all")) == 3
    assert len(load_vqa_dataset("coco_caption", "val", 10, seed=0, data_dir=tmp_path / "all")) == 3
    assert len(load_vqa_dataset("text_vqa", "train", 10, seed=0, data_dir=tmp_path / "all")) == 3
    check_rows(load_vqa_dataset("vqav2", "validation", 10, seed=0, data_dir=tmp_path / "all"), "coco_2014_vqa")
    assert load_vqa_dataset("synthetic", "test", 2, seed=0, data_dir=tmp_path / "all")["question_id"] == [
        20_000_000, 20_000_001,
    ]  # fmt: skip


def test_parquet_without_datasets_metadata_still_decodes_images(tmp_path, caches):
    root = write_hub_repo(tmp_path / "repo", "okvqa", with_metadata=False)
    check_rows(load_vqa_dataset("okvqa", "validation", 10, seed=0, data_dir=root), "okvqa")


def test_seeded_subset(tmp_path, caches):
    root = write_hub_repo(tmp_path / "repo", "text_vqa")
    one = load_vqa_dataset("text_vqa", "validation", 2, seed=3, data_dir=root)["question_id"]
    assert len(one) == 2 and one == load_vqa_dataset("text_vqa", "validation", 2, seed=3, data_dir=root)["question_id"]


def test_rows_stay_memory_mapped_and_mix_with_synthetic(tmp_path, caches):
    root = write_hub_repo(tmp_path / "repo", "text_vqa")
    real = load_vqa_dataset("text_vqa", "train", 2, seed=0, data_dir=root)
    arrow_files = sorted(caches[1].rglob("*.arrow"))
    again = load_vqa_dataset("text_vqa", "train", 3, seed=1, data_dir=root)
    assert sorted(caches[1].rglob("*.arrow")) == arrow_files  # a second load writes nothing
    # The image column is the cached Arrow file's, mapped; selection keeps an index list.
    assert [f["filename"] for f in again.cache_files] == [str(p) for p in arrow_files]
    assert real._indices is not None and real._indices.column(0).to_pylist() != [0, 1]
    mixed = datasets.concatenate_datasets([load_vqa_dataset("synthetic", "train", 2, seed=0), real])
    assert mixed.features == VQA_FEATURES and len(mixed) == 4 and mixed[3]["family"] == "text_vqa"


def test_metric_and_dataset_follow_the_family():
    assert [dataset_of_family(f) for f in ("text_vqa", "coco_2014_vqa:yes/no", "okvqa:one", "color")] == [
        "text_vqa", "coco_2014_vqa", "okvqa", "synthetic",
    ]  # fmt: skip
    assert metric_for_family("coco_caption") == "cider"
    assert [metric_for_family(f) for f in ("text_vqa", "coco_2014_vqa:yes/no", "okvqa:one", "color")] == ["vqa"] * 4


class _Tokenizes:
    def tokenize(self, question: str) -> list[int]:
        return [len(question)]


def test_undecodable_image_rows_are_skipped_by_the_rollout(tmp_path, caches):
    root = write_hub_repo(tmp_path / "repo", "text_vqa", corrupt_row=1)
    dataset = load_vqa_dataset("text_vqa", "validation", 10, seed=0, data_dir=root)
    bad = dataset["question_id"].index(1001)
    with pytest.raises(UnidentifiedImageError):
        dataset[bad]  # decoding is lazy: the load succeeds, reading the row fails
    with pytest.raises(SampleError, match="cannot identify image"):
        prepare_sample(dataset, bad, _Tokenizes())
    good = [prepare_sample(dataset, i, _Tokenizes()) for i in range(3) if i != bad]
    assert [s.answers for s in good] and all(len(s.answers) == 10 for s in good)
    rows, skipped = read_rows(dataset)  # for callers that read the whole split at once
    assert [r["question_id"] for r in rows] == [q for q in dataset["question_id"] if q != 1001]
    assert len(skipped) == 1 and skipped[0].startswith(f"row {bad}: UnidentifiedImageError")


# ----------------------------------------------------------------------------- bad input


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown dataset 'textvqa'.*'text_vqa'"):
        load_vqa_dataset("textvqa", "validation", 2, seed=0)


def test_missing_dataset_names_the_fetch_command_and_the_flag(caches):
    with pytest.raises(DatasetUnavailableError) as info:
        load_vqa_dataset("text_vqa", "validation", 2, seed=0)
    message = str(info.value)
    assert "text_vqa (lmms-lab/textvqa" in message
    assert "hf download --repo-type dataset lmms-lab/textvqa --include 'data/validation-*' --local-dir DIR" in message
    assert "--data_dir DIR" in message


def test_data_dir_in_the_wrong_layout(tmp_path, caches):
    (tmp_path / "okvqa" / "images").mkdir(parents=True)
    (tmp_path / "okvqa" / "questions.json").write_text("[]")
    with pytest.raises(ValueError, match=r"does not hold okvqa in a known layout \(found \['images', 'questions.json'\]\)"
                       r".*data/<split>-00000-of-0000N.parquet.*lmms-lab/OK-VQA.*hf download"):  # fmt: skip
        load_vqa_dataset("okvqa", "validation", 2, seed=0, data_dir=tmp_path / "okvqa")
    with pytest.raises(FileNotFoundError, match="--data_dir .*missing is not a directory; to fetch text_vqa"):
        load_vqa_dataset("text_vqa", "validation", 2, seed=0, data_dir=tmp_path / "missing")


def test_data_dir_of_another_dataset(tmp_path, caches):
    root = write_hub_repo(tmp_path / "repo", "okvqa", splits=("validation",))
    with pytest.raises(ValueError, match=r"coco_caption: the data has no column \['answer'\].*not lmms-lab/COCO-Caption2017"):
        load_vqa_dataset("coco_caption", "validation", 2, seed=0, data_dir=root)


def test_corrupt_parquet_shard(tmp_path, caches):
    root = write_hub_repo(tmp_path / "repo", "coco_2014_vqa")
    shard = root / "data" / "validation-00000-of-00001.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # an interrupted download
    with pytest.raises(ValueError, match=r"coco_2014_vqa: .*validation-00000-of-00001.parquet is not a readable parquet "
                       r"file.*hf download --repo-type dataset lmms-lab/VQAv2 data/validation-00000-of-00001.parquet"):  # fmt: skip
        load_vqa_dataset("coco_2014_vqa", "validation", 2, seed=0, data_dir=root)


def test_split_that_does_not_exist(tmp_path, caches):
    root = write_hub_repo(tmp_path / "repo", "okvqa")
    with pytest.raises(ValueError, match=r"okvqa has no split 'train' in --data_dir .*; its splits are \['val2014'\]"):
        load_vqa_dataset("okvqa", "train", 2, seed=0, data_dir=root)
    with pytest.raises(ValueError, match=r"coco_2014_vqa has no split 'train' in lmms-lab/VQAv2; its splits are "
                       r"\['validation', 'testdev', 'test'\]"):  # fmt: skip
        load_vqa_dataset("vqav2", "train", 2, seed=0)


@pytest.mark.parametrize(("name", "split", "use"), [("text_vqa", "test", "validation"),
                                                    ("coco_2014_vqa", "testdev", "validation"),
                                                    ("coco_caption", "test", "validation")])  # fmt: skip
def test_unannotated_split_is_refused_naming_the_split_to_use(tmp_path, caches, name, split, use):
    root = write_hub_repo(tmp_path / "repo", name)
    match = f"{name} split '{split}' has no answers .*cannot train or evaluate: use split '{use}'"
    with pytest.raises(ValueError, match=match):
        load_vqa_dataset(name, split, 2, seed=0, data_dir=root)
    with pytest.raises(ValueError, match=match):  # the hub's split list says so before any download
        load_vqa_dataset(name, split, 2, seed=0)


def test_dataset_with_no_answers(tmp_path, caches):
    # A validation split whose rows carry no answers (e.g. test rows saved under the wrong name).
    root = write_hub_repo(tmp_path / "repo", "text_vqa", splits=("validation",))
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.data.layouts import SCHEMAS

    unannotated = rows("text_vqa", "test")
    pq.write_table(pa.Table.from_pydict(unannotated, schema=SCHEMAS["text_vqa"].arrow_schema),
                   root / "data" / "validation-00000-of-00001.parquet")  # fmt: skip
    with pytest.raises(ValueError, match=r"text_vqa split 'validation' has no answers in the 3 rows drawn.*"
                       r"'answers' column"):  # fmt: skip
        load_vqa_dataset("text_vqa", "validation", 5, seed=0, data_dir=root)


def test_textvqa_fixture_runs_through_the_tiny_molmoe(tmp_path, caches):
    """The mechanics end to end, in process: real-layout rows through a random MolmoE checkpoint's
    static sweep (accuracy near 0 with random weights), the undecodable row skipped and counted."""
    from adactrl.models.molmoe import MolmoEVLM
    from adactrl.models.molmoe.random_checkpoint import write_random_checkpoint
    from adactrl.profiling import sweep

    model = MolmoEVLM.load(write_random_checkpoint(tmp_path / "molmoe"))
    dataset = load_vqa_dataset("text_vqa", "validation", 3, seed=0,
                               data_dir=write_hub_repo(tmp_path / "repo", "text_vqa", corrupt_row=2))  # fmt: skip
    rows, skipped = read_rows(dataset)
    assert len(rows) == 2 and len(skipped) == 1
    assert all(prepare_sample(dataset, i, model).question for i, q in enumerate(dataset["question_id"]) if q != 1002)
    plans = model.knob_space.static_plans(model.importance)[:2]
    records = sweep(model, rows, plans, max_new_tokens=3)
    assert len(records) == 4 and {r.family for r in records} == {"text_vqa"}
    assert all(0.0 <= r.accuracy <= 1.0 for r in records)


def test_data_dir_reaches_the_workers_splits_and_the_commands(tmp_path, caches):
    import argparse

    from adactrl.commands import evaluate, profile, train
    from adactrl.training.rollout import load_split

    write_hub_repo(tmp_path / "data" / "text_vqa", "text_vqa")
    mixed = load_split(("synthetic", "text_vqa"), "validation", 2, seed=0, data_dir=str(tmp_path / "data"))
    assert len(mixed) == 4 and mixed["family"][2:] == ["text_vqa", "text_vqa"]
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    for command in (train, evaluate, profile):
        command.add_parser(sub)
    args = parser.parse_args(["train", "--dataset_names", "text_vqa", "--data_dir", "data"])
    assert train.config_from_args(args).data.data_dir == str(Path("data").resolve())  # absolute: workers run elsewhere
    assert parser.parse_args(["evaluate", "--controller", "c.pt", "--data_dir", "d"]).data_dir == "d"
    assert parser.parse_args(["profile", "--data_dir", "d"]).data_dir == "d"


def test_adactrl_profile_on_a_textvqa_fixture_with_the_tiny_molmoe(tmp_path, caches, capsys):
    import json

    from adactrl.cli import main
    from adactrl.models.molmoe.random_checkpoint import write_random_checkpoint

    data = write_hub_repo(tmp_path / "textvqa", "text_vqa", corrupt_row=2)
    out = tmp_path / "profile"
    argv = ["profile", "--model_path", str(write_random_checkpoint(tmp_path / "molmoe")), "--dataset_name", "text_vqa",
            "--split", "validation", "--data_dir", str(data), "--num_samples", "3", "--output_dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "skipped 1 rows whose image does not decode" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary and all(0.0 <= plan["accuracy"] <= 1.0 for plan in summary)  # random weights: near 0
