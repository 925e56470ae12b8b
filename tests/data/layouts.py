"""Tiny copies of the real datasets, written in the layouts a user has on disk.

Each writer uses the hub repository's schema (adactrl/data/real.py says where each came from):
images as {"bytes", "path"} structs, answers as the dataset stores them, its real split names,
and the parquet shard names `hf download --local-dir` writes (`data/<split>-00000-of-00001.parquet`).
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.naming import camelcase_to_snakecase
from datasets.packaged_modules.parquet.parquet import Parquet
from PIL import Image

IMAGE = datasets.Image()
STRINGS = datasets.List(datasets.Value("string"))
_S, _I32, _I64 = datasets.Value("string"), datasets.Value("int32"), datasets.Value("int64")

SCHEMAS: dict[str, datasets.Features] = {
    "text_vqa": datasets.Features({
        "image_id": _S, "question_id": _I32, "question": _S, "question_tokens": STRINGS, "image": IMAGE,
        "image_width": _I32, "image_height": _I32, "flickr_original_url": _S, "flickr_300k_url": _S,
        "answers": STRINGS, "image_classes": STRINGS, "set_name": _S, "ocr_tokens": STRINGS,
    }),
    "coco_2014_vqa": datasets.Features({
        "question_type": _S, "multiple_choice_answer": _S,
        "answers": datasets.List({"answer": _S, "answer_confidence": _S, "answer_id": _I64}),
        "image_id": _I64, "answer_type": _S, "question_id": _I64, "question": _S, "image": IMAGE,
    }),
    "okvqa": datasets.Features({
        "question_id": _S, "image": IMAGE, "question": _S, "answers": STRINGS, "question_type": _S,
        "answer_type": _S,
    }),
    "coco_caption": datasets.Features({
        "question_id": _S, "image": IMAGE, "question": _S, "answer": STRINGS, "id": _I64,
        "license": datasets.Value("int8"), "file_name": _S, "coco_url": _S, "height": _I32, "width": _I32,
        "date_captured": _S,
    }),
}  # fmt: skip
HUB_IDS = {"text_vqa": "lmms-lab/textvqa", "coco_2014_vqa": "lmms-lab/VQAv2", "okvqa": "lmms-lab/OK-VQA",
           "coco_caption": "lmms-lab/COCO-Caption2017"}  # fmt: skip
SPLITS = {"text_vqa": ("train", "validation", "test"), "coco_2014_vqa": ("validation", "testdev", "test"),
          "okvqa": ("val2014",), "coco_caption": ("val", "test")}  # fmt: skip
UNANNOTATED = {"test", "testdev"}

# Three rows per split; row i of every dataset answers ANSWERS[i] (captions: CAPTIONS[i]).
ANSWERS = (["stop"] * 7 + ["stop sign", "stop", "halt"], ["2"] * 4 + ["two"] * 3 + ["3", "2", "4"],
           ["yes"] * 5 + ["no"] * 5)  # fmt: skip
CAPTIONS = (
    ["A red stop sign on a pole.", "A stop sign next to a street.", "The sign says stop.",
     "A red sign at a corner.", "A stop sign in the sun."],
    ["Two dogs play in the grass.", "Dogs running on a lawn.", "Two brown dogs outside.",
     "A pair of dogs playing.", "Two dogs on green grass."],
    ["A man rides a bike.", "A person on a bicycle.", "A cyclist on the road.",
     "A man riding his bike down a street.", "Someone biking."],
)  # fmt: skip
VQA_TYPES = ("other", "number", "yes/no")
OKVQA_TYPES = ("one", "eight", "other")


def png(color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 10), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _image(i: int, corrupt: bool) -> dict:
    return {"bytes": b"not an image" if corrupt else png((40 * i, 90, 200)), "path": f"img_{i}.png"}


def _row(name: str, split: str, i: int, image: dict) -> dict:
    annotated = split not in UNANNOTATED
    answers = list(ANSWERS[i]) if annotated else None
    qid = 1000 + i
    if name == "text_vqa":
        return {"image_id": f"{i:016x}", "question_id": qid, "question": f"What does sign {i} say?",
                "question_tokens": ["what", "does"], "image": image, "image_width": 12, "image_height": 10,
                "flickr_original_url": "", "flickr_300k_url": "", "answers": answers or [],
                "image_classes": ["Sign"], "set_name": split, "ocr_tokens": ["stop"]}  # fmt: skip
    if name == "coco_2014_vqa":
        records = [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(answers or ())]
        return {"question_type": "how many", "multiple_choice_answer": answers[0] if annotated else None,
                "answers": records if annotated else None, "image_id": 500 + i,
                "answer_type": VQA_TYPES[i] if annotated else None, "question_id": qid,
                "question": f"how many dogs are in picture {i}?", "image": image}  # fmt: skip
    if name == "okvqa":
        return {"question_id": str(qid), "image": image, "question": f"what is object {i} used for?",
                "answers": answers, "question_type": OKVQA_TYPES[i], "answer_type": "other"}  # fmt: skip
    return {"question_id": f"{179765 + i:012d}.jpg", "image": image, "question": "Describe the image.",
            "answer": list(CAPTIONS[i]) if annotated else None, "id": 179765 + i, "license": 3,
            "file_name": f"{179765 + i:012d}.jpg", "coco_url": "", "height": 10, "width": 12,
            "date_captured": "2013-11-14 17:00:00"}  # fmt: skip


def rows(name: str, split: str, corrupt_row: int | None = None) -> dict[str, list]:
    """Three rows of `name`'s `split` as the hub repository stores them; no answers in test splits
    (TextVQA's test rows hold an empty list, the others null)."""
    out: dict[str, list] = {column: [] for column in SCHEMAS[name]}
    for i in range(3):
        for column, value in _row(name, split, i, _image(i, i == corrupt_row)).items():
            out[column].append(value)
    return out


def write_hub_repo(root: Path, name: str, *, with_metadata: bool = True, corrupt_row: int | None = None,
                   splits: tuple[str, ...] | None = None) -> Path:  # fmt: skip
    """`root` as `hf download --repo-type dataset <hub id> --local-dir root` leaves it."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    schema = SCHEMAS[name].arrow_schema
    if not with_metadata:
        schema = schema.remove_metadata()
    for split in splits or SPLITS[name]:
        table = pa.Table.from_pydict(rows(name, split, corrupt_row), schema=schema)
        pq.write_table(table, root / "data" / f"{split}-00000-of-00001.parquet")
    (root / "README.md").write_text(f"---\nlicense: cc-by-4.0\n---\n# {HUB_IDS[name]}\n")
    return root


def write_hub_cache(hub_cache: Path, name: str, revision: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """The hub cache after `hf download --repo-type dataset <hub id>` (no --local-dir)."""
    repo = hub_cache / ("datasets--" + HUB_IDS[name].replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    return write_hub_repo(repo / "snapshots" / revision, name)


def write_arrow_cache(datasets_cache: Path, name: str, source: Path) -> Path:
    """The datasets Arrow cache after `datasets.load_dataset(<hub id>)` on a connected machine:
    <namespace>___<repo>/default/0.0.0/<hash>/, built here from the parquet files of `source`."""
    namespace, repo = HUB_IDS[name].split("/")
    repo = camelcase_to_snakecase(repo)  # as datasets names its cache folders: "VQAv2" -> "vq_av2"
    files = {split: str(source / "data" / f"{split}-00000-of-00001.parquet") for split in SPLITS[name]}
    builder = Parquet(cache_dir=str(datasets_cache), dataset_name=repo, data_files=files, hash="0a1b2c3d")
    builder.download_and_prepare()
    built = next((datasets_cache / repo).glob("default*"))
    (datasets_cache / f"{namespace}___{repo}").mkdir()
    shutil.move(built, datasets_cache / f"{namespace}___{repo}" / "default")
    shutil.rmtree(datasets_cache / repo)
    return datasets_cache / f"{namespace}___{repo}"
