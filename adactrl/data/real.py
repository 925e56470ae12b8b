"""TextVQA, VQAv2, OK-VQA and COCO captions in VQA_FEATURES columns, with nothing downloaded at
run time unless the hub is reachable and the dataset is nowhere local.

Sources, in order; the first that holds the dataset is used:

1. `data_dir`: the hub repository's files as `hf download --repo-type dataset ID --local-dir DIR`
   writes them (parquet shards `DIR/data/<split>-00000-of-0000N.parquet`), or a `save_to_disk`
   folder (a DatasetDict, one Dataset per split folder, or one Dataset that records its split).
2. the Hugging Face hub cache (a `hf download` without `--local-dir`), read offline;
3. the datasets Arrow cache that `datasets.load_dataset(ID)` left, when it has one;
4. the hub, when it is reachable: the split's parquet shards only, into the hub cache.

Every source ends as a memory-mapped Arrow table. The derived columns (answers as strings,
question_id, family, answer) are a few bytes a row and held in memory; the images stay in the
mapped file and decode only when a row is read, so a worker holds no copy of a split.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets.naming import camelcase_to_snakecase
from datasets.table import InMemoryTable, concat_tables

from adactrl.data.synthetic import VQA_FEATURES, canonical_answer

CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."
"""The question of every caption row: lmms-eval's coco2017_cap_val prompt, so both frameworks ask alike."""


@dataclass(frozen=True)
class RealDataset:
    """One public dataset: where it lives on the hub and how its columns map to VQA_FEATURES."""

    name: str
    hub_id: str
    splits: tuple[str, ...]
    """The hub repository's split names (its `data/<split>-*.parquet` prefixes)."""
    unannotated: tuple[str, ...]
    """Splits whose answers only the evaluation server holds: refused for training and evaluation."""
    answers_column: str
    """A list of strings, or of records with an `answer` field."""
    family_column: str | None = None
    """Per-row type that becomes `family` as '<name>:<type>'; None: family is the dataset name."""
    metric: str = "vqa"
    """'vqa' (VQA accuracy) or 'cider' (CIDEr-D / 10): see adactrl.eval.answer_score."""
    caption: bool = False
    """Rows are images to caption: the question is CAPTION_PROMPT, the answers the reference captions."""
    aliases: Mapping[str, str] = field(default_factory=dict)
    """The project's split names ('validation', ...) for this dataset's own ones."""

    @property
    def annotated_split(self) -> str:
        """The split to name when a caller asks for an unannotated one: the validation split."""
        annotated = [s for s in self.splits if s not in self.unannotated]
        return "validation" if self.aliases.get("validation", "validation") in annotated else annotated[0]

    def fetch_hint(self, split: str | None = None) -> str:
        include = f" --include 'data/{split}-*'" if split else ""
        return (f"on a connected machine run `hf download --repo-type dataset {self.hub_id}{include} "
                f"--local-dir DIR` (huggingface_hub >= 1.0; older releases spell it `huggingface-cli download`), "
                f"copy DIR here and pass --data_dir DIR")  # fmt: skip


# Schemas, read from each repository's dataset card (the `dataset_info` block of README.md) and its
# file listing on huggingface.co; the fixtures in tests/data/ write these same columns.
# - lmms-lab/textvqa: image_id str, question_id int32, question str, question_tokens list<str>,
#   image, image_width/height int32, flickr_original_url/flickr_300k_url str, answers list<str>,
#   image_classes list<str>, set_name str, ocr_tokens list<str>. Splits train (34,602 rows, 20
#   shards), validation (5,000), test (5,734, answers withheld).
# - lmms-lab/VQAv2: question_type str, multiple_choice_answer str, answers list<{answer str,
#   answer_confidence str, answer_id int64}>, image_id int64, answer_type str, question_id int64,
#   question str, image. Splits validation (214,354), testdev and test (answers withheld); no train.
# - lmms-lab/OK-VQA: question_id str, image, question str, answers list<str>, question_type str,
#   answer_type str. One split, val2014 (5,046).
# - lmms-lab/COCO-Caption2017: question_id str (the image file name, "000000179765.jpg"), image,
#   question str, answer list<str> (5 reference captions), id int64, license int8, file_name,
#   coco_url, height/width int32, date_captured. Splits val (5,000) and test (40,670, captions
#   withheld). The card's feature block was not in the reference material: these columns come from
#   lmms-eval's coco_cap task (utils.py reads question_id, answer, id) and from a derived copy's card.
REAL_DATASETS: dict[str, RealDataset] = {
    spec.name: spec
    for spec in (
        RealDataset("text_vqa", "lmms-lab/textvqa", ("train", "validation", "test"), ("test",), "answers"),
        # answer_type (yes/no, number, other) is the breakdown the official VQA evaluation reports;
        # the 65 question_type prefixes ("what is the") would make families too small to compare.
        RealDataset("coco_2014_vqa", "lmms-lab/VQAv2", ("validation", "testdev", "test"), ("testdev", "test"),
                    "answers", family_column="answer_type"),
        # question_type holds OK-VQA's knowledge category, as the annotation files code it ("one".."ten", "other").
        RealDataset("okvqa", "lmms-lab/OK-VQA", ("val2014",), (), "answers", family_column="question_type",
                    aliases={"validation": "val2014"}),
        RealDataset("coco_caption", "lmms-lab/COCO-Caption2017", ("val", "test"), ("test",), "answer",
                    metric="cider", caption=True, aliases={"validation": "val"}),
    )
}  # fmt: skip
DATASET_ALIASES: dict[str, str] = {"vqav2": "coco_2014_vqa"}


class DatasetUnavailableError(FileNotFoundError):
    """The dataset is in none of the sources: the message says how to fetch it (the CLI prints it
    and exits 2, as for any missing file)."""


def real_dataset(name: str) -> RealDataset:
    """The RealDataset called `name` (or an alias of it); KeyError for any other name."""
    return REAL_DATASETS[DATASET_ALIASES.get(name, name)]


def dataset_of_family(family: str) -> str:
    """The dataset a row of this family comes from, to report metrics per dataset: the real set's
    name ('coco_2014_vqa:yes/no' -> 'coco_2014_vqa'), 'synthetic' for the synthetic families."""
    name = family.split(":", 1)[0]
    return name if name in REAL_DATASETS else "synthetic"


def metric_for_family(family: str) -> str:
    """The metric that scores a row of this family: 'cider' for captions, 'vqa' for every other row."""
    name = dataset_of_family(family)
    return REAL_DATASETS[name].metric if name in REAL_DATASETS else "vqa"


def load_real_dataset(
    spec: RealDataset, split: str, num_samples: int, seed: int, *, data_dir: str | Path | None = None
) -> datasets.Dataset:
    """A seeded random subset of at most `num_samples` rows of `split`, in VQA_FEATURES columns,
    from the first source that holds it (see the module docstring)."""
    raw, split = _load_raw(spec, split, data_dir)
    converted, lengths = _to_vqa_columns(raw, spec, split)
    order = np.random.default_rng(seed).permutation(len(converted))[:num_samples]
    if len(order) == 0 or not lengths[order].any():
        raise ValueError(
            f"{spec.name} split {split!r} has no answers in the {len(order)} rows drawn: it cannot train "
            f"or evaluate; use split {spec.annotated_split!r}, or check that the files hold {spec.hub_id}'s "
            f"'{spec.answers_column}' column"
        )
    return converted.select(order)


def read_rows(dataset: datasets.Dataset) -> tuple[list[dict], list[str]]:
    """Every row with its image decoded, and why each other row could not be read (an image that
    does not decode): for callers that read a whole split at once, to skip and count those rows
    as the rollout workers do."""
    rows, skipped = [], []
    for index in range(len(dataset)):
        try:
            rows.append(dataset[index])
        except (OSError, ValueError) as err:  # PIL's UnidentifiedImageError is an OSError
            skipped.append(f"row {index}: {type(err).__name__}: {err}")
    return rows, skipped


def _load_raw(spec: RealDataset, split: str, data_dir: str | Path | None) -> tuple[datasets.Dataset, str]:
    if data_dir is not None:
        root = Path(data_dir)
        names = (spec.name, *(a for a, n in DATASET_ALIASES.items() if n == spec.name), spec.hub_id.split("/")[-1])
        return _from_dir(spec, split, next((root / n for n in names if (root / n).is_dir()), root), "--data_dir")
    split = _resolve_split(spec, split, spec.splits, spec.hub_id)
    try:
        cached = _hub_snapshot(spec, split, local_files_only=True)
    except Exception:  # not in the hub cache: the next source
        cached = None
    if cached is not None and any((cached / "data").glob(f"{split}-*.parquet")):
        return _from_dir(spec, split, cached, "the hub cache")
    namespace, repo = spec.hub_id.split("/")
    cache_error = ""
    if (Path(datasets.config.HF_DATASETS_CACHE) / f"{namespace}___{camelcase_to_snakecase(repo)}").is_dir():
        # What datasets.load_dataset(hub_id) left on a connected machine: read offline, or checked
        # against the hub when it is reachable.
        try:
            return datasets.load_dataset(spec.hub_id, split=split), split
        except Exception as err:  # another config or an incomplete cache: the hub may still have it
            cache_error = f"; the datasets cache holds {spec.hub_id} but could not give it ({err})"
    try:  # the hub: only this split's shards, into the hub cache, where the next run finds them
        downloaded = _hub_snapshot(spec, split, local_files_only=False)
    except Exception as err:  # offline, no network, a gated repo: the remedy is the same
        raise DatasetUnavailableError(
            f"{spec.name} ({spec.hub_id}, split {split!r}) is not available: no --data_dir was given, it is "
            f"not in the Hugging Face cache and the hub could not be read ({type(err).__name__}: {err}){cache_error}. "
            f"To fetch it, {spec.fetch_hint(split)}"
        ) from err
    return _from_dir(spec, split, downloaded, "the hub")


def _hub_snapshot(spec: RealDataset, split: str, *, local_files_only: bool) -> Path:
    from huggingface_hub import snapshot_download

    path = snapshot_download(spec.hub_id, repo_type="dataset", allow_patterns=[f"data/{split}-*"],
                             local_files_only=local_files_only)  # fmt: skip
    return Path(path)


def _resolve_split(spec: RealDataset, split: str, available: tuple[str, ...], where: str) -> str:
    """The dataset's own name for `split`; refuses a missing or unannotated split with what to use."""
    resolved = split if split in available else spec.aliases.get(split, split)
    if resolved not in available:
        todo = (f"; to train on {spec.name}, add a train split with {spec.hub_id}'s columns to your --data_dir "
                f"(data/train-00000-of-00001.parquet; docs/datasets.md)" if split == "train" else
                "; ask for one of them")  # fmt: skip
        raise ValueError(
            f"{spec.name} has no split {split!r} in {where}; its splits are {list(available)}"
            + (f" (or {dict(spec.aliases)})" if spec.aliases else "") + todo
        )
    if resolved in spec.unannotated:
        raise ValueError(
            f"{spec.name} split {resolved!r} has no answers ({spec.hub_id} leaves them to its evaluation "
            f"server), so it cannot train or evaluate: use split {spec.annotated_split!r}"
        )
    return resolved


def _splits_in_dir(spec: RealDataset, root: Path) -> tuple[str, ...]:
    return tuple(sorted({_shard_split(p) for p in (root / "data").glob("*.parquet")}))


def _shard_split(path: Path) -> str:
    # Split names cannot contain '-': "validation-00000-of-00003.parquet" (and the older
    # "train-00000-of-00001-7bef204ed1eed12f.parquet") belong to the split before the first '-'.
    return path.name.split("-", 1)[0].removesuffix(".parquet")


def _from_dir(spec: RealDataset, split: str, root: Path, flag: str) -> tuple[datasets.Dataset, str]:
    if not root.is_dir():
        raise FileNotFoundError(f"{flag} {root} is not a directory; to fetch {spec.name}, {spec.fetch_hint()}")
    if (root / "data").is_dir() and any((root / "data").glob("*.parquet")):
        split = _resolve_split(spec, split, _splits_in_dir(spec, root), f"{flag} {root}")
        return _read_parquet(spec, split, sorted((root / "data").glob(f"{split}-*.parquet")), root), split
    if (root / "dataset_dict.json").is_file():
        saved = datasets.load_from_disk(str(root))
        split = _resolve_split(spec, split, tuple(saved), f"{flag} {root}")
        return saved[split], split
    per_split = tuple(sorted(p.parent.name for p in root.glob("*/state.json")))
    if per_split:
        split = _resolve_split(spec, split, per_split, f"{flag} {root}")
        return datasets.load_from_disk(str(root / split)), split
    if (root / "state.json").is_file():
        saved = datasets.load_from_disk(str(root))
        recorded = (str(saved.split),) if saved.split is not None else ()
        if not recorded:
            raise ValueError(f"{flag} {root} is one saved Dataset with no split recorded: save {spec.name} as a "
                             f"DatasetDict (dataset_dict.save_to_disk) or one folder per split (DIR/<split>)")  # fmt: skip
        return saved, _resolve_split(spec, split, recorded, f"{flag} {root}")
    found = sorted(p.name for p in root.iterdir())[:10]
    folders = {*REAL_DATASETS, *DATASET_ALIASES, *(other.hub_id.split("/")[-1] for other in REAL_DATASETS.values())}
    others = sorted(set(found) & folders)
    mix = f" (a folder of several datasets: add {root}/{spec.name} beside {others})" if others else ""
    raise ValueError(
        f"{flag} {root} does not hold {spec.name} in a known layout (found {found}){mix}: expected parquet shards "
        f"{root}/data/<split>-00000-of-0000N.parquet as the hub repository {spec.hub_id} has them, or a "
        f"save_to_disk folder; to fetch it, {spec.fetch_hint()}"
    )


def _read_parquet(spec: RealDataset, split: str, shards: list[Path], root: Path) -> datasets.Dataset:
    for shard in shards:
        try:
            pq.read_metadata(shard)  # the footer: a truncated or overwritten shard fails here
        except (OSError, pa.ArrowException) as err:
            raise ValueError(
                f"{spec.name}: {shard} is not a readable parquet file ({err}); fetch it again with `hf download "
                f"--repo-type dataset {spec.hub_id} {shard.relative_to(root)} --local-dir {root}`"
            ) from err
    try:
        # Converted once to an Arrow file in the datasets cache, then memory-mapped by every reader.
        return datasets.load_dataset("parquet", data_files={split: [str(s) for s in shards]}, split=split)
    except Exception as err:
        raise ValueError(f"{spec.name}: could not read the parquet shards {[s.name for s in shards]} under "
                         f"{root} ({type(err).__name__}: {err}); fetch them again: {spec.fetch_hint()}") from err  # fmt: skip


def _to_vqa_columns(raw: datasets.Dataset, spec: RealDataset, split: str) -> tuple[datasets.Dataset, np.ndarray]:
    """`raw` in VQA_FEATURES columns, and each row's number of answers.

    The image column is the mapped file's own; the other columns are built for every row (a few
    bytes each), so a later `select` keeps an index list instead of copying images."""
    needed = ["image", spec.answers_column, "question_id"] + ([] if spec.caption else ["question"])
    needed += [spec.family_column] if spec.family_column else []
    missing = [c for c in needed if c not in raw.column_names]
    if missing:
        raise ValueError(f"{spec.name}: the data has no column {missing} (it has {raw.column_names}); "
                         f"it is not {spec.hub_id}: {spec.fetch_hint()}")  # fmt: skip
    table = raw.data
    answers = _answer_lists(table.column(spec.answers_column).combine_chunks(), spec)
    lengths = pc.fill_null(pc.list_value_length(answers), 0).to_numpy(zero_copy_only=False)
    n = len(raw)
    if spec.caption:
        question = pa.array([CAPTION_PROMPT] * n, pa.string())
    else:
        question = pc.cast(table.column("question").combine_chunks(), pa.string())
    if spec.family_column:
        types = table.column(spec.family_column).to_pylist()
        family = pa.array([f"{spec.name}:{t}" for t in types], pa.string())
    else:
        family = pa.array([spec.name] * n, pa.string())
    derived = pa.table(
        {
            "question": question,
            "answers": answers,
            "question_id": pa.array(_question_ids(table.column("question_id").to_pylist(), spec), pa.int64()),
            "family": family,
            "answer": pa.array([canonical_answer(a) if a else "" for a in answers.to_pylist()], pa.string()),
        }
    )
    image = raw.data.select(["image"]) if isinstance(raw.features["image"], datasets.Image) else None
    if image is None:  # parquet written without the datasets metadata: the {bytes, path} struct as is
        image = raw.data.select(["image"]).cast(pa.schema([VQA_FEATURES.arrow_schema.field("image")]))
    joined = concat_tables([image, InMemoryTable(derived)], axis=1)
    return datasets.Dataset(joined, info=datasets.DatasetInfo(features=VQA_FEATURES), split=split), lengths


def _answer_lists(column: pa.Array, spec: RealDataset) -> pa.ListArray:
    """Each row's answers as a list of strings; a null list (an unannotated row) becomes empty."""
    if not pa.types.is_list(column.type) and not pa.types.is_large_list(column.type):
        raise ValueError(f"{spec.name}: column {spec.answers_column!r} is {column.type}, not a list of answers")
    values = pc.list_flatten(column)
    if pa.types.is_struct(values.type):  # VQAv2: records with an `answer` field
        values = pc.struct_field(values, "answer")
    lengths = pc.fill_null(pc.list_value_length(column), 0)
    offsets = np.concatenate([[0], np.cumsum(lengths.to_numpy(zero_copy_only=False))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pc.cast(values, pa.string()))


def _question_ids(values: list, spec: RealDataset) -> list[int]:
    """int64 ids: integers as stored; OK-VQA's digit strings; COCO captions' image file names
    ("000000179765.jpg" -> 179765, as lmms-eval's coco_cap task reads them)."""
    ids = []
    for value in values:
        digits = re.sub(r"\D", "", str(value).rsplit("_", 1)[-1].split(".", 1)[0])
        if not digits:
            raise ValueError(f"{spec.name}: question_id {value!r} holds no number")
        ids.append(int(digits))
    return ids
