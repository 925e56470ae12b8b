"""VQA datasets with one set of columns (VQA_FEATURES): the synthetic set, built in memory, and
TextVQA, VQAv2, OK-VQA and COCO captions, read from a --data_dir, the Hugging Face cache or the hub
(adactrl.data.real; docs/datasets.md)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import datasets

from adactrl.data.real import (
    CAPTION_PROMPT,
    DATASET_ALIASES,
    REAL_DATASETS,
    DatasetUnavailableError,
    RealDataset,
    dataset_of_family,
    load_real_dataset,
    metric_for_family,
    read_rows,
    real_dataset,
)
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

HF_DATASET_IDS: dict[str, str] = {name: spec.hub_id for name, spec in REAL_DATASETS.items()} | {
    alias: REAL_DATASETS[name].hub_id for alias, name in DATASET_ALIASES.items()
}
DATASET_NAMES: tuple[str, ...] = ("synthetic", *HF_DATASET_IDS)

__all__ = [
    "CAPTION_PROMPT",
    "DATASET_NAMES",
    "FAMILIES",
    "HF_DATASET_IDS",
    "IMAGE_SIZE",
    "NUM_ANSWERS",
    "REAL_DATASETS",
    "SPLITS",
    "VOCABULARY",
    "VQA_FEATURES",
    "DatasetUnavailableError",
    "RealDataset",
    "SyntheticSample",
    "SyntheticVQAConfig",
    "canonical_answer",
    "check_datasets",
    "dataset_of_family",
    "generate_sample",
    "load_vqa_dataset",
    "make_synthetic_vqa",
    "metric_for_family",
    "read_rows",
    "real_dataset",
]


def load_vqa_dataset(
    name: str, split: str, num_samples: int, seed: int, *, data_dir: str | Path | None = None
) -> datasets.Dataset:
    """A VQA dataset with VQA_FEATURES columns.

    "synthetic" generates `num_samples` questions of `split` from `seed`. The real sets take a
    seeded random subset of at most `num_samples` rows of `split` (the dataset's own split name,
    or 'validation' for its validation split), with images decoded only when a row is read.
    `data_dir` holds the dataset, or one folder per dataset named as `name` or as its hub
    repository (DIR/text_vqa or DIR/textvqa); see adactrl.data.real for the sources tried after it."""
    if name == "synthetic":  # generated: a data_dir (given for the real sets of a mix) is not read
        return make_synthetic_vqa(SyntheticVQAConfig(num_questions=num_samples, seed=seed, split=split))
    if name not in HF_DATASET_IDS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATASET_NAMES)}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    return load_real_dataset(real_dataset(name), split, num_samples, seed, data_dir=data_dir)


def check_datasets(
    names: Sequence[str], sizes: Mapping[str, int], seed: int, *, data_dir: str | Path | None = None
) -> None:
    """Load the splits (split -> rows) of each real dataset in `names` once, so that a missing or
    malformed dataset fails where this runs (the driver, before Ray starts) with its message,
    not in a rollout worker. Cheap: the rows are memory-mapped, and the Arrow file a parquet
    shard becomes is cached for the workers."""
    for name in names:
        if name != "synthetic":
            for split, num_samples in sizes.items():
                load_vqa_dataset(name, split, num_samples, seed, data_dir=data_dir)
