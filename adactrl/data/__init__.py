"""VQA datasets with one set of columns (VQA_FEATURES): the synthetic set, built in memory, and
TextVQA, VQAv2 and OK-VQA, read from the local Hugging Face cache."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import datasets

from adactrl.data.synthetic import (
    FAMILIES,
    IMAGE_SIZE,
    NUM_ANSWERS,
    SPLITS,
    VOCABULARY,
    VQA_FEATURES,
    SyntheticSample,
    SyntheticVQAConfig,
    canonical_answer,
    generate_sample,
    make_synthetic_vqa,
)

HF_DATASET_IDS: dict[str, str] = {
    "text_vqa": "lmms-lab/textvqa",
    "vqav2": "HuggingFaceM4/VQAv2",
    "okvqa": "HuggingFaceM4/OK-VQA",
}
DATASET_NAMES: tuple[str, ...] = ("synthetic", *HF_DATASET_IDS)

__all__ = [
    "DATASET_NAMES",
    "FAMILIES",
    "HF_DATASET_IDS",
    "IMAGE_SIZE",
    "NUM_ANSWERS",
    "SPLITS",
    "VOCABULARY",
    "VQA_FEATURES",
    "SyntheticSample",
    "SyntheticVQAConfig",
    "canonical_answer",
    "generate_sample",
    "load_vqa_dataset",
    "make_synthetic_vqa",
]


def load_vqa_dataset(name: str, split: str, num_samples: int, seed: int) -> datasets.Dataset:
    """A VQA dataset with VQA_FEATURES columns.

    "synthetic" generates `num_samples` questions of `split` from `seed`. The real sets take a
    seeded random subset of at most `num_samples` rows of `split`, with `family` set to the
    dataset name and `answer` to the most frequent annotator answer."""
    if name == "synthetic":
        return make_synthetic_vqa(SyntheticVQAConfig(num_questions=num_samples, seed=seed, split=split))
    if name not in HF_DATASET_IDS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATASET_NAMES)}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    hf_id = HF_DATASET_IDS[name]
    try:
        raw = datasets.load_dataset(hf_id, split=split)
    except Exception as err:  # no network, not cached, unknown split: the remedy is the same
        raise RuntimeError(
            f"could not load {name} ({hf_id}, split {split!r}): {err}. The dataset must be in the "
            f"local Hugging Face cache: load it once with network access "
            f"(datasets.load_dataset({hf_id!r}, split={split!r})), then run with HF_DATASETS_OFFLINE=1"
        ) from err
    subset = raw.shuffle(seed=seed).select(range(min(num_samples, len(raw))))
    return _to_vqa_columns(subset, name)


def _answer_strings(answers: Sequence[str | Mapping[str, str]] | None) -> list[str]:
    """VQAv2 and OK-VQA store each answer as a record with an "answer" field, TextVQA as a string.
    Unannotated rows (test splits) give no answers, which canonical_answer then refuses."""
    return [a["answer"] if isinstance(a, Mapping) else a for a in answers or ()]


def _to_vqa_columns(raw: datasets.Dataset, family: str) -> datasets.Dataset:
    def convert(answers: Sequence[str | Mapping[str, str]] | None) -> dict[str, object]:
        strings = _answer_strings(answers)
        return {"answers": strings, "answer": canonical_answer(strings), "family": family}

    mapped = raw.map(convert, input_columns="answers")
    return mapped.select_columns(list(VQA_FEATURES)).cast(VQA_FEATURES)
