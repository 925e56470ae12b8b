"""Compare adactrl's native MolmoE with the public remote code on a small random checkpoint.

    python scripts/check_molmoe_equivalence.py /work/.mirror/ChulanZhang+molmo_hf/repo [--deps DIR]

The remote code is never part of adactrl: this script extracts it from the given git mirror
(`git archive`) into a temporary directory at run time and imports it from there. It needs
`einops` (pass a directory where it is installed with --deps, e.g. `pip install --target DIR einops`).
Import plumbing, none of it on the numerical path except the resize: the copy's package
`__init__` files are emptied (they import training code), `molmo.util` / `molmo.torch_util` are
stubbed (boto3, distributed helpers), and `torchvision` is replaced by a shim whose `Resize` calls
`torch.nn.functional.interpolate(..., antialias=True)`, the kernel torchvision itself calls for
tensors (torchvision's CPU wheel does not import here).

The checkpoint uses 336 px crops of 14 px patches (the remote code hard-codes that geometry)
with small widths. The remote code sizes `pad_embed` from VisionBackboneConfig()'s defaults
(1024-wide ViT) rather than the config: the script gives it the checkpoint's shape before loading.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from adactrl.models.molmoe import MolmoEVLM, run_case
from adactrl.models.molmoe.random_checkpoint import write_random_checkpoint
from adactrl.models.molmoe.weights import iter_tensors, shard_files

SMALL_336 = {
    "d_model": 64, "n_heads": 4, "n_layers": 6, "moe_num_experts": 16, "moe_top_k": 8, "additional_vocab_size": 16,
    "vision_backbone": {"image_emb_dim": 32, "image_head_dim": 16, "image_num_heads": 2, "image_num_key_value_heads": 2,
                        "image_mlp_dim": 64, "image_num_layers": 10},
}
KNOBS = [
    ("default", {"top_k": None, "skip_blocks": [], "max_crops": None}),
    ("top_k=4", {"top_k": 4, "skip_blocks": [], "max_crops": None}),
    ("top_k=1", {"top_k": 1, "skip_blocks": [], "max_crops": None}),
    ("skip 2,4", {"top_k": None, "skip_blocks": [2, 4], "max_crops": None}),
    ("max_crops=3", {"top_k": None, "skip_blocks": [], "max_crops": 3}),
    ("max_crops=6", {"top_k": None, "skip_blocks": [], "max_crops": 6}),
    ("all knobs", {"top_k": 5, "skip_blocks": [3], "max_crops": 6}),
]
IMAGES = {"wide 500x300": (300, 500), "tall 420x900": (900, 420), "small 90x70": (70, 90), "big 1000x800": (800, 1000)}
PROMPT = "what color is the circle?"
NEW_TOKENS = 6


def materialise(mirror: str, dest: Path) -> None:
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", f"--git-dir={mirror}", "archive", "HEAD", "molmo"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    for init in ("molmo/__init__.py", "molmo/models/__init__.py", "molmo/preprocessors/__init__.py"):
        (dest / init).write_text("")
    sys.modules["molmo.util"] = types.SimpleNamespace(is_url=lambda path: "://" in str(path))
    sys.modules["molmo.torch_util"] = types.SimpleNamespace(get_local_rank=lambda: 0, barrier=lambda: None)
    sys.modules.update(_torchvision_shim())
    sys.path.insert(0, str(dest))


def _torchvision_shim() -> dict:
    class InterpolationMode:
        BILINEAR, NEAREST_EXACT, BICUBIC, LANCZOS, HAMMING = "bilinear", "nearest-exact", "bicubic", "lanczos", "hamming"

    class Resize:
        def __init__(self, size, mode, antialias=True):
            self.size, self.mode, self.antialias = size, mode, antialias

        def __call__(self, image):
            return F.interpolate(image[None], size=self.size, mode=self.mode, align_corners=False, antialias=self.antialias)[0]

    def convert_image_dtype(image, dtype=torch.float32):
        return image.to(dtype) / 255.0 if image.dtype == torch.uint8 else image.to(dtype)

    transforms = types.ModuleType("torchvision.transforms")
    transforms.Resize, transforms.InterpolationMode = Resize, InterpolationMode
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.convert_image_dtype = convert_image_dtype
    transforms.functional = functional
    root = types.ModuleType("torchvision")
    root.transforms = transforms
    return {"torchvision": root, "torchvision.transforms": transforms, "torchvision.transforms.functional": functional}


def remote_model(ckpt: Path):
    from molmo.models.config_molmoe import MolmoConfig
    from molmo.models.modeling_molmoe import MolmoForCausalLM

    raw = json.loads((ckpt / "config.json").read_text())
    model = MolmoForCausalLM(MolmoConfig(**raw)).eval()
    width = raw["vision_backbone"]["image_emb_dim"] * len(raw["vit_layers"])
    model.model.vision_backbone.pad_embed = torch.nn.Parameter(torch.zeros(2, width))
    state = {name: tensor for _, name, tensor in iter_tensors(shard_files(ckpt))}
    model.load_state_dict(state, strict=True)
    return model


class _Identity(torch.nn.Module):
    def forward(self, x, **kwargs):
        return x, (x.new_zeros(0), x.new_zeros(0))


def remote_inputs(ckpt: Path, native: MolmoEVLM, image: Image.Image | None, max_crops: int) -> dict:
    from molmo.preprocessors.multimodal_preprocessor import MolmoImageProcessor

    processor = MolmoImageProcessor(**json.loads((ckpt / "preprocessor_config.json").read_text()))
    ids = native.tokenizer.image_ids
    tokens = np.asarray(native.tokenizer.tokenizer.encode(f" User: {PROMPT} Assistant:", add_special_tokens=False).ids)
    out = processor.multimodal_preprocess(
        images=None if image is None else [np.array(image.convert("RGB"))], image_idx=None if image is None else [-1],
        tokens=tokens.astype(np.int32), sequence_length=1536, image_patch_token_id=ids.patch, image_col_token_id=ids.col,
        image_start_token_id=ids.start, image_end_token_id=ids.end, max_crops=max_crops,
    )
    out["input_ids"] = np.pad(out["input_ids"], [[1, 0]], constant_values=native.tokenizer.bos_id)
    if "image_input_idx" in out:
        out["image_input_idx"] = np.where(out["image_input_idx"] < 0, out["image_input_idx"], out["image_input_idx"] + 1)
    return {k: torch.from_numpy(np.asarray(v))[None] for k, v in out.items()}


@torch.inference_mode()
def remote_case(model, inputs: dict, knobs: dict, n_layers: int, top_k: int) -> dict:
    blocks = model.model.transformer.blocks
    originals = list(blocks)
    for i, block in enumerate(originals):
        block.mlp.top_k = knobs["top_k"] or top_k
        if i in knobs["skip_blocks"]:
            blocks[i] = _Identity()
    try:
        length = inputs["input_ids"].shape[1]
        out = model(**inputs, attention_mask=torch.ones(1, length, dtype=torch.bool), use_cache=True)
        logits, past, tokens = out.logits[0, -1], out.past_key_values, []
        last = logits.float().numpy()
        while len(tokens) < NEW_TOKENS:
            tokens.append(int(logits.argmax()))
            position = length + len(tokens) - 1
            out = model(
                input_ids=torch.tensor([[tokens[-1]]]), attention_mask=torch.ones(1, position + 1, dtype=torch.bool),
                position_ids=torch.tensor([[position]]), past_key_values=past, use_cache=True,
            )
            logits, past = out.logits[0, -1], out.past_key_values
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block
    return {"last_logits": last, "greedy_tokens": tokens}


def compare_preprocessing(native: MolmoEVLM, inputs: dict, image: Image.Image, max_crops: int) -> str:
    mine = native.preprocess_crops(image, max_crops)
    ids = torch.cat([torch.tensor([native.tokenizer.bos_id]), mine.tokens])
    same_ids = torch.equal(inputs["input_ids"][0, : len(ids)].long(), ids)
    positions = torch.where(mine.feature_positions >= 0, mine.feature_positions + 1, -100)
    same_idx = torch.equal(inputs["image_input_idx"][0].long(), positions)
    same_masks = torch.equal(inputs["image_masks"][0].float(), mine.patch_masks)
    p = native.config.vision.patch_size
    patches = mine.pixels.permute(0, 2, 3, 1).reshape(mine.num_crops, 336 // p, p, 336 // p, p, 3)
    patches = patches.permute(0, 1, 3, 2, 4, 5).reshape(mine.num_crops, -1, p * p * 3)
    pixel_diff = float((inputs["images"][0].float() - patches).abs().max())
    return f"tiling {mine.tiling}: ids {same_ids}, patch index {same_idx}, masks {same_masks}, max pixel diff {pixel_diff:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mirror", help="git dir of github:ChulanZhang/molmo_hf (from the fetch tool)")
    parser.add_argument("--deps", default=None, help="directory holding einops (pip install --target DIR einops)")
    parser.add_argument("--std", type=float, default=0.05, help="std of the random weights (larger: larger logits)")
    args = parser.parse_args()
    if args.deps:
        sys.path.insert(0, args.deps)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        materialise(args.mirror, tmp / "remote")
        ckpt = write_random_checkpoint(tmp / "ckpt", SMALL_336, seed=1, std=args.std)
        native = MolmoEVLM.load(ckpt)
        remote = remote_model(ckpt)
        rng = np.random.default_rng(0)
        rows = []
        for image_name, (h, w) in IMAGES.items():
            image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            image.save(tmp / "image.png")
            for knob_name, knobs in KNOBS:
                max_crops = knobs["max_crops"] or native.config.crops.max_crops
                inputs = remote_inputs(ckpt, native, image, max_crops)
                theirs = remote_case(remote, inputs, knobs, native.config.n_layers, native.config.top_k)
                ours = run_case(ckpt, tmp / "image.png", PROMPT, knobs, NEW_TOKENS)
                diff = float(np.abs(ours["last_logits"] - theirs["last_logits"]).max())
                rows.append((image_name, knob_name, diff, ours["greedy_tokens"] == theirs["greedy_tokens"]))
                print(f"{image_name:14s} {knob_name:12s} max|dlogit| {diff:.2e}  greedy equal {rows[-1][3]}")
            for max_crops in (3, 6, 12):
                inputs = remote_inputs(ckpt, native, image, max_crops)
                check = compare_preprocessing(native, inputs, image, max_crops)
                print(f"{image_name:14s} preprocessing, max_crops {max_crops:2d}: {check}")
        inputs = remote_inputs(ckpt, native, None, 12)
        for knob_name, knobs in KNOBS[:4]:
            theirs = remote_case(remote, inputs, knobs, native.config.n_layers, native.config.top_k)
            ours = run_case(ckpt, None, PROMPT, knobs, NEW_TOKENS)
            diff = float(np.abs(ours["last_logits"] - theirs["last_logits"]).max())
            rows.append(("text only", knob_name, diff, ours["greedy_tokens"] == theirs["greedy_tokens"]))
            print(f"{'text only':14s} {knob_name:12s} max|dlogit| {diff:.2e}  greedy equal {rows[-1][3]}")
        worst = max(r[2] for r in rows)
        scale = float(np.abs(ours["last_logits"]).max())
        print(f"\n{len(rows)} cases: worst max|dlogit| {worst:.2e} (logits up to {scale:.2f} in magnitude); "
              f"greedy tokens equal in {sum(r[3] for r in rows)}/{len(rows)}")


if __name__ == "__main__":
    main()
